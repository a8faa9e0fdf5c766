/* normalize.c - `bnorm normalize IN.npy -o OUT.npy`: training-mode batch normalization of an
 * (N, C, ...) array in a .npy file, as torch.nn.functional.batch_norm(training=True) computes
 * it, written to another .npy file of the same dtype and shape. OUT is replaced atomically, so
 * a failed run leaves it as it was. */
#include "bnorm.h"
#include "cli.h"
#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: bnorm normalize IN.npy -o OUT.npy [--eps E] [--weight W.npy] [--bias B.npy]\n"
    "                       [--channels-last] [--check-finite]\n";

static const char help[] =
    "usage: bnorm normalize IN.npy -o OUT.npy [--eps E] [--weight W.npy] [--bias B.npy]\n"
    "                       [--channels-last] [--check-finite]\n"
    "\n"
    "Training-mode batch normalization, as torch.nn.functional.batch_norm(x, None, None,\n"
    "weight, bias, training=True, eps=E): every channel is normalized with the mean and the\n"
    "biased variance of its values over the batch and the spatial positions,\n"
    "    y = (x - mean) / sqrt(var + eps) * weight + bias.\n"
    "IN holds a float16, float32 or float64 array of shape (N, C, ...) with at least 2\n"
    "dimensions, in either byte order and in C or Fortran order; OUT gets the same dtype and\n"
    "shape. float16 is computed in float32 (which holds its values exactly) and the output\n"
    "rounded once, to nearest even.\n"
    "\n"
    "options:\n"
    "  -o, --output OUT.npy  where to write the result; replaced atomically, and left as it was\n"
    "                        when anything fails\n"
    "  --eps E               added to the variance, a finite number >= 0 (default 1e-05)\n"
    "  --weight W.npy        per-channel scale, shape (C,) (default: ones)\n"
    "  --bias B.npy          per-channel shift, shape (C,) (default: zeros)\n"
    "  --channels-last       the channel is the last dimension: IN is (N, ..., C), such as\n"
    "                        NHWC; OUT keeps that shape\n"
    "  --check-finite        refuse input, weight or bias holding NaN or infinity (exit 1,\n"
    "                        naming the first one's index and channel); by default they\n"
    "                        propagate as in PyTorch: such a channel's output is NaN\n"
    "  -h, --help            show this help\n"
    "W and B may be float16, float32 or float64 whatever IN's dtype; they are converted to\n"
    "the dtype IN is computed in.\n";

/* The values of the command line. */
typedef struct normalize_args {
    const char *in, *out, *weight, *bias, *eps_text;
    double eps;
    int channels_last, check_finite;
} normalize_args;

/* @return CLI_OK, CLI_USAGE_ERROR, or -1 after printing the help (exit 0). */
static int parse_args(normalize_args *a, int argc, char **argv) {
    const cli_flag flags[] = {{"--channels-last", &a->channels_last},
                              {"--check-finite", &a->check_finite}, {NULL, NULL}};
    const cli_option options[] = {{"-o", "--output", &a->out, 1}, {NULL, "--eps", &a->eps_text, 0},
                                  {NULL, "--weight", &a->weight, 1}, {NULL, "--bias", &a->bias, 1},
                                  {NULL, NULL, NULL, 0}};
    int n = 0;
    int status = cli_parse_args(argc, argv, "normalize", usage, help, flags, options, &a->in, 1, &n);
    if (status != CLI_OK) return status;
    if (!a->in) return cli_usage_error("normalize", usage, "missing the input file IN.npy");
    if (!a->out) return cli_usage_error("normalize", usage, "missing -o OUT.npy");
    a->eps = 1e-5;
    if (a->eps_text && (!cli_parse_double(a->eps_text, &a->eps) || !(a->eps >= 0)))
        return cli_usage_error("normalize", usage,
                               "--eps: '%s' is not a finite number >= 0", a->eps_text);
    return CLI_OK;
}

