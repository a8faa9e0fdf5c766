/* output.c - the writer every output goes through, by one rule (links followed; files replaced
 * atomically by temporary file + fsync + rename; devices and FIFOs written in place). See
 * output.h. */
#define _XOPEN_SOURCE 700 /* POSIX 2008 and S_ISVTX */

#include "output.h"
#include "message.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Writes header and data to fd (consumed: always closed), syncing when sync is set. */
static bn_status write_fd(int fd, int sync, const char *header, size_t hlen, const void *data,
                          size_t nbytes, char *err, size_t errlen) {
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        int e = errno;
        close(fd);
        return bn_io_os_error("cannot open for writing", e, err, errlen);
    }
    int e = 0;
    const char *what = NULL;
    if (fwrite(header, 1, hlen, f) != hlen || (nbytes && fwrite(data, 1, nbytes, f) != nbytes)) {
        e = errno;
        what = "write failed";
    } else if (fflush(f) != 0) {
        e = errno;
        what = "write failed";
    } else if (fsync(fileno(f)) != 0 && (sync || (errno != EINVAL && errno != EROFS))) {
        e = errno; /* devices that cannot sync say EINVAL; that is no data loss */
        what = "fsync failed";
    }
    if (fclose(f) != 0 && !what) {
        e = errno;
        what = "close failed";
    }
    if (what) return bn_io_os_error(what, e ? e : EIO, err, errlen);
    return BN_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Where an output goes: the file its symbolic links lead to, and the temporary file beside it.
 */

enum {
    LINK_HOPS = 40,     /* symbolic links followed at most (Linux's limit) */
    TMP_NAME_MAX = 255, /* NAME_MAX: no temporary name is longer */
    TMP_RANDOM = 6      /* random characters at the end of a temporary name */
};

/* A temporary file is "." + (the start of) the output's name + tmp_tag + TMP_RANDOM characters. */
static const char tmp_tag[] = ".bnorm-tmp.";
static const char tmp_alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/* Bytes of the output's name that its temporary name keeps: all, or as many as fit in
 * TMP_NAME_MAX, cut before a UTF-8 continuation byte so that no character is split. */
static size_t tmp_stem(const char *name) {
    const size_t room = TMP_NAME_MAX - 1 - (sizeof tmp_tag - 1) - TMP_RANDOM;
    size_t n = strlen(name);
    if (n <= room) return n;
    for (n = room; n > 0 && ((unsigned char)name[n] & 0xc0) == 0x80; n--) {}
    return n;
}

/* Whether entry is a temporary name for an output called name[0 .. stem-1]. */
static int is_temporary_of(const char *entry, const char *name, size_t stem) {
    const size_t tag = sizeof tmp_tag - 1;
    if (entry[0] != '.' || strncmp(entry + 1, name, stem) != 0 ||
        strncmp(entry + 1 + stem, tmp_tag, tag) != 0)
        return 0;
    const char *random = entry + 1 + stem + tag;
    return strlen(random) == TMP_RANDOM && strspn(random, tmp_alphabet) == TMP_RANDOM;
}

/* TMP_RANDOM characters for a temporary name, from the time, the process and the attempt. */
static void random_suffix(char *out, unsigned attempt) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 30 ^ (uint64_t)getpid() << 40 ^
                 (uint64_t)(uintptr_t)out ^ (uint64_t)attempt * 0x9e3779b97f4a7c15u;
    x ^= x >> 30; /* splitmix64's finalizer */
    x *= 0xbf58476d1ce4e5b9u;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebu;
    x ^= x >> 31;
    for (int i = 0; i < TMP_RANDOM; i++, x /= 62) out[i] = tmp_alphabet[x % 62];
}

/* The length of path's directory part, its final '/' included (0: the current directory). */
static size_t dir_length(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? (size_t)(slash - path) + 1 : 0;
}

/* Whether this process may follow the symbolic link at path (lsb: its lstat). Following links
 * by hand skips the kernel's rule for sticky directories that anyone may write to, such as /tmp
 * (Linux's fs.protected_symlinks), so it is applied here whatever the system's setting: there,
 * only a link owned by this user or by the directory's owner is followed. path is cut at its
 * directory for a moment. */
static int may_follow(char *path, const struct stat *lsb) {
    size_t dir_len = dir_length(path);
    char kept = path[dir_len];
    path[dir_len] = '\0';
    struct stat dsb;
    int known = stat(dir_len ? path : ".", &dsb) == 0;
    path[dir_len] = kept;
    return !known || !(dsb.st_mode & S_ISVTX) || !(dsb.st_mode & S_IWOTH) ||
           lsb->st_uid == geteuid() || lsb->st_uid == dsb.st_uid;
}

/* The target of the symbolic link at path, as a path usable from here: a relative target is
 * taken from the link's directory. malloc'd; NULL with errno set on failure. */
