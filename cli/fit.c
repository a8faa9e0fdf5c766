/* fit.c - `bnorm fit FILE.npy... --out STATS.safetensors`: exact per-channel population
 * statistics of (N, C, ...) arrays of any size, read in batches of B samples, each in pieces of
 * a few MiB (memory bounded by that, whatever the files' sizes), written as the running statistics of a BatchNorm state_dict.
 * Under mpirun the ranks take consecutive runs of batches and merge their statistics in rank
 * order. */
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
#include <time.h>
#include <unistd.h>

#define PIECE_BYTES (INT64_C(2) << 20)

static const char usage[] =
    "usage: bnorm fit FILE.npy... --out STATS.safetensors [--batch B]\n"
    "                 [--estimator population|batch-mean] [--prefix NAME] [--channels-last]\n"
    "                 [--check-finite]\n";

static const char help[] =
    "usage: bnorm fit FILE.npy... --out STATS.safetensors [--batch B]\n"
    "                 [--estimator population|batch-mean] [--prefix NAME] [--channels-last]\n"
    "                 [--check-finite]\n"
    "\n"
    "Per-channel statistics of the samples of every FILE (float32 or float64 arrays of shape\n"
    "(N, C, ...) with the same C and sizes after it, taken one after the other as one dataset),\n"
    "read B samples at a time: memory does not grow with the files. Writes a safetensors file\n"
    "with running_mean, running_var and num_batches_tracked (the number of batches), loadable\n"
    "into a torch BatchNorm's state_dict.\n"
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
    "within rounding. A progress bar is shown on stderr when it is a terminal.\n";

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
    const cli_option options[] = {{"-o", "--out", &a->out}, {NULL, "--batch", &a->batch_text},
                                  {NULL, "--estimator", &a->estimator},
                                  {NULL, "--prefix", &a->prefix}, {NULL, NULL, NULL}};
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
    for (int f = 0; f < a->nfiles; f++) {
        bn_npy_stream *in = &d->in[f];
        bn_status st = bn_npy_stream_open(in, a->files[f], err, sizeof err);
        if (st != BN_OK) return cli_fail(a->files[f], "%s", err);
        bn_npy_shape_string(shape, sizeof shape, in->ndim, in->dims);
        if (in->ndim < 2 || in->dims[a->channels_last ? in->ndim - 1 : 1] < 1)
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
    const int nd = d->in[0].ndim;
    d->c = d->in[0].dims[a->channels_last ? nd - 1 : 1];
    d->s = 1;
    for (int k = a->channels_last ? 1 : 2; k < (a->channels_last ? nd - 1 : nd); k++)
        d->s *= d->in[0].dims[k];
    d->layout = a->channels_last ? BN_CHANNELS_LAST : BN_CHANNELS_FIRST;
    d->total = d->start[a->nfiles];
    return CLI_OK;
}

/* A progress bar on stderr: samples done, rate, time left. */
typedef struct progress {
    int on;
    int64_t total, done;
    double t0, last;
} progress;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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

/* The batch-mean estimator sums each batch's mean and variance twice: as they are, and scaled by
 * 2^-SUM_RESCALE, exact but for values below 2^-958, so that a sum of up to 2^63 finite values
 * (each below 2^1024) stays below 2^1023. The average comes from the plain sum, or where that
 * overflowed (float64 values near DBL_MAX, whose average is finite) from the scaled one. */
#define SUM_RESCALE 64

static double average(double plain, double scaled, int64_t batches) {
    if (isfinite(plain) || !isfinite(scaled)) return plain / (double)batches;
    return ldexp(scaled / (double)batches, SUM_RESCALE);
}

/* M2 = count * variance passes DBL_MAX where the variance does not once it exceeds DBL_MAX / count
 * (a million float64 values spread evenly over 5e151 do). Where a piece's M2 comes out infinite with a finite
 * mean, the run goes on scaled: its moments from then on are those of x * 2^-FIT_RESCALE (that
 * piece's values are scaled and its moments formed again; other pieces' moments are scaled,
 * exact but for means below 2^-990 and M2s below 2^-958), at most 2^1023 wherever the variance
 * is finite, and the results are scaled back up at the end (ldexp, exact). float32 values,
 * widened to double, give M2 below 2^320: they never need it. */
