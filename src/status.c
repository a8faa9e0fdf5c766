/* status.c - what each status means, and the version string. */
#include "bnorm.h"

#define BN_STR2(x) #x
#define BN_STR(x) BN_STR2(x)

const char *bn_status_string(bn_status status) {
    switch (status) {
    case BN_OK: return "ok";
    case BN_ERR_NULL_POINTER: return "a required pointer is NULL";
    case BN_ERR_SHAPE: return "invalid shape: need (N, C, ...) with N >= 0, C >= 1 and sizes >= 0";
    case BN_ERR_TOO_LARGE: return "tensor too large: its size overflows 64-bit arithmetic";
    case BN_ERR_ARGUMENT:
        return "invalid argument: an option out of its range (eps finite and >= 0, momentum in [0, 1], known flags, ...)";
    case BN_ERR_COUNT: return "expected more than 1 value per channel when training";
    case BN_ERR_UNSUPPORTED: return "unsupported dtype or layout";
    case BN_ERR_IO: return "input/output error";
    case BN_ERR_FORMAT: return "malformed or unsupported file";
    case BN_ERR_NO_MEMORY: return "out of memory for a scratch buffer";
    case BN_ERR_NOT_FINITE: return "a value is NaN or infinite";
    }
    return "unknown status";
}

const char *bn_version_string(void) {
    return BN_STR(BN_VERSION_MAJOR) "." BN_STR(BN_VERSION_MINOR) "." BN_STR(BN_VERSION_PATCH);
}