static char *link_target(const char *path, const struct stat *lsb) {
    size_t cap = lsb->st_size > 0 ? (size_t)lsb->st_size + 1 : 256;
    for (;;) {
        char *buf = malloc(cap);
        if (!buf) return NULL;
        ssize_t n = readlink(path, buf, cap);
        if (n < 0) {
            int e = errno;
            free(buf);
            errno = e;
            return NULL;
        }
        if ((size_t)n < cap) { /* not cut short */
            buf[n] = '\0';
            size_t dir_len = buf[0] == '/' ? 0 : dir_length(path);
            char *full = malloc(dir_len + (size_t)n + 1);
            if (full) snprintf(full, dir_len + (size_t)n + 1, "%.*s%s", (int)dir_len, path, buf);
            free(buf);
            if (!full) errno = ENOMEM;
            return full;
        }
        free(buf);
        cap *= 2;
    }
}

/* Follows the symbolic links at path to the file they lead to: *target (malloc'd) names it and
 * *sb is its lstat, st_mode 0 when there is nothing (a new file, a dangling link, or a path the
 * system refuses to look up: creating the temporary file then says why). *through = 1 when a
 * link names an open file rather than a path (Linux's /proc/PID/fd/N, which /dev/stdout leads
 * to): *target is then that link, for the kernel to follow. */
static bn_status follow_links(const char *path, char **target, struct stat *sb, int *through,
                              char *err, size_t errlen) {
    struct stat proc;
    const int have_proc = lstat("/proc/self", &proc) == 0;
    char *cur = malloc(strlen(path) + 1);
    if (!cur) {
        bn_io_set_err(err, errlen, "out of memory");
        return BN_ERR_TOO_LARGE;
    }
    strcpy(cur, path);
    *through = 0;
    for (int hops = 0;; hops++) {
        if (lstat(cur, sb) != 0) {
            memset(sb, 0, sizeof *sb);
            break;
        }
        if (!S_ISLNK(sb->st_mode)) break;
        if (have_proc && sb->st_dev == proc.st_dev) {
            *through = 1;
            break;
        }
        bn_status st = BN_OK;
        char *next = NULL;
        if (hops == LINK_HOPS) {
            st = bn_io_os_error("cannot follow the symbolic link", ELOOP, err, errlen);
        } else if (!may_follow(cur, sb)) {
            bn_io_set_err(err, errlen,
                          "refusing to follow the symbolic link %s: another user owns it, "
                          "in a sticky directory anyone may write to",
                          cur);
            st = BN_ERR_IO;
        } else if (!(next = link_target(cur, sb))) {
            bn_io_set_err(err, errlen, "cannot read the symbolic link %s: %s", cur,
                          strerror(errno));
            st = BN_ERR_IO;
        }
        free(cur);
        if (st != BN_OK) return st;
        cur = next;
    }
    *target = cur;
    return BN_OK;
}

/* Writes header and data through the file at path as it is (a device, a FIFO, a file named by
 * an open-file link), truncating a regular file first when trunc is set. O_NONBLOCK, cleared
 * once open: a FIFO that no process reads is ENXIO at once rather than a wait for a reader. */
static bn_status write_in_place(const char *path, int trunc, const char *header, size_t hlen,
                                const void *data, size_t nbytes, char *err, size_t errlen) {
    int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | (trunc ? O_TRUNC : 0));
    if (fd < 0 && errno == ENXIO) {
        bn_io_set_err(err, errlen,
                      "cannot open for writing: %s (a FIFO that no process is reading)",
                      strerror(ENXIO));
        return BN_ERR_IO;
    }
    if (fd < 0) return bn_io_os_error("cannot open for writing", errno, err, errlen);
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return bn_io_os_error("cannot open for writing", e, err, errlen);
    }
    return write_fd(fd, 0, header, hlen, data, nbytes, err, errlen);
}

/* The new file takes the old one's owner and permission bits, before any data is in it. Best
 * effort: a process that may not give a file away (not root) keeps it as its own, with the
 * group where it may; should fchmod fail, the file stays 0600. */
static void keep_owner_and_mode(int fd, const struct stat *old) {
    struct stat now;
    if (fstat(fd, &now) == 0 && (now.st_uid != old->st_uid || now.st_gid != old->st_gid)) {
        int owned = fchown(fd, old->st_uid, old->st_gid) == 0 ||
                    fchown(fd, (uid_t)-1, old->st_gid) == 0;
        (void)owned;
    }
    /* after fchown, which may clear the set-id bits */
    int moded = fchmod(fd, old->st_mode & 07777) == 0;
    (void)moded;
}

/* The temporary file being written, for bn_remove_output_temporary(); NULL when there is none. */
static _Atomic(char *) temporary_path;

void bn_remove_output_temporary(void) {
    char *tmp = atomic_load(&temporary_path);
    if (tmp) unlink(tmp);
}

