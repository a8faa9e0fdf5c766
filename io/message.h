/*
 * message.h - the one-line messages of io/ (internal to io/).
 *
 * Every function of io/ takes err/errlen, a caller's buffer that receives one line naming the
 * problem precisely (without the file name, which the caller knows), NUL-terminated and
 * truncated to errlen. err may be NULL or errlen 0 to discard it. On success err is left alone.
 */
#ifndef BN_IO_MESSAGE_H
#define BN_IO_MESSAGE_H

#include "bnorm.h"

#include <stddef.h>

/* Writes the formatted line into err (truncated to errlen); NULL or errlen 0 discards it. */
void bn_io_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes "<what>: <strerror(errnum)>" into err. @return BN_ERR_IO. */
bn_status bn_io_os_error(const char *what, int errnum, char *err, size_t errlen);

#endif /* BN_IO_MESSAGE_H */
