/* moments.c - merging the per-channel statistics of pieces of a batch (bn_merge_moments), with
 * the merge the forward pass uses between its blocks (moments.h). */
#include "moments.h"
#include "validate.h"

bn_status bn_merge_moments(bn_moments *acc, const bn_moments *part, int64_t c) {
    BN_RETURN_IF(c < 0, BN_ERR_SHAPE);
    if (c == 0) return BN_OK;
    BN_RETURN_IF(!acc || !part, BN_ERR_NULL_POINTER);
    for (int64_t k = 0; k < c; k++) {
        BN_RETURN_IF(acc[k].count < 0 || part[k].count < 0, BN_ERR_ARGUMENT);
        BN_RETURN_IF(part[k].count > INT64_MAX - acc[k].count, BN_ERR_TOO_LARGE);
    }
    for (int64_t k = 0; k < c; k++) bn_moments_merge(&acc[k], part[k]);
    return BN_OK;
}
