/* dtype.c - single values of the library's element types (float32, float64, bfloat16, float16)
 * in the command's buffers: their size, and one element read as a double or stored from one
 * (rounded once: bn_convert). */
#include "cli.h"

size_t cli_dtype_size(bn_dtype dtype) {
    switch (dtype) {
    case BN_FLOAT32: return sizeof(float);
    case BN_FLOAT64: return sizeof(double);
    case BN_BFLOAT16:
    case BN_FLOAT16: return 2;
    default: return 0;
    }
}

double cli_load(const void *data, bn_dtype dtype, int64_t k) {
    switch (dtype) {
    case BN_FLOAT32: return ((const float *)data)[k];
    case BN_FLOAT64: return ((const double *)data)[k];
    default: {
        double v = 0;
        bn_convert(&v, BN_FLOAT64, (const char *)data + 2 * k, dtype, 1);
        return v;
    }
    }
}

void cli_store(void *data, bn_dtype dtype, int64_t k, double v) {
    switch (dtype) {
    case BN_FLOAT32: ((float *)data)[k] = (float)v; break;
    case BN_FLOAT64: ((double *)data)[k] = v; break;
    default: bn_convert((char *)data + 2 * k, dtype, &v, BN_FLOAT64, 1); break;
    }
}
