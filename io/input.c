/* input.c - opening an input that must be a regular file (see input.h). */
#define _POSIX_C_SOURCE 200809L

#include "input.h"
#include "message.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *file_kind(mode_t mode) {
    return S_ISFIFO(mode) ? "a FIFO" : S_ISCHR(mode) ? "a character device"
         : S_ISBLK(mode) ? "a block device" : S_ISSOCK(mode) ? "a socket" : "of an unknown type";
}

bn_status bn_open_regular(FILE **f, const char *path, char *err, size_t errlen) {
    if (!f || !path) {
        bn_io_set_err(err, errlen, "a required argument is NULL");
        return BN_ERR_NULL_POINTER;
    }
    *f = NULL;
    /* O_NONBLOCK: opening a FIFO that has no writer would wait for one */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return bn_io_os_error("cannot open", errno, err, errlen);
    struct stat sb;
    int flags;
    bn_status st = BN_OK;
    if (fstat(fd, &sb) != 0) {
        st = bn_io_os_error("cannot stat", errno, err, errlen);
    } else if (S_ISDIR(sb.st_mode)) {
        st = bn_io_os_error("cannot read", EISDIR, err, errlen);
    } else if (!S_ISREG(sb.st_mode)) {
        bn_io_set_err(err, errlen, "not a regular file (%s)", file_kind(sb.st_mode));
        st = BN_ERR_IO;
    } else if ((flags = fcntl(fd, F_GETFL)) < 0 ||
               fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0 || !(*f = fdopen(fd, "rb"))) {
        st = bn_io_os_error("cannot open", errno, err, errlen);
    }
    if (st != BN_OK) close(fd);
    return st;
}
