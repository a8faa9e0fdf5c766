/* fit.c - `bnorm fit FILE.npy... --out STATS.safetensors`: exact per-channel population
 * statistics of (N, C, ...) arrays of any size, read in batches of B samples, each in pieces of
 * at most PIECE_VALUES values (whole samples, or parts of one when a sample is larger), so that
 * memory does not grow with the files or their samples; written as the running statistics of a
 * BatchNorm state_dict. Under mpirun the ranks first agree that they see the same files, then
 * take consecutive runs of batches and merge their statistics in rank order. */
#define _POSIX_C_SOURCE 200809L

#include "bnorm.h"
#include "cli.h"
#include "comm.h"
#include "npy.h"
#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A piece read holds at most this many values (1 MiB of float32, 2 MiB of float64): small
 * enough for its statistics to find it in the cache. Pieces are cut by the shape alone. */
#define PIECE_VALUES (INT64_C(1) << 18)

static const char usage[] =
    "usage: bnorm fit FILE.npy... --out STATS.safetensors [--batch B]\n"
    "                 [--estimator population|batch-mean] [--prefix NAME] [--channels-last]\n"
    "                 [--check-finite]\n";

static const char help[] =
    "usage: bnorm fit FILE.npy... --out STATS.safetensors [--batch B]\n"
    "                 [--estimator population|batch-mean] [--prefix NAME] [--channels-last]\n"
    "                 [--check-finite]\n"
    "\n"
    "Per-channel statistics of the samples of every FILE (float16, float32 or float64 arrays\n"
    "of shape (N, C, ...) with the same C and sizes after it, taken one after the other as one\n"
    "dataset), read B samples at a time, in pieces of at most 2^18 values: memory does not grow\n"
    "with the files or their samples, only with C. Writes a safetensors file with running_mean,\n"
    "running_var and num_batches_tracked (the number of batches), loadable into a torch\n"
    "BatchNorm's state_dict: float64 where every FILE is float64, else float32.\n"
    "\n"
    "options:\n"
    "  --out STATS.safetensors  where to write; replaced atomically, left as it was on failure\n"
    "  --batch B                samples per batch (default 256)\n"
    "  --estimator population   the mean and the unbiased variance of all values (default)\n"
    "  --estimator batch-mean   the average over batches of each batch's mean and unbiased\n"
    "                           variance, as torch.optim.swa_utils.update_bn computes them\n"
    "  --prefix NAME            key prefix, as in a state_dict: NAME.running_mean ...\n"
    "  --channels-last          the channel is the last dimension: (N, ..., C), such as NHWC\n"
    "  --check-finite           refuse files holding NaN or infinity (exit 1, naming the first\n"
    "                           and writing nothing); without it they make their channel NaN\n"
    "  -h, --help               show this help\n"
    "Under mpirun the ranks split the batches between them; the result equals one process's\n"
    "within rounding. Every rank must run the same command on files of the same shapes and\n"
    "dtypes: where they differ, every rank fails. A progress bar is shown on stderr when it is a\n"
    "terminal.\n";

typedef struct fit_args {
    const char **files;
    int nfiles;
    const char *out, *prefix, *batch_text, *estimator;
    int64_t batch;
    int batch_mean, channels_last, check_finite;
} fit_args;

