/* cli.h - what the parts of the bnorm command share: exit codes, the commands (dispatched by
 * main.c), error reporting (errors.c), strict parsing of the command line (args.c), and the
 * small helpers of several subcommands: element types (dtype.c), dims order (layout.c), random
 * numbers (random.c), the clock (timing.c), --check-finite (finite.c), printing (print.c). */
#ifndef BN_CLI_H
#define BN_CLI_H

#include "bnorm.h"

#include <stddef.h>
#include <stdint.h>

/* Exit statuses of the command. */
enum { CLI_OK = 0, CLI_RUNTIME_ERROR = 1, CLI_USAGE_ERROR = 2 };

/* The commands: argv[0] is the command's name; each returns an exit status. */
int cli_demo(int argc, char **argv);
int cli_normalize(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_fit(int argc, char **argv);
int cli_apply(int argc, char **argv);

/* ---- errors.c ---- */

/*
 * "bnorm: <file>: <problem>" on stderr.
 * @return CLI_RUNTIME_ERROR, so that callers can write `return cli_fail(...)`.
 */
int cli_fail(const char *file, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * "bnorm: <problem>", then the command's usage lines and where to find its help, on stderr.
 *   command: "normalize", "demo", or NULL for the top level
 *   usage:   the command's synopsis, one or more lines ending in '\n'
 * @return CLI_USAGE_ERROR.
 */
int cli_usage_error(const char *command, const char *usage, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Before out is written: when a temporary file that an interrupted write of out left is there
 * (bn_find_stale_temporary), "bnorm: <out>: note: <it> looks left over ..." on stderr. It is
 * not removed, since another run may be writing out at this moment.
 */
void cli_note_stale_temporary(const char *out);

/* ---- args.c ---- */

/*
 * Matches argv[*i] against an option that takes a value: "-o OUT", "--output OUT" or
 * "--output=OUT" (short_name may be NULL). On a match stores the value in *value and moves *i
 * past it.
 * @return 1 matched; 0 not this option; -1 a usage error (value missing, option given twice),
 *         already reported through cli_usage_error.
 */
int cli_take_value(int argc, char **argv, int *i, const char *short_name, const char *long_name,
                   const char **value, const char *command, const char *usage);

/* A flag ("--channels-last") sets *set to 1; an option ("-o OUT", "--output OUT", "--output=OUT")
 * stores its value in *value; file: the value is a file name, which may not be empty. Tables end
 * with an entry whose long name is NULL. */
typedef struct { const char *name; int *set; } cli_flag;
typedef struct { const char *short_name, *long_name; const char **value; int file; } cli_option;

/*
 * The loop a subcommand's arguments go through: arguments that are not options (or come after
 * "--") go into files[], at most max_files of them (*nfiles counts them); -h and --help print
 * the help; flags and options as in the tables; anything else is a usage error, and so is an
 * empty file name (an empty argument, or an empty value of a file option).
 * @return CLI_OK; -1 when the help was printed; CLI_USAGE_ERROR, already reported.
 */
int cli_parse_args(int argc, char **argv, const char *command, const char *usage,
                   const char *help, const cli_flag *flags, const cli_option *options,
                   const char **files, int max_files, int *nfiles);

/*
 * Strict number parsing: the whole text must be the number, with no spaces around it.
 * cli_parse_double accepts any finite decimal or hexadecimal floating-point number in range;
 * cli_parse_u64 accepts decimal digits only (no sign).
 * @return 1 parsed into *out; 0 otherwise (*out untouched).
 */
int cli_parse_double(const char *text, double *out);
int cli_parse_u64(const char *text, uint64_t *out);

/* ---- dtype.c: one element of a float32 or float64 buffer ---- */

/* sizeof(float) or sizeof(double); 0 for another value. */
size_t cli_dtype_size(bn_dtype dtype);

/* Element k of data (of dtype), as a double. */
double cli_load(const void *data, bn_dtype dtype, int64_t k);

/* Stores v as element k of data (of dtype; to float32 rounded to nearest). */
void cli_store(void *data, bn_dtype dtype, int64_t k, double v);

/* ---- half.c: float16 files, computed in float32 ---- */

struct bn_npy;

/* The dtype a command computes an array of dtype stored in: float32 for float16 (whose values
 * float32 holds exactly), else stored itself. */
bn_dtype cli_compute_dtype(bn_dtype stored);

/* A float16 array read from a file, its data replaced by the same values in float32 (exact);
 * any other array is left alone. @return BN_OK, or BN_ERR_NO_MEMORY (the array unchanged). */
bn_status cli_widen_half(struct bn_npy *arr);

/* bn_npy_write of data (count = the product of dims values of cli_compute_dtype(stored)) as a
 * file of dtype stored: float32 results of a float16 input are rounded once to nearest even
 * (bn_convert). @return as bn_npy_write, or BN_ERR_NO_MEMORY. */
bn_status cli_npy_write_stored(const char *path, bn_dtype stored, int ndim, const int64_t *dims,
                               const void *data, char *err, size_t errlen);

/* ---- layout.c ---- */

/*
 * dims: out (ndim), the logical dims (N, C, ...) that bn_desc_from_dims takes, of an array whose
 * file shape is file_dims (ndim >= 2): (N, C, ...) itself, or (N, ..., C) when channels_last.
 */
void cli_logical_dims(int64_t *dims, int ndim, const int64_t *file_dims, int channels_last);

/* ---- random.c ---- */

/* The next value of the splitmix64 stream whose state is *state: the same on every machine. */
uint64_t cli_splitmix64(uint64_t *state);

/* Uniform in [0, 1), with 53 random bits of the stream. */
double cli_uniform(uint64_t *state);

/* ---- timing.c ---- */

/* CLOCK_MONOTONIC in nanoseconds. */
double cli_now_ns(void);

/* Sorts v (n >= 1) and returns its median. */
double cli_median(double *v, int n);

/* ---- finite.c, print.c ---- */

/*
 * --check-finite: CLI_OK when data (described to the library as desc) holds only finite values;
 * otherwise reports, as "path: [\"tensor\": ]nan at index (i, j, ...) (channel c), refused by
 * --check-finite", the first NaN or infinity, its index taken in the file's shape dims[ndim]
 * after `offset` elements that come before data in the file, its channel counted from
 * channel0 (the file's channel that is desc's channel 0).
 * @return CLI_OK or CLI_RUNTIME_ERROR.
 */
int cli_refuse_nonfinite(const char *path, const char *tensor, const void *data,
                         const bn_desc *desc, int64_t offset, int64_t channel0, int ndim,
                         const int64_t *dims);

/*
 * Prints a rows x cols float32 matrix (row-major) the way PyTorch prints a 2-d tensor:
 * "tensor([[ 0.1234, -1.2345],\n        [...]])" with 4 decimals, or in scientific notation when
 * the magnitudes span more than 1000x, as torch does.
 */
void cli_print_tensor(const float *x, int rows, int cols);

#endif /* BN_CLI_H */
