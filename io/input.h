/*
 * input.h - opening an input that must be a regular file (internal).
 *
 * Messages as in message.h.
 */
#ifndef BN_IO_INPUT_H
#define BN_IO_INPUT_H

#include "bnorm.h"

#include <stddef.h>
#include <stdio.h>

/*
 * Opens path for reading when it is a regular file, for readers that need one (a known size,
 * seeks): anything else is refused ("not a regular file (a FIFO)", ... "cannot read: Is a
 * directory"). Opening does not wait on a FIFO that has no writer: O_NONBLOCK, cleared once the
 * file is known to be regular. On success *f is open ("rb"); on failure it is NULL.
 * @return BN_OK; BN_ERR_IO (err says why); BN_ERR_NULL_POINTER.
 */
bn_status bn_open_regular(FILE **f, const char *path, char *err, size_t errlen);

#endif /* BN_IO_INPUT_H */