/* Reads a per-channel parameter file: 1-d of length c, converted to dtype in place. */
static int read_param(bn_npy *p, const char *path, const char *what, int64_t c, bn_dtype dtype,
                      const char *in) {
    char err[512], shape[512];
    bn_status st = bn_npy_read(p, path, err, sizeof err);
    if (st != BN_OK) return cli_fail(path, "%s", err);
    if (cli_widen_half(p) != BN_OK) {
        bn_npy_free(p);
        return cli_fail(path, "out of memory");
    }
    if (p->ndim != 1 || p->dims[0] != c) {
        cli_fail(path, "%s has shape %s, but %s has %lld channels: expected (%lld,)", what,
                 bn_npy_shape_string(shape, sizeof shape, p->ndim, p->dims), in, (long long)c,
                 (long long)c);
        bn_npy_free(p);
        return CLI_RUNTIME_ERROR;
    }
    if (p->dtype == dtype) return CLI_OK;
    size_t nbytes = (size_t)c * cli_dtype_size(dtype);
    void *converted = malloc(nbytes ? nbytes : 1);
    if (!converted) {
        bn_npy_free(p);
        return cli_fail(path, "out of memory");
    }
    for (int64_t k = 0; k < c; k++) cli_store(converted, dtype, k, cli_load(p->data, p->dtype, k));
    free(p->data);
    p->data = converted;
    p->dtype = dtype;
    p->nbytes = nbytes;
    return CLI_OK;
}

/* --check-finite on a whole file */
static int refuse_nonfinite(const char *path, const bn_npy *arr, const bn_desc *d) {
    return cli_refuse_nonfinite(path, NULL, arr->data, d, 0, 0, arr->ndim, arr->dims);
}

static int run(const normalize_args *a, bn_npy *x, bn_npy *weight, bn_npy *bias) {
    char err[512], shape[512];
    bn_status st = bn_npy_read(x, a->in, err, sizeof err);
    if (st != BN_OK) return cli_fail(a->in, "%s", err);
    const bn_dtype stored = x->dtype; /* float16: computed in float32 */
    if (cli_widen_half(x) != BN_OK) return cli_fail(a->in, "out of memory");
    bn_npy_shape_string(shape, sizeof shape, x->ndim, x->dims);
    if (x->ndim < 2)
        return cli_fail(a->in, "shape %s has %d dimension%s; batch normalization needs (N, C, ...) "
                        "with at least 2",
                        shape, x->ndim, x->ndim == 1 ? "" : "s");

    /* the library takes the dims in logical order (N, C, ...) whatever the layout */
    int64_t dims[BN_NPY_MAX_NDIM];
    cli_logical_dims(dims, x->ndim, x->dims, a->channels_last);
    bn_desc desc;
    st = bn_desc_from_dims(&desc, x->ndim, dims, x->dtype,
                           a->channels_last ? BN_CHANNELS_LAST : BN_CHANNELS_FIRST);
    if (st != BN_OK) return cli_fail(a->in, "shape %s: %s", shape, bn_status_string(st));

    if (a->weight && read_param(weight, a->weight, "weight", desc.c, x->dtype, a->in) != CLI_OK)
        return CLI_RUNTIME_ERROR;
    if (a->bias && read_param(bias, a->bias, "bias", desc.c, x->dtype, a->in) != CLI_OK)
        return CLI_RUNTIME_ERROR;

    if (a->check_finite) {
        const bn_desc per_channel = {1, desc.c, 1, desc.dtype, BN_CHANNELS_FIRST, BN_PARAMS_AS_TENSOR};
        if (refuse_nonfinite(a->in, x, &desc) != CLI_OK ||
            (a->weight && refuse_nonfinite(a->weight, weight, &per_channel) != CLI_OK) ||
            (a->bias && refuse_nonfinite(a->bias, bias, &per_channel) != CLI_OK))
            return CLI_RUNTIME_ERROR;
    }

    bn_options opt = BN_OPTIONS_DEFAULT;
    opt.eps = a->eps;
    /* y = x: the library allows normalizing in place */
    st = bn_forward_train(x->data, NULL, NULL, NULL, NULL, NULL, x->data, weight->data,
                          bias->data, &desc, &opt);
    if (st != BN_OK) return cli_fail(a->in, "%s (shape %s)", bn_status_string(st), shape);

    cli_note_stale_temporary(a->out);
    st = cli_npy_write_stored(a->out, stored, x->ndim, x->dims, x->data, err, sizeof err);
    if (st != BN_OK) return cli_fail(a->out, "%s", err);
    return CLI_OK;
}

int cli_normalize(int argc, char **argv) {
    normalize_args a = {0};
    int status = parse_args(&a, argc, argv);
    if (status != CLI_OK) return status < 0 ? CLI_OK : status;
    bn_npy x = {0}, weight = {0}, bias = {0};
    status = run(&a, &x, &weight, &bias);
    bn_npy_free(&x);
    bn_npy_free(&weight);
    bn_npy_free(&bias);
    return status;
}
