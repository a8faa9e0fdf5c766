/* safetensors.h - reading and writing safetensors files (huggingface/safetensors):
 *
 *   8 bytes    N, the header's length, unsigned little-endian
 *   N bytes    the header: a JSON object (parsed and printed by cJSON), padded with spaces,
 *              {"NAME": {"dtype": "F32", "shape": [C], "data_offsets": [BEGIN, END]}, ...,
 *               "__metadata__": {"key": "value", ...}}
 *   the rest   the tensors' bytes, little-endian, C order; offsets relative to the rest's start,
 *              which they must cover without holes or overlaps
 *
 * Dtypes handled: F32, F64, I64. Tensors keep their dtype; a caller converts. The format's other
 * dtypes (BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, U64) are refused by
 * cli_safetensors_read and kept, unconverted to any other type, by cli_safetensors_read_any, for
 * readers that take a few tensors out of a checkpoint holding any kind. */
#ifndef BN_IO_SAFETENSORS_H
#define BN_IO_SAFETENSORS_H

#include "bnorm.h"

#include <stddef.h>
#include <stdint.h>

/* The dtypes, by the format's names; only the first three are written and read as values. */
enum {
    CLI_ST_F32, CLI_ST_F64, CLI_ST_I64,
    CLI_ST_BOOL, CLI_ST_U8, CLI_ST_I8, CLI_ST_F8_E5M2, CLI_ST_F8_E4M3, CLI_ST_I16, CLI_ST_U16,
    CLI_ST_F16, CLI_ST_BF16, CLI_ST_I32, CLI_ST_U32, CLI_ST_U64,
    CLI_ST_NDTYPES
};
#define CLI_ST_MAX_NDIM 8

typedef struct cli_st_tensor {
    const char *name;  /* reading: points into the file's parsed header */
    int dtype;         /* CLI_ST_F32, CLI_ST_F64 or CLI_ST_I64 (any CLI_ST_*: read_any) */
    int ndim;          /* 0 (a scalar) .. CLI_ST_MAX_NDIM */
    int64_t dims[CLI_ST_MAX_NDIM];
    int64_t count;     /* elements */
    const void *data;  /* count elements, native byte order */
} cli_st_tensor;

/* A file read into memory. */
typedef struct cli_st_file {
    int count;
    cli_st_tensor *tensors; /* (count) */
    void *json;             /* cJSON * of the header */
    unsigned char *bytes;   /* the data, native byte order */
} cli_st_file;

/*
 * Writes the n tensors (data in native byte order) and one metadata pair (meta_key may be NULL)
 * to path through bn_write_output (output.h: a file is replaced atomically; on failure an
 * existing file is left as it was).
 * @return BN_OK; BN_ERR_IO, BN_ERR_NO_MEMORY, BN_ERR_ARGUMENT (a bad name or dtype); err says
 *         why.
 */
bn_status cli_safetensors_write(const char *path, const cli_st_tensor *t, int n,
                                const char *meta_key, const char *meta_value, char *err,
                                size_t errlen);

/*
 * Reads and checks the whole file at path: header length, JSON, every entry's dtype, shape and
 * offsets against the data. Tensors of other dtypes are BN_ERR_UNSUPPORTED.
 * @return BN_OK; BN_ERR_IO, BN_ERR_FORMAT, BN_ERR_UNSUPPORTED, BN_ERR_NO_MEMORY; err says why.
 *         On failure *f holds nothing.
 */
bn_status cli_safetensors_read(cli_st_file *f, const char *path, char *err, size_t errlen);

/*
 * As cli_safetensors_read, but tensors of the format's other dtypes (CLI_ST_BOOL .. CLI_ST_U64)
 * are kept too, their size and offsets checked as any other's, their data in native byte order
 * (each element's bytes swapped on a big-endian machine). A dtype the format does not name is
 * still BN_ERR_UNSUPPORTED: its element size, and so its span, is unknown.
 */
bn_status cli_safetensors_read_any(cli_st_file *f, const char *path, char *err, size_t errlen);

/* The format's name of a CLI_ST_* dtype ("F32", "BF16"), or "?" for another value. */
const char *cli_safetensors_dtype_name(int dtype);

/* Element k of t (F32, F64 or I64) as a double (the data of a file read may be unaligned). */
double cli_safetensors_value(const cli_st_tensor *t, int64_t k);

/* The tensor called name, or NULL. */
const cli_st_tensor *cli_safetensors_find(const cli_st_file *f, const char *name);

/* Frees everything *f holds and zeroes it. */
void cli_safetensors_free(cli_st_file *f);

#endif
