/* message.c - the one-line messages of io/ (see message.h). */
#include "message.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void bn_io_set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

bn_status bn_io_os_error(const char *what, int errnum, char *err, size_t errlen) {
    bn_io_set_err(err, errlen, "%s: %s", what, strerror(errnum));
    return BN_ERR_IO;
}
