/* apply.c - `bnorm apply --stats STATS.safetensors IN.npy -o OUT.npy`: eval-mode batch
 * normalization of an (N, C, ...) array with stored statistics (those `bnorm fit` writes, or a
 * BatchNorm state_dict saved as safetensors: its weight and bias are used when present). OUT is
 * replaced atomically, so a failed run leaves it as it was. */
#include "bnorm.h"
#include "cli.h"
#include "npy.h"
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: bnorm apply --stats STATS.safetensors IN.npy -o OUT.npy [--prefix NAME] [--eps E]\n"
    "                   [--channels-last] [--check-finite]\n";

static const char help[] =
    "usage: bnorm apply --stats STATS.safetensors IN.npy -o OUT.npy [--prefix NAME] [--eps E]\n"
    "                   [--channels-last] [--check-finite]\n"
    "\n"
    "Eval-mode batch normalization, as a torch BatchNorm in eval() computes it:\n"
    "    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias\n"
    "with running_mean and running_var (and weight and bias, when the file has them) read\n"
    "from STATS, a safetensors file such as `bnorm fit` writes. IN holds a float16, float32\n"
    "or float64 (N, C, ...) array; OUT gets the same dtype and shape (float16 is computed in\n"
    "float32 and the output rounded once, to nearest even).\n"
    "\n"
    "options:\n"
    "  --stats STATS.safetensors  the statistics\n"
    "  -o, --output OUT.npy       where to write; replaced atomically, left as it was on failure\n"
    "  --prefix NAME              key prefix in STATS: NAME.running_mean ... (default: none)\n"
    "  --eps E                    added to the variance, a finite number >= 0 (default 1e-05)\n"
    "  --channels-last            the channel is the last dimension: IN is (N, ..., C)\n"
    "  --check-finite             refuse IN or statistics holding NaN or infinity (exit 1,\n"
    "                             naming the first); without it they propagate as in torch\n"
    "  -h, --help                 show this help\n";

typedef struct apply_args {
    const char *in, *out, *stats, *prefix, *eps_text;
    double eps;
    int channels_last, check_finite;
} apply_args;

static int parse_args(apply_args *a, int argc, char **argv) {
    const cli_flag flags[] = {{"--channels-last", &a->channels_last},
                              {"--check-finite", &a->check_finite}, {NULL, NULL}};
    const cli_option options[] = {{"-o", "--output", &a->out, 1}, {NULL, "--stats", &a->stats, 1},
                                  {NULL, "--prefix", &a->prefix, 0},
                                  {NULL, "--eps", &a->eps_text, 0}, {NULL, NULL, NULL, 0}};
    int n = 0;
    int status = cli_parse_args(argc, argv, "apply", usage, help, flags, options, &a->in, 1, &n);
    if (status != CLI_OK) return status;
    if (!a->in) return cli_usage_error("apply", usage, "missing the input file IN.npy");
    if (!a->out) return cli_usage_error("apply", usage, "missing -o OUT.npy");
    if (!a->stats) return cli_usage_error("apply", usage, "missing --stats STATS.safetensors");
    if (a->prefix && strlen(a->prefix) > 500)
        return cli_usage_error("apply", usage, "--prefix: longer than 500 characters");
    a->eps = 1e-5;
    if (a->eps_text && (!cli_parse_double(a->eps_text, &a->eps) || !(a->eps >= 0)))
        return cli_usage_error("apply", usage, "--eps: '%s' is not a finite number >= 0",
                               a->eps_text);
    return CLI_OK;
}

/* Tensor NAME (with the prefix) of the stats file as c values of dtype in out (c elements);
 * missing: 0 when optional (out untouched), else an error. With --check-finite, values that
 * are not finite in dtype are refused. */