#define FIT_RESCALE 32

/* The moments (C) of x made those of x * 2^-FIT_RESCALE. */
static void scale_moments(bn_moments *m, int64_t C) {
    const double down = ldexp(1.0, -FIT_RESCALE);
    for (int64_t k = 0; k < C; k++) m[k].mean *= down, m[k].m2 = m[k].m2 * down * down;
}

/* The moments (C) of the piece buf as desc describes it, of its values scaled when *scaled
 * (set here, and batch and total scaled with it, where the piece's M2 overflows). */
static bn_status piece_moments(bn_moments *part, void *buf, const bn_desc *desc, int *scaled,
                               bn_moments *batch, bn_moments *total) {
    const int64_t C = desc->c;
    bn_status st = bn_compute_moments(part, buf, desc);
    int overflowed = 0;
    for (int64_t k = 0; st == BN_OK && k < C; k++)
        overflowed |= desc->dtype == BN_FLOAT64 && isinf(part[k].m2) && isfinite(part[k].mean);
    if (st != BN_OK || (!overflowed && !*scaled)) return st;
    if (!overflowed) {
        scale_moments(part, C);
        return BN_OK;
    }
    if (!*scaled) {
        scale_moments(batch, C);
        scale_moments(total, C);
        *scaled = 1;
    }
    double *v = buf; /* float64 only */
    const double down = ldexp(1.0, -FIT_RESCALE);
    for (int64_t k = 0; k < desc->n * C * desc->s; k++) v[k] *= down;
    return bn_compute_moments(part, buf, desc);
}

/* Statistics of this rank's batches [b0, b1): merged moments (population) or the sums of the
 * batches' means and unbiased variances (batch-mean, in sums: (4, C), the sums of the means and
 * of the variances, then the same scaled by 2^-SUM_RESCALE). *scaled: whether the moments are
 * those of the values scaled by 2^-FIT_RESCALE (piece_moments). */