static int parse_args(fit_args *a, int argc, char **argv) {
    const cli_flag flags[] = {{"--channels-last", &a->channels_last},
                              {"--check-finite", &a->check_finite}, {NULL, NULL}};
    const cli_option options[] = {{"-o", "--out", &a->out, 1}, {NULL, "--batch", &a->batch_text, 0},
                                  {NULL, "--estimator", &a->estimator, 0},
                                  {NULL, "--prefix", &a->prefix, 0}, {NULL, NULL, NULL, 0}};
    int status = cli_parse_args(argc, argv, "fit", usage, help, flags, options, a->files, argc,
                                &a->nfiles);
    if (status != CLI_OK) return status;
    if (a->nfiles == 0) return cli_usage_error("fit", usage, "missing the input files FILE.npy");
    if (!a->out) return cli_usage_error("fit", usage, "missing --out STATS.safetensors");
    a->batch = 256;
    uint64_t b;
    if (a->batch_text) {
        if (!cli_parse_u64(a->batch_text, &b) || b == 0 || b > (uint64_t)1 << 40)
            return cli_usage_error("fit", usage, "--batch: '%s' is not a number of samples >= 1",
                                   a->batch_text);
        a->batch = (int64_t)b;
    }
    if (a->prefix && strlen(a->prefix) > 500)
        return cli_usage_error("fit", usage, "--prefix: longer than 500 characters");
    if (a->estimator && strcmp(a->estimator, "batch-mean") == 0) a->batch_mean = 1;
    else if (a->estimator && strcmp(a->estimator, "population") != 0)
        return cli_usage_error("fit", usage, "--estimator: '%s' is neither population nor "
                                             "batch-mean", a->estimator);
    return CLI_OK;
}

/* The open inputs and what they share. */
typedef struct dataset {
    bn_npy_stream *in; /* (nfiles) */
    int64_t *start;    /* (nfiles + 1): the first sample of each file in the dataset */
    int64_t c, s, total;
    int all_f64, any_f64;
    bn_layout layout;
} dataset;

static int open_inputs(dataset *d, const fit_args *a) {
    char err[512], shape[512], first[512];
    int64_t dims[BN_NPY_MAX_NDIM]; /* (N, C, ...) */
    for (int f = 0; f < a->nfiles; f++) {
        bn_npy_stream *in = &d->in[f];
        bn_status st = bn_npy_stream_open(in, a->files[f], err, sizeof err);
        if (st != BN_OK) return cli_fail(a->files[f], "%s", err);
        bn_npy_shape_string(shape, sizeof shape, in->ndim, in->dims);
        cli_logical_dims(dims, in->ndim, in->dims, a->channels_last);
        if (in->ndim < 2 || dims[1] < 1)
            return cli_fail(a->files[f], "shape %s: statistics need %s with C >= 1", shape,
                            a->channels_last ? "(N, ..., C)" : "(N, C, ...)");
        const bn_npy_stream *f0 = &d->in[0];
        if (in->ndim != f0->ndim || memcmp(in->dims + 1, f0->dims + 1,
                                           sizeof(int64_t) * (size_t)(in->ndim - 1)) != 0)
            return cli_fail(a->files[f], "shape %s does not match %s's %s after the first "
                            "dimension", shape, a->files[0],
                            bn_npy_shape_string(first, sizeof first, f0->ndim, f0->dims));
        d->start[f + 1] = d->start[f] + in->dims[0];
        d->all_f64 &= in->dtype == BN_FLOAT64;
        d->any_f64 |= in->dtype == BN_FLOAT64;
    }
    /* C and the spatial sizes (bn_npy_stream_open has checked their product) */
    cli_logical_dims(dims, d->in[0].ndim, d->in[0].dims, a->channels_last);
    d->c = dims[1];
    d->s = 1;
    for (int k = 2; k < d->in[0].ndim; k++) d->s *= dims[k];
    d->layout = a->channels_last ? BN_CHANNELS_LAST : BN_CHANNELS_FIRST;
    d->total = d->start[a->nfiles];
    return CLI_OK;
}

/* What every rank must see as rank 0 does, for the ranks to split the work: the options that
 * decide it, then each file's dtype, ndim and dims (in FILE_WORDS words). */
enum { OPTION_WORDS = 5, FILE_WORDS = 2 + BN_NPY_MAX_NDIM };

static const char *const option_names[OPTION_WORDS] = {
    "the number of input files", "--batch", "--estimator", "--channels-last", "--check-finite"};

static void describe_file(int64_t *w, const bn_npy_stream *in) {
    memset(w, 0, sizeof(int64_t) * FILE_WORDS);
    w[0] = in->dtype;
    w[1] = in->ndim;
    memcpy(w + 2, in->dims, sizeof(int64_t) * (size_t)in->ndim);
}

static const char *dtype_name(int64_t dtype) {
    return dtype == BN_FLOAT16 ? "float16" : dtype == BN_FLOAT32 ? "float32" : "float64";
}