static int take(void *out, const cli_st_file *f, const apply_args *a, const char *name,
                int64_t c, bn_dtype dtype, int required, int *found) {
    char key[600];
    const char *prefix = a->prefix ? a->prefix : "";
    const char *dot = prefix[0] && prefix[strlen(prefix) - 1] != '.' ? "." : "";
    snprintf(key, sizeof key, "%s%s%s", prefix, dot, name);
    const cli_st_tensor *t = cli_safetensors_find(f, key);
    *found = t != NULL;
    if (!t) return required ? cli_fail(a->stats, "no tensor \"%s\"", key) : CLI_OK;
    if (t->ndim != 1 || t->dims[0] != c || t->dtype == CLI_ST_I64)
        return cli_fail(a->stats, "\"%s\" must be a float vector of %lld values (the channels of "
                        "%s), but has %d dimension%s and %lld values", key, (long long)c, a->in,
                        t->ndim, t->ndim == 1 ? "" : "s", (long long)t->count);
    for (int64_t k = 0; k < c; k++) cli_store(out, dtype, k, cli_safetensors_value(t, k));
    const bn_desc per_channel = {1, c, 1, dtype, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR};
    return a->check_finite ? cli_refuse_nonfinite(a->stats, key, out, &per_channel, 0, 0, 1, &c)
                           : CLI_OK;
}

static int run(const apply_args *a, bn_npy *x, cli_st_file *f, void **params) {
    char err[512], shape[512];
    bn_status st = cli_safetensors_read(f, a->stats, err, sizeof err);
    if (st != BN_OK) return cli_fail(a->stats, "%s", err);
    st = bn_npy_read(x, a->in, err, sizeof err);
    if (st != BN_OK) return cli_fail(a->in, "%s", err);
    const bn_dtype stored = x->dtype; /* float16: computed in float32 */
    if (cli_widen_half(x) != BN_OK) return cli_fail(a->in, "out of memory");
    bn_npy_shape_string(shape, sizeof shape, x->ndim, x->dims);
    /* the library takes the dims in logical order (N, C, ...) whatever the layout */
    int64_t dims[BN_NPY_MAX_NDIM];
    const int nd = x->ndim;
    cli_logical_dims(dims, nd, x->dims, a->channels_last);
    bn_desc desc;
    st = nd < 2 ? BN_ERR_SHAPE
                : bn_desc_from_dims(&desc, nd, dims, x->dtype,
                                    a->channels_last ? BN_CHANNELS_LAST : BN_CHANNELS_FIRST);
    if (st != BN_OK)
        return cli_fail(a->in, "shape %s: batch normalization needs %s with C >= 1", shape,
                        a->channels_last ? "(N, ..., C)" : "(N, C, ...)");
    if (a->check_finite &&
        cli_refuse_nonfinite(a->in, NULL, x->data, &desc, 0, 0, x->ndim, x->dims) != CLI_OK)
        return CLI_RUNTIME_ERROR;
    const size_t es = cli_dtype_size(x->dtype);
    *params = malloc((size_t)desc.c * 4 * es); /* running_mean, running_var, weight, bias */
    if (!*params) return cli_fail(a->in, "out of memory");
    char *p = *params;
    void *rm = p, *rv = p + desc.c * (int64_t)es, *w = p + 2 * desc.c * (int64_t)es;
    void *b = p + 3 * desc.c * (int64_t)es;
    int has_rm, has_rv, has_w, has_b;
    if (take(rm, f, a, "running_mean", desc.c, x->dtype, 1, &has_rm) != CLI_OK ||
        take(rv, f, a, "running_var", desc.c, x->dtype, 1, &has_rv) != CLI_OK ||
        take(w, f, a, "weight", desc.c, x->dtype, 0, &has_w) != CLI_OK ||
        take(b, f, a, "bias", desc.c, x->dtype, 0, &has_b) != CLI_OK)
        return CLI_RUNTIME_ERROR;
    st = bn_forward_eval(x->data, x->data, rm, rv, has_w ? w : NULL, has_b ? b : NULL, &desc,
                         a->eps);
    if (st != BN_OK) return cli_fail(a->in, "%s (shape %s)", bn_status_string(st), shape);
    cli_note_stale_temporary(a->out);
    st = cli_npy_write_stored(a->out, stored, x->ndim, x->dims, x->data, err, sizeof err);
    if (st != BN_OK) return cli_fail(a->out, "%s", err);
    return CLI_OK;
}

int cli_apply(int argc, char **argv) {
    apply_args a = {0};
    int status = parse_args(&a, argc, argv);
    if (status != CLI_OK) return status < 0 ? CLI_OK : status;
    bn_npy x = {0};
    cli_st_file f = {0};
    void *params = NULL;
    status = run(&a, &x, &f, &params);
    bn_npy_free(&x);
    cli_safetensors_free(&f);
    free(params);
    return status;
}
