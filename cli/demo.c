/* demo.c - `bnorm demo`: the experiment bnorm grew from. A 20x2 standard-normal float32 batch
 * is normalized by bn_forward_train and printed as PyTorch prints it, with the statistics of
 * the result and its distance from a float64 computation done here, independently. */
#include "bnorm.h"
#include "cli.h"

#include <math.h>
#include <stdio.h>

enum { ROWS = 20, COLS = 2 }; /* N = 20 samples, C = 2 features */

static const char usage[] = "usage: bnorm demo [--seed N]\n";

static const char help[] =
    "usage: bnorm demo [--seed N]\n"
    "\n"
    "Reproduces the experiment bnorm grew from: a 20x2 batch of standard-normal float32 values\n"
    "is normalized with its batch statistics (bn_forward_train, eps 1e-05, no weight or bias),\n"
    "as torch.nn.BatchNorm1d(2, affine=False) does in training. Prints the input and the output\n"
    "as PyTorch prints tensors, the mean and biased variance of each output column, and the\n"
    "largest difference from a float64 reference. The batch is the same on every machine.\n"
    "\n"
    "options:\n"
    "  --seed N    seed of the random batch, an integer >= 0 (default 0)\n"
    "  -h, --help  show this help\n";

/* x: out (n), standard-normal samples by Box-Muller in double, rounded to float. */
static void standard_normal(float *x, int n, uint64_t seed) {
    const double two_pi = 6.283185307179586476925286766559;
    uint64_t state = seed;
    for (int i = 0; i < n; i += 2) {
        double r = sqrt(-2.0 * log(1.0 - cli_uniform(&state))); /* 1 - u in (0, 1]: log is finite */
        double t = two_pi * cli_uniform(&state);
        x[i] = (float)(r * cos(t));
        if (i + 1 < n) x[i + 1] = (float)(r * sin(t));
    }
}

/* The float64 reference, two-pass. y_ref: out (N, C); x: in (N, C). */
static void reference(double *y_ref, const float *x, int n, int c, double eps) {
    for (int j = 0; j < c; j++) {
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++) mean += x[i * c + j];
        mean /= n;
        for (int i = 0; i < n; i++) var += (x[i * c + j] - mean) * (x[i * c + j] - mean);
        var /= n; /* biased */
        for (int i = 0; i < n; i++) y_ref[i * c + j] = (x[i * c + j] - mean) / sqrt(var + eps);
    }
}

int cli_demo(int argc, char **argv) {
    const char *seed_text = NULL;
    const cli_option options[] = {{NULL, "--seed", &seed_text, 0}, {NULL, NULL, NULL, 0}};
    int nfiles = 0;
    int status = cli_parse_args(argc, argv, "demo", usage, help, NULL, options, NULL, 0, &nfiles);
    if (status != CLI_OK) return status < 0 ? CLI_OK : status;
    uint64_t seed = 0;
    if (seed_text && !cli_parse_u64(seed_text, &seed))
        return cli_usage_error("demo", usage, "--seed: '%s' is not an integer in [0, 2^64)",
                               seed_text);

    float x[ROWS * COLS], y[ROWS * COLS]; /* (N, C) */
    double y_ref[ROWS * COLS];
    standard_normal(x, ROWS * COLS, seed);
    int64_t dims[2] = {ROWS, COLS};
    bn_desc desc;
    bn_options opt = BN_OPTIONS_DEFAULT;
    bn_status st = bn_desc_from_dims(&desc, 2, dims, BN_FLOAT32, BN_CHANNELS_FIRST);
    if (st == BN_OK)
        st = bn_forward_train(y, NULL, NULL, NULL, NULL, NULL, x, NULL, NULL, &desc, &opt);
    if (st != BN_OK) return cli_fail("demo", "%s", bn_status_string(st));
    reference(y_ref, x, ROWS, COLS, opt.eps);

    printf("x: a %dx%d standard-normal float32 batch (seed %llu)\n", ROWS, COLS,
           (unsigned long long)seed);
    cli_print_tensor(x, ROWS, COLS);
    printf("\ny = bn_forward_train(x): batch mean and biased variance, eps %g\n", opt.eps);
    cli_print_tensor(y, ROWS, COLS);

    double mean[COLS], var[COLS], worst = 0;
    for (int j = 0; j < COLS; j++) {
        mean[j] = var[j] = 0;
        for (int i = 0; i < ROWS; i++) mean[j] += y[i * COLS + j];
        mean[j] /= ROWS;
        for (int i = 0; i < ROWS; i++)
            var[j] += (y[i * COLS + j] - mean[j]) * (y[i * COLS + j] - mean[j]);
        var[j] /= ROWS;
    }
    for (int i = 0; i < ROWS * COLS; i++) { /* a NaN is the largest difference */
        double d = fabs(y[i] - y_ref[i]);
        if (!(d <= worst)) worst = d;
    }
    printf("\n%-8s %12s %16s\n", "column", "mean of y", "biased var of y");
    for (int j = 0; j < COLS; j++) printf("%-8d %12.3e %16.6f\n", j, mean[j], var[j]);
    printf("\nlargest |y - float64 reference|: %.3e\n", worst);
    return CLI_OK;
}
