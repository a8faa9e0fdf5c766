/*
 * npy.h - reading and writing NumPy .npy files of float16, float32 and float64 arrays
 * (internal).
 *
 * The format: the magic "\x93NUMPY", a major and a minor version byte, the header length
 * (2 bytes little-endian in version 1.0, 4 bytes in 2.0 and 3.0), then the header: a Python
 * dict literal such as {'descr': '<f4', 'fortran_order': False, 'shape': (20, 2), } padded
 * with spaces and ended by '\n' (latin-1 in 1.0 and 2.0, utf-8 in 3.0), then the raw data.
 *
 * Reading accepts versions 1.0, 2.0 and 3.0; keys in any order, any whitespace, a trailing
 * comma, single or double quotes, shape tuples of any length including () and (5,), and
 * Python 2's long suffix (3L,). The dtype must be a float16, float32 or float64 in either byte
 * order ('<f4', '>f4', '=f4', 'f4', and the same with f2 and f8); the data comes back in the
 * machine's byte order and in C order: a fortran_order array is transposed (element (i0, ...,
 * ik) of the result is element (i0, ..., ik) of the stored array, the shape is unchanged).
 *
 * Status codes, the same for both directions:
 *   BN_ERR_IO           the operating system refused (open, read, write, rename ...); the
 *                       message ends with strerror(errno)
 *   BN_ERR_FORMAT       the file is not a well-formed .npy file: bad magic, truncated, a header
 *                       that does not parse, a data size that does not match the shape
 *   BN_ERR_UNSUPPORTED  a well-formed file we do not handle: a dtype other than float16,
 *                       float32 or float64 (structured dtypes included), a format version
 *                       other than 1, 2 or 3, more than BN_NPY_MAX_NDIM dimensions; (writer)
 *                       a dtype other than BN_FLOAT16, BN_FLOAT32 or BN_FLOAT64
 *   BN_ERR_TOO_LARGE    a size or the byte count overflows 64 bits or size_t, or memory for
 *                       the data cannot be allocated
 *   BN_ERR_NULL_POINTER a required argument is NULL
 *   BN_ERR_SHAPE        (writer only) a negative size or ndim outside [0, BN_NPY_MAX_NDIM]
 *
 * Messages: every function takes err/errlen, as message.h says: one line naming the problem,
 * without the file name, which the caller knows.
 *
 * Thread safety: no global state; distinct files may be read and written concurrently.
 */
#ifndef BN_NPY_H
#define BN_NPY_H

#include "bnorm.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* NumPy's own limit (NPY_MAXDIMS in NumPy 1.x). */
#define BN_NPY_MAX_NDIM 32

/* An array read from a file. */
typedef struct bn_npy {
    bn_dtype dtype;                 /* BN_FLOAT16, BN_FLOAT32 or BN_FLOAT64 */
    int ndim;                       /* 0 .. BN_NPY_MAX_NDIM */
    int64_t dims[BN_NPY_MAX_NDIM];  /* dims[0 .. ndim-1], each >= 0; the rest 0 */
    int64_t count;                  /* number of elements: the product of dims (1 when ndim = 0) */
    size_t nbytes;                  /* count * element size */
    void *data;                     /* (dims...) C order, native byte order; owned, malloc'd,
                                       never NULL after a successful read (even for 0 elements) */
} bn_npy;

/*
 * Reads the .npy file at path into *arr, which is overwritten; the caller frees it with
 * bn_npy_free(). On failure *arr is zeroed, nothing stays allocated and err says why.
 * path may be a pipe or a device (/dev/stdin), read as a stream; so is a regular file that says
 * it has 0 bytes and has some (/proc and /sys files). A FIFO is opened as cat opens one: that
 * waits for a writer, as long as it takes, since the writer may well start after the reader.
 * @return BN_OK or one of the statuses listed at the top of this file.
 */
bn_status bn_npy_read(bn_npy *arr, const char *path, char *err, size_t errlen);

/*
 * Parses a whole .npy file held in memory, buf[0 .. len-1], as bn_npy_read does (the data is
 * copied). Used by bn_npy_read for the header checks and by tests.
 * @return as bn_npy_read.
 */
bn_status bn_npy_parse(bn_npy *arr, const void *buf, size_t len, char *err, size_t errlen);

/* Frees arr->data and zeroes *arr. NULL and an already freed or zeroed array are fine. */
void bn_npy_free(bn_npy *arr);

/*
 * Writes data, an array of the given dtype and dims (C order, native byte order), to path as a
 * version 1.0 .npy file whose data starts at a multiple of 64 bytes, through bn_write_output
 * (output.h says how each kind of path is written).
 *   data: in (dims...), count = product of dims elements; may be NULL only when count = 0
 *   dims: ndim sizes, each >= 0; ndim in [0, BN_NPY_MAX_NDIM]
 * @return BN_OK; BN_ERR_IO (with strerror), BN_ERR_SHAPE, BN_ERR_TOO_LARGE, BN_ERR_UNSUPPORTED,
 *         BN_ERR_NULL_POINTER.
 */
bn_status bn_npy_write(const char *path, bn_dtype dtype, int ndim, const int64_t *dims,
                       const void *data, char *err, size_t errlen);

/*
 * A .npy file open for reading in pieces (bounded memory, whatever the file's size): the header
 * is parsed and checked by bn_npy_stream_open, the data read by bn_npy_stream_read.
 */
typedef struct bn_npy_stream {
    void *file;                    /* FILE * */
    bn_dtype dtype;
    int swap;                      /* the file's byte order is not the machine's */
    int ndim;
    int64_t dims[BN_NPY_MAX_NDIM];
    int64_t count;                 /* elements */
    int64_t data_offset;           /* where the data starts in the file */
    int64_t position;              /* where the next read starts in the file (0: unknown) */
} bn_npy_stream;

/*
 * Opens path (with bn_open_regular, input.h) and reads its header, with the checks of
 * bn_npy_read: the file must be a regular file whose size is known and matches the header. A
 * Fortran-order array of more than one dimension is BN_ERR_UNSUPPORTED (its samples are not
 * contiguous). On failure nothing stays open.
 * @return BN_OK or a status of bn_npy_read; err says why.
 */
bn_status bn_npy_stream_open(bn_npy_stream *s, const char *path, char *err, size_t errlen);

/*
 * Reads the elements [first, first + count) of the array (C order) into out, converted to the
 * machine's byte order. @return BN_OK; BN_ERR_SHAPE (outside the array); BN_ERR_IO;
 * BN_ERR_FORMAT (the file shrank).
 */
bn_status bn_npy_stream_read(bn_npy_stream *s, void *out, int64_t first, int64_t count,
                             char *err, size_t errlen);

/* Closes the file and zeroes *s; NULL and a closed stream are fine. */
void bn_npy_stream_close(bn_npy_stream *s);

/*
 * Formats a shape the way Python prints a tuple: "()", "(5,)", "(2, 3)", into buf (truncated
 * to buflen, always NUL-terminated when buflen > 0).
 * @return buf.
 */
char *bn_npy_shape_string(char *buf, size_t buflen, int ndim, const int64_t *dims);

#endif /* BN_NPY_H */
