/* finite.c - --check-finite: refuse an array holding NaN or infinity, naming the first one. */
#include "bnorm.h"
#include "cli.h"
#include "npy.h"

#include <math.h>

int cli_refuse_nonfinite(const char *path, const char *tensor, const void *data,
                         const bn_desc *desc, int64_t offset, int64_t channel0, int ndim,
                         const int64_t *dims) {
    int64_t channel, index, at[BN_NPY_MAX_NDIM];
    bn_status st = bn_check_finite(&channel, &index, data, desc);
    if (st == BN_OK) return CLI_OK;
    if (st != BN_ERR_NOT_FINITE) return cli_fail(path, "%s", bn_status_string(st));
    const double v = cli_load(data, desc->dtype, index);
    index += offset;
    for (int k = ndim - 1; k >= 0; k--) { /* the file's C order; no size is 0, a value was found */
        at[k] = index % dims[k];
        index /= dims[k];
    }
    char where[512];
    bn_npy_shape_string(where, sizeof where, ndim, at);
    return cli_fail(path, "%s%s%s%s at index %s (channel %lld), refused by --check-finite",
                    tensor ? "\"" : "", tensor ? tensor : "", tensor ? "\": " : "",
                    isnan(v) ? "nan" : v > 0 ? "inf" : "-inf", where,
                    (long long)(channel0 + channel));
}