/* Writes header and data to a new temporary file beside target and renames it over target.
 * old: target's lstat when it is a regular file that the new one replaces, else NULL. */
static bn_status replace(char *target, const struct stat *old, const char *header, size_t hlen,
                         const void *data, size_t nbytes, char *err, size_t errlen) {
    const size_t dir_len = dir_length(target);
    const char *name = target + dir_len;
    if (*name == '\0') return bn_io_os_error("cannot write", EISDIR, err, errlen);
    const size_t stem = tmp_stem(name);
    const size_t tmp_size = dir_len + 1 + stem + sizeof tmp_tag + TMP_RANDOM;
    char *tmp = malloc(tmp_size);
    if (!tmp) {
        bn_io_set_err(err, errlen, "out of memory");
        return BN_ERR_TOO_LARGE;
    }
    int fd = -1;
    for (unsigned attempt = 0; attempt < 100 && fd < 0; attempt++) {
        char suffix[TMP_RANDOM + 1] = {0};
        random_suffix(suffix, attempt);
        snprintf(tmp, tmp_size, "%.*s.%.*s%s%s", (int)dir_len, target, (int)stem, name, tmp_tag,
                 suffix);
        /* named before it exists: a signal may land as open returns */
        atomic_store(&temporary_path, tmp);
        /* O_EXCL as in mkstemp. A new output gets 0666 less the umask, as any new file; one
         * that replaces a file starts private and then takes that file's mode. */
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, old ? 0600 : 0666);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        int e = errno;
        atomic_store(&temporary_path, NULL);
        bn_io_set_err(err, errlen, "cannot create a temporary file in %s%.*s: %s",
                      dir_len ? "" : "the current directory", (int)dir_len, target, strerror(e));
        free(tmp);
        return BN_ERR_IO;
    }
    if (old) keep_owner_and_mode(fd, old);
    bn_status st = write_fd(fd, 1, header, hlen, data, nbytes, err, errlen);
    if (st == BN_OK && rename(tmp, target) != 0) {
        int e = errno;
        bn_io_set_err(err, errlen, "cannot rename the temporary file %s into place: %s", tmp,
                      strerror(e));
        st = BN_ERR_IO;
    }
    if (st != BN_OK) unlink(tmp);
    atomic_store(&temporary_path, NULL);
    free(tmp);
    if (st == BN_OK) { /* make the rename itself durable; best effort */
        char kept = target[dir_len];
        target[dir_len] = '\0';
        int dfd = open(dir_len ? target : ".", O_RDONLY | O_CLOEXEC);
        target[dir_len] = kept;
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return st;
}

bn_status bn_write_output(const char *path, const char *header, size_t hlen, const void *data,
                          size_t nbytes, char *err, size_t errlen) {
    if (!path || (!header && hlen) || (!data && nbytes)) {
        bn_io_set_err(err, errlen, "a required argument is NULL");
        return BN_ERR_NULL_POINTER;
    }
    if (!path[0]) return bn_io_os_error("cannot write to an empty file name", ENOENT, err, errlen);
    char *target;
    struct stat sb;
    int through;
    bn_status st = follow_links(path, &target, &sb, &through, err, errlen);
    if (st != BN_OK) return st;
    if (S_ISDIR(sb.st_mode)) /* a directory, or a link to one */
        st = bn_io_os_error("cannot write", EISDIR, err, errlen);
    else if (through || (sb.st_mode && !S_ISREG(sb.st_mode)))
        /* a device or FIFO: renaming over it would replace the node, so write through it */
        st = write_in_place(target, through, header, hlen, data, nbytes, err, errlen);
    else
        st = replace(target, sb.st_mode ? &sb : NULL, header, hlen, data, nbytes, err, errlen);
    free(target);
    return st;
}

int bn_find_stale_temporary(const char *path, char *found, size_t foundlen) {
    char *target;
    struct stat sb;
    int through, hit = 0;
    if (!path || !path[0] || follow_links(path, &target, &sb, &through, NULL, 0) != BN_OK)
        return 0;
    const size_t dir_len = dir_length(target);
    const char *name = target + dir_len;
    if (!through && (!sb.st_mode || S_ISREG(sb.st_mode)) && *name) { /* a file it replaces */
        const size_t stem = tmp_stem(name);
        char kept = target[dir_len];
        target[dir_len] = '\0';
        DIR *dir = opendir(dir_len ? target : ".");
        target[dir_len] = kept;
        for (struct dirent *e; dir && !hit && (e = readdir(dir));) {
            if (!is_temporary_of(e->d_name, name, stem)) continue;
            hit = 1;
            if (found && foundlen)
                snprintf(found, foundlen, "%.*s%s", (int)dir_len, target, e->d_name);
        }
        if (dir) closedir(dir);
    }
    free(target);
    return hit;
}