/* Collective, after every rank has opened its files: CLI_OK when every rank has the options and
 * the files' dtypes and shapes of rank 0; else every rank fails, and one of them (the first
 * that differs, at the first point of difference) says what differs. The files' contents are
 * not compared: only what the split of the work and the merge depend on. */
static int agree_on_inputs(const dataset *d, const fit_args *a, cli_comm comm) {
    if (comm.size == 1) return CLI_OK;
    int64_t mine[OPTION_WORDS] = {a->nfiles, a->batch, a->batch_mean, a->channels_last,
                                  a->check_finite};
    int64_t theirs[FILE_WORDS > OPTION_WORDS ? FILE_WORDS : OPTION_WORDS];
    memcpy(theirs, mine, sizeof mine);
    cli_comm_broadcast(theirs, OPTION_WORDS);
    int option = 0;
    while (option < OPTION_WORDS && mine[option] == theirs[option]) option++;
    const int64_t first = cli_comm_min(option < OPTION_WORDS ? comm.rank : INT64_MAX);
    if (first != INT64_MAX) {
        if (first == comm.rank)
            cli_fail("fit", "rank %d and rank 0 differ in %s (%lld against %lld): every rank "
                     "must run the same command", comm.rank, option_names[option],
                     (long long)mine[option], (long long)theirs[option]);
        return CLI_RUNTIME_ERROR;
    }
    /* the files, the same number on every rank: the first that differs on some rank */
    int64_t mine_f[FILE_WORDS], rank0[FILE_WORDS];
    int differs = -1;
    for (int f = 0; f < a->nfiles; f++) {
        describe_file(mine_f, &d->in[f]);
        memcpy(theirs, mine_f, sizeof mine_f);
        cli_comm_broadcast(theirs, FILE_WORDS);
        if (differs < 0 && memcmp(mine_f, theirs, sizeof mine_f) != 0) {
            differs = f;
            memcpy(rank0, theirs, sizeof rank0);
        }
    }
    const int64_t key = cli_comm_min(differs < 0 ? INT64_MAX
                                                 : (int64_t)differs * comm.size + comm.rank);
    if (key == INT64_MAX) return CLI_OK;
    if (key == (int64_t)differs * comm.size + comm.rank) {
        const bn_npy_stream *in = &d->in[differs];
        char shape[512], shape0[512];
        bn_npy_shape_string(shape, sizeof shape, in->ndim, in->dims);
        bn_npy_shape_string(shape0, sizeof shape0, (int)rank0[1], rank0 + 2);
        cli_fail(a->files[differs], "rank %d sees shape %s %s, rank 0 sees %s %s: every rank "
                 "must read the same files", comm.rank, shape, dtype_name(in->dtype), shape0,
                 dtype_name(rank0[0]));
    }
    return CLI_RUNTIME_ERROR;
}

/* A progress bar on stderr: samples done, rate, time left. */
typedef struct progress {
    int on;
    int64_t total, done;
    double t0, last;
} progress;

static double now(void) { return 1e-9 * cli_now_ns(); } /* in seconds */