static int run_batches(const fit_args *a, dataset *d, int64_t b0, int64_t b1, bn_moments *total,
                       double *sums, int *scaled, progress *p) {
    const int64_t C = d->c, per_sample = d->c * d->s;
    char err[512];
    if (per_sample && a->batch > INT64_MAX / 8 / per_sample)
        return cli_fail(a->files[0], "a batch of %lld samples of %lld values is too large",
                        (long long)a->batch, (long long)per_sample);
    /* a batch is read in pieces of about PIECE_BYTES, which the statistics then find in the
     * cache; their moments merge into the batch's */
    const int64_t piece_max = PIECE_BYTES / 8 / (per_sample ? per_sample : 1);
    const int64_t piece = piece_max < 1 ? 1 : piece_max < a->batch ? piece_max : a->batch;
    const int64_t elements = piece * per_sample;
    void *buf = malloc((size_t)(elements > 0 ? elements : 1) * 8);
    bn_moments *batch = malloc(sizeof(bn_moments) * 2 * (size_t)C);
    if (!buf || !batch) {
        free(buf);
        free(batch);
        return cli_fail(a->files[0], "out of memory for a batch of %lld samples",
                        (long long)a->batch);
    }
    bn_moments *part = batch + C;
    int status = CLI_OK, f = 0;
    for (int64_t b = b0; b < b1 && status == CLI_OK; b++) {
        const int64_t g0 = b * a->batch, g1 = g0 + a->batch < d->total ? g0 + a->batch : d->total;
        for (int64_t k = 0; k < C; k++) batch[k] = (bn_moments){0, 0.0, 0.0};
        for (int64_t g = g0; g < g1 && status == CLI_OK;) { /* the pieces of the batch's files */
            while (d->start[f + 1] <= g) f++;
            while (d->start[f] > g) f--;
            int64_t end = g1 < d->start[f + 1] ? g1 : d->start[f + 1];
            if (end - g > piece) end = g + piece;
            const int64_t n = end - g;
            bn_npy_stream *in = &d->in[f];
            bn_status st = bn_npy_stream_read(in, buf, (g - d->start[f]) * per_sample,
                                              n * per_sample, err, sizeof err);
            if (st != BN_OK) {
                status = cli_fail(a->files[f], "%s", err);
                break;
            }
            bn_desc desc = {n, C, d->s, in->dtype, d->layout};
            if (a->check_finite &&
                cli_refuse_nonfinite(a->files[f], NULL, buf, &desc, (g - d->start[f]) * per_sample,
                                     in->ndim, in->dims) != CLI_OK) {
                status = CLI_RUNTIME_ERROR;
                break;
            }
            st = piece_moments(part, buf, &desc, scaled, batch, total);
            if (st == BN_OK) st = bn_merge_moments(batch, part, C);
            if (st != BN_OK) status = cli_fail(a->files[f], "%s", bn_status_string(st));
            g = end;
            p->done += n;
            progress_show(p, 0);
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
    free(buf);
    free(batch);
    return status;
}

/* Rank 0 writes the statistics. */
static int write_stats(const fit_args *a, const dataset *d, const double *mean,
                       const double *var, int64_t batches) {
    const int64_t C = d->c;
    const int f64 = d->all_f64; /* float32 unless every input is float64 */
    void *data = malloc((size_t)C * 2 * (f64 ? 8 : 4));
    char names[3][600], err[512];
    const char *prefix = a->prefix ? a->prefix : "";
    const char *dot = prefix[0] && prefix[strlen(prefix) - 1] != '.' ? "." : "";
    if (!data) return cli_fail(a->out, "out of memory");
    for (int64_t k = 0; k < C; k++) {
        if (f64) {
            ((double *)data)[k] = mean[k];
            ((double *)data)[C + k] = var[k];
        } else {
            ((float *)data)[k] = (float)mean[k];
            ((float *)data)[C + k] = (float)var[k];
        }
    }
    snprintf(names[0], sizeof names[0], "%s%srunning_mean", prefix, dot);
    snprintf(names[1], sizeof names[1], "%s%srunning_var", prefix, dot);
    snprintf(names[2], sizeof names[2], "%s%snum_batches_tracked", prefix, dot);
    const int dt = f64 ? CLI_ST_F64 : CLI_ST_F32;
    cli_st_tensor t[3] = {
        {names[0], dt, 1, {C}, C, data},
        {names[1], dt, 1, {C}, C, (char *)data + (size_t)C * (f64 ? 8 : 4)},
        {names[2], CLI_ST_I64, 0, {0}, 1, &batches},
    };
    bn_status st = cli_safetensors_write(a->out, t, 3, "format", "pt", err, sizeof err);
    free(data);
    if (st != BN_OK) return cli_fail(a->out, "%s", err);
    return CLI_OK;
}

static int run(const fit_args *a, dataset *d, cli_comm comm) {
    int status = open_inputs(d, a);
    if (cli_comm_failures(status != CLI_OK)) return CLI_RUNTIME_ERROR;
    const int64_t C = d->c, batches = (d->total + a->batch - 1) / a->batch;
    if (d->total == 0) {
        if (comm.rank == 0) cli_fail(a->files[0], "no samples: every input has N = 0");
        return CLI_RUNTIME_ERROR;
    }
    /* this rank's run of batches */
    const int64_t b0 = batches * comm.rank / comm.size, b1 = batches * (comm.rank + 1) / comm.size;
    bn_moments *total = calloc((size_t)C, sizeof(bn_moments));
    double *sums = calloc((size_t)C * 6, sizeof(double)); /* (4, C) sums, then mean, var */
    if (!total || !sums) status = cli_fail(a->out, "out of memory");
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
