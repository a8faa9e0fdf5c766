/* half.c - float16 .npy files in the commands: read, widened to float32 (exact) to compute, and
 * the results rounded once back to float16 to write (bn_convert). */
#include "cli.h"
#include "message.h"
#include "npy.h"

#include <stdlib.h>

bn_dtype cli_compute_dtype(bn_dtype stored) { return stored == BN_FLOAT16 ? BN_FLOAT32 : stored; }

bn_status cli_widen_half(bn_npy *arr) {
    if (arr->dtype != BN_FLOAT16) return BN_OK;
    const size_t nbytes = (size_t)arr->count * sizeof(float);
    float *wide = malloc(nbytes ? nbytes : 1);
    if (!wide) return BN_ERR_NO_MEMORY;
    const bn_status st = bn_convert(wide, BN_FLOAT32, arr->data, BN_FLOAT16, arr->count);
    if (st != BN_OK) {
        free(wide);
        return st;
    }
    free(arr->data);
    arr->data = wide;
    arr->dtype = BN_FLOAT32;
    arr->nbytes = nbytes;
    return BN_OK;
}

bn_status cli_npy_write_stored(const char *path, bn_dtype stored, int ndim, const int64_t *dims,
                               const void *data, char *err, size_t errlen) {
    if (stored != BN_FLOAT16) return bn_npy_write(path, stored, ndim, dims, data, err, errlen);
    int64_t count = 1;
    for (int k = 0; k < ndim; k++) count *= dims[k]; /* the array's, so it fits */
    void *narrow = malloc(count ? (size_t)count * 2 : 1);
    if (!narrow) {
        bn_io_set_err(err, errlen, "out of memory for the float16 output");
        return BN_ERR_NO_MEMORY;
    }
    bn_status st = bn_convert(narrow, BN_FLOAT16, data, BN_FLOAT32, count);
    if (st == BN_OK) st = bn_npy_write(path, BN_FLOAT16, ndim, dims, narrow, err, errlen);
    free(narrow);
    return st;
}