static void progress_show(progress *p, int final) {
    if (!p->on) return;
    double t = now();
    if (!final && t - p->last < 0.1) return;
    p->last = t;
    double rate = p->done / (t - p->t0 > 1e-9 ? t - p->t0 : 1e-9);
    double left = rate > 0 ? (double)(p->total - p->done) / rate : 0;
    int width = 30, filled = p->total ? (int)(width * p->done / p->total) : width;
    fprintf(stderr, "\rfit [%.*s%*s] %lld/%lld samples  %.0f samples/s  %d:%02d left ", filled,
            "##############################", width - filled, "", (long long)p->done,
            (long long)p->total, rate, (int)left / 60, (int)left % 60);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

/* What the batches are read with: a buffer of PIECE_VALUES values of the widest dtype the
 * files are computed in, another of PIECE_VALUES float16 values (a float16 piece is read there
 * and widened into the first), the moments of a piece and those of the batch so far. */
typedef struct reader {
    const fit_args *a;
    dataset *d;
    void *buf;
    void *half;
    bn_moments *part;  /* (min(C, PIECE_VALUES)) */
    bn_moments *batch; /* (C) */
    bn_moments *total; /* (C): the rank's so far */
    int *scaled;       /* whether the moments are of the values scaled (piece_moments) */
} reader;

/* The batch-mean estimator sums each batch's mean and variance twice: as they are, and scaled by
 * 2^-SUM_RESCALE, exact but for values below 2^-958, so that a sum of up to 2^63 finite values
 * (each below 2^1024) stays below 2^1023. The average comes from the plain sum, or where that
 * overflowed (float64 values near DBL_MAX, whose average is finite) from the scaled one. */
#define SUM_RESCALE 64

static double average(double plain, double scaled, int64_t batches) {
    if (isfinite(plain) || !isfinite(scaled)) return plain / (double)batches;
    return ldexp(scaled / (double)batches, SUM_RESCALE);
}

/* M2 = count * variance passes DBL_MAX where the variance does not once it exceeds
 * DBL_MAX / count (a million float64 values spread evenly over 5e151 do). Where a piece's M2
 * comes out infinite with a finite mean, the run goes on scaled: its moments from then on are
 * those of x * 2^-FIT_RESCALE (that piece's values are scaled and its moments formed again;
 * other pieces' moments are scaled, exact but for means below 2^-990 and M2s below 2^-958), at
 * most 2^1023 wherever the variance is finite, and the results are scaled back up at the end
 * (ldexp, exact). float32 values, widened to double, give M2 below 2^320: they never need it. */
#define FIT_RESCALE 32

/* The moments (C) of x made those of x * 2^-FIT_RESCALE. */
static void scale_moments(bn_moments *m, int64_t C) {
    const double down = ldexp(1.0, -FIT_RESCALE);
    for (int64_t k = 0; k < C; k++) m[k].mean *= down, m[k].m2 = m[k].m2 * down * down;
}

/* The moments (desc->c) of the piece buf as desc describes it, of its values scaled when *scaled
 * (set here, and batch and total (C) scaled with it, where the piece's M2 overflows). */
static bn_status piece_moments(bn_moments *part, void *buf, const bn_desc *desc, int *scaled,
                               bn_moments *batch, bn_moments *total, int64_t C) {
    bn_status st = bn_compute_moments(part, buf, desc);
    int overflowed = 0;
    for (int64_t k = 0; st == BN_OK && k < desc->c; k++)
        overflowed |= desc->dtype == BN_FLOAT64 && isinf(part[k].m2) && isfinite(part[k].mean);
    if (st != BN_OK || (!overflowed && !*scaled)) return st;
    if (!overflowed) {
        scale_moments(part, desc->c);
        return BN_OK;
    }
    if (!*scaled) {
        scale_moments(batch, C);
        scale_moments(total, C);
        *scaled = 1;
    }
    double *v = buf; /* float64 only */
    const double down = ldexp(1.0, -FIT_RESCALE);
    for (int64_t k = 0; k < desc->n * desc->c * desc->s; k++) v[k] *= down;
    return bn_compute_moments(part, buf, desc);
}

/* One piece: the values [first, first + count) of file f, described by desc (count = n * c * s)
 * and holding the channels [k0, k0 + desc->c); read, checked (--check-finite), and their
 * moments merged into those of the batch. */
static int take_piece(reader *r, int f, int64_t first, int64_t k0, const bn_desc *stored) {
    const char *file = r->a->files[f];
    bn_npy_stream *in = &r->d->in[f];
    char err[512];
    const int64_t count = stored->n * stored->c * stored->s;
    const int half = stored->dtype == BN_FLOAT16;
    bn_status st = bn_npy_stream_read(in, half ? r->half : r->buf, first, count, err, sizeof err);
    if (st != BN_OK) return cli_fail(file, "%s", err);
    bn_desc computed = *stored;
    computed.dtype = cli_compute_dtype(stored->dtype);
    if (half && (st = bn_convert(r->buf, BN_FLOAT32, r->half, BN_FLOAT16, count)) != BN_OK)
        return cli_fail(file, "%s", bn_status_string(st));
    const bn_desc *desc = &computed;
    if (r->a->check_finite && cli_refuse_nonfinite(file, NULL, r->buf, desc, first, k0, in->ndim,
                                                   in->dims) != CLI_OK)
        return CLI_RUNTIME_ERROR;
    st = piece_moments(r->part, r->buf, desc, r->scaled, r->batch, r->total, r->d->c);
    if (st == BN_OK) st = bn_merge_moments(r->batch + k0, r->part, desc->c);
    return st == BN_OK ? CLI_OK : cli_fail(file, "%s", bn_status_string(st));
}

/* A sample of file f larger than a piece, in pieces. Its rows (channels-first: C rows of S
 * values, one channel each; channels-last: S rows of C values, one per channel) are taken
 * several whole rows at a time, or cut in pieces when one row is larger than a piece. */
static int take_sample(reader *r, int f, int64_t sample) {
    const dataset *d = r->d;
    const int cf = d->layout == BN_CHANNELS_FIRST;
    const bn_dtype dt = d->in[f].dtype;
    const int64_t rows = cf ? d->c : d->s, len = cf ? d->s : d->c, at = sample * d->c * d->s;
    int status = CLI_OK;
    if (len <= PIECE_VALUES) {
        const int64_t q = PIECE_VALUES / len;
        for (int64_t i = 0; i < rows && status == CLI_OK; i += q) {
            const int64_t m = q < rows - i ? q : rows - i;
            const bn_desc desc = cf ? (bn_desc){1, m, len, dt, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR}  /* m channels */
                                    : (bn_desc){1, len, m, dt, BN_CHANNELS_LAST, BN_PARAMS_AS_TENSOR}; /* m rows of C */
            status = take_piece(r, f, at + i * len, cf ? i : 0, &desc);
        }
        return status;
    }
    for (int64_t i = 0; i < rows && status == CLI_OK; i++)
        for (int64_t j = 0; j < len && status == CLI_OK; j += PIECE_VALUES) {
            const int64_t m = PIECE_VALUES < len - j ? PIECE_VALUES : len - j;
            /* m values of channel i, or one value of each of the channels [j, j + m) */
            const bn_desc desc = cf ? (bn_desc){1, 1, m, dt, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR}
                                    : (bn_desc){1, m, 1, dt, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR};
            status = take_piece(r, f, at + i * len + j, cf ? i : j, &desc);
        }
    return status;
}

/* Statistics of this rank's batches [b0, b1): merged moments (population) or the sums of the
 * batches' means and unbiased variances (batch-mean, in sums: (4, C), the sums of the means and
 * of the variances, then the same scaled by 2^-SUM_RESCALE). *scaled: whether the moments are
 * those of the values scaled by 2^-FIT_RESCALE (piece_moments). A batch is read in
 * pieces of whole samples, or a sample at a time when one is larger than a piece; the pieces'
 * moments merge into the batch's in the order of the data. */
static int run_batches(const fit_args *a, dataset *d, int64_t b0, int64_t b1, bn_moments *total,
                       double *sums, int *scaled, progress *p) {
    const int64_t C = d->c, per_sample = d->c * d->s, part_c = C < PIECE_VALUES ? C : PIECE_VALUES;
    /* samples per piece; 0 when a sample is larger than a piece */
    const int64_t per_piece = per_sample ? PIECE_VALUES / per_sample : a->batch;
    const bn_dtype widest = d->any_f64 ? BN_FLOAT64 : BN_FLOAT32;
    reader r = {a, d, malloc((size_t)PIECE_VALUES * cli_dtype_size(widest)),
                malloc((size_t)PIECE_VALUES * 2), malloc(sizeof(bn_moments) * (size_t)(part_c + C)),
                NULL, total, scaled};
    if (!r.buf || !r.half || !r.part) {
        free(r.buf);
        free(r.half);
        free(r.part);
        return cli_fail(a->files[0], "out of memory for the statistics of %lld channels",
                        (long long)C);
    }
    r.batch = r.part + part_c;
    bn_moments *batch = r.batch;
    int status = CLI_OK, f = 0;
    for (int64_t b = b0; b < b1 && status == CLI_OK; b++) {
        const int64_t g0 = b * a->batch, g1 = g0 + a->batch < d->total ? g0 + a->batch : d->total;
        for (int64_t k = 0; k < C; k++) batch[k] = (bn_moments){0, 0.0, 0.0};
        for (int64_t g = g0; g < g1 && status == CLI_OK;) { /* the pieces of the batch's files */
            while (d->start[f + 1] <= g) f++;
            while (d->start[f] > g) f--;
            int64_t end = g1 < d->start[f + 1] ? g1 : d->start[f + 1];
            if (per_piece == 0) {
                end = g + 1;
                status = take_sample(&r, f, g - d->start[f]);
            } else {
                if (end - g > per_piece) end = g + per_piece;
                const bn_desc desc = {end - g, C, d->s, d->in[f].dtype, d->layout, BN_PARAMS_AS_TENSOR};
                status = take_piece(&r, f, (g - d->start[f]) * per_sample, 0, &desc);
            }
            p->done += end - g;
            progress_show(p, 0);
            g = end;
        }
        if (status != CLI_OK) break;
        if (!a->batch_mean) {
            bn_merge_moments(total, batch, C);
            continue;
        }
        if (batch[0].count < 2) {
            status = cli_fail(a->files[f], "batch %lld has %lld value%s per channel: the "
                              "batch-mean estimator needs at least 2 (a larger --batch?)",
                              (long long)b, (long long)batch[0].count,
                              batch[0].count == 1 ? "" : "s");
            break;
        }
        const double down = ldexp(1.0, -SUM_RESCALE);
        const int e = *scaled ? FIT_RESCALE : 0;
        for (int64_t k = 0; k < C; k++) {
            const double mean = ldexp(batch[k].mean, e);
            const double var = ldexp(batch[k].m2 / (double)(batch[k].count - 1), 2 * e);
            sums[k] += mean;
            sums[C + k] += var;
            sums[2 * C + k] += mean * down;
            sums[3 * C + k] += var * down;
        }
    }
    free(r.buf);
    free(r.half);
    free(r.part);
    return status;
}

/* Rank 0 writes the statistics. */
static int write_stats(const fit_args *a, const dataset *d, const double *mean,
                       const double *var, int64_t batches) {
    const int64_t C = d->c;
    const bn_dtype dtype = d->all_f64 ? BN_FLOAT64 : BN_FLOAT32; /* unless every input is f64 */
    void *data = malloc((size_t)C * 2 * cli_dtype_size(dtype));
    char names[3][600], err[512];
    const char *prefix = a->prefix ? a->prefix : "";
    const char *dot = prefix[0] && prefix[strlen(prefix) - 1] != '.' ? "." : "";
    if (!data) return cli_fail(a->out, "out of memory");
    for (int64_t k = 0; k < C; k++) {
        cli_store(data, dtype, k, mean[k]);
        cli_store(data, dtype, C + k, var[k]);
    }
    snprintf(names[0], sizeof names[0], "%s%srunning_mean", prefix, dot);
    snprintf(names[1], sizeof names[1], "%s%srunning_var", prefix, dot);
    snprintf(names[2], sizeof names[2], "%s%snum_batches_tracked", prefix, dot);
    const int dt = dtype == BN_FLOAT64 ? CLI_ST_F64 : CLI_ST_F32;
    cli_st_tensor t[3] = {
        {names[0], dt, 1, {C}, C, data},
        {names[1], dt, 1, {C}, C, (char *)data + (size_t)C * cli_dtype_size(dtype)},
        {names[2], CLI_ST_I64, 0, {0}, 1, &batches},
    };
    cli_note_stale_temporary(a->out);
    bn_status st = cli_safetensors_write(a->out, t, 3, "format", "pt", err, sizeof err);
    free(data);
    if (st != BN_OK) return cli_fail(a->out, "%s", err);
    return CLI_OK;
}

static int run(const fit_args *a, dataset *d, cli_comm comm) {
    int status = open_inputs(d, a);
    if (cli_comm_failures(status != CLI_OK)) return CLI_RUNTIME_ERROR;
    if (agree_on_inputs(d, a, comm) != CLI_OK) return CLI_RUNTIME_ERROR;
    const int64_t C = d->c, batches = (d->total + a->batch - 1) / a->batch;
    if (d->total == 0) {
        if (comm.rank == 0) cli_fail(a->files[0], "no samples: every input has N = 0");
        return CLI_RUNTIME_ERROR;
    }
    /* this rank's run of batches */
    const int64_t b0 = batches * comm.rank / comm.size, b1 = batches * (comm.rank + 1) / comm.size;
    bn_moments *total = calloc((size_t)C, sizeof(bn_moments));
    double *sums = calloc((size_t)C * 6, sizeof(double)); /* (4, C) sums, then mean, var */
    if (!total || !sums)
        status = cli_fail(a->files[0], "out of memory for the statistics of %lld channels",
                          (long long)C);
    progress p = {comm.rank == 0 && isatty(2), 0, 0, now(), 0};
    const int64_t end = b1 * a->batch < d->total ? b1 * a->batch : d->total;
    p.total = end - b0 * a->batch;
    int scaled = 0;
    if (status == CLI_OK) status = run_batches(a, d, b0, b1, total, sums, &scaled, &p);
    progress_show(&p, 1);
    if (cli_comm_failures(status != CLI_OK)) {
        free(total);
        free(sums);
        return CLI_RUNTIME_ERROR;
    }
    /* the ranks merge their moments at one scale: scaled if any rank's are (collective) */
    const int any_scaled = !a->batch_mean && cli_comm_failures(scaled) > 0;
    if (any_scaled && !scaled) scale_moments(total, C);
    const int e = any_scaled ? FIT_RESCALE : 0;
    bn_status st = a->batch_mean ? cli_comm_sum(sums, 4 * C) : cli_comm_merge_moments(total, C);
    double *mean = sums + 4 * C, *var = sums + 5 * C;
    if (st != BN_OK) status = cli_fail(a->out, "combining the ranks: %s", bn_status_string(st));
    else if (!a->batch_mean && total[0].count < 2)
        status = cli_fail(a->files[0], "%lld value%s per channel: the unbiased variance needs at "
                          "least 2", (long long)total[0].count, total[0].count == 1 ? "" : "s");
    for (int64_t k = 0; status == CLI_OK && k < C; k++) {
        mean[k] = a->batch_mean ? average(sums[k], sums[2 * C + k], batches)
                                : ldexp(total[k].mean, e);
        var[k] = a->batch_mean ? average(sums[C + k], sums[3 * C + k], batches)
                               : ldexp(total[k].m2 / (double)(total[k].count - 1), 2 * e);
    }
    if (status == CLI_OK && comm.rank == 0) status = write_stats(a, d, mean, var, batches);
    free(total);
    free(sums);
    return cli_comm_failures(status != CLI_OK) ? CLI_RUNTIME_ERROR : CLI_OK;
}

int cli_fit(int argc, char **argv) {
    fit_args a = {0};
    a.files = calloc((size_t)argc, sizeof(char *));
    dataset d = {calloc((size_t)argc, sizeof(bn_npy_stream)),
                 calloc((size_t)argc + 1, sizeof(int64_t)), 0, 0, 0, 1, 0, BN_CHANNELS_FIRST};
    int status = a.files && d.in && d.start ? parse_args(&a, argc, argv)
                                            : cli_fail("fit", "out of memory");
    if (status == CLI_OK) {
        /* One thread per process: the pieces are small and in cache, the statistics keep pace
         * with reading, and threads would only wait for each other (and for the other ranks'
         * processes under mpirun) at every piece. */
        bn_set_num_threads(1);
        cli_comm comm = cli_comm_start();
        status = run(&a, &d, comm);
        cli_comm_end();
    }
    for (int f = 0; d.in && f < a.nfiles; f++) bn_npy_stream_close(&d.in[f]);
    free(a.files);
    free(d.in);
    free(d.start);
    return status < 0 ? CLI_OK : status;
}
