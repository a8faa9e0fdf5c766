/* fuzz_npy.c - libFuzzer target for the .npy reader: the fuzzed bytes are parsed from memory
 * (bn_npy_parse), read from a file (bn_npy_read, the command's path), from a pipe (the
 * reader's other path, for input of unknown length) and in pieces (bn_npy_stream, the reader
 * of `bnorm fit`), and all four must agree.
 * Invariants: the same status, message and array from both; on success the shape, count and
 * byte count agree and every byte of the data is readable (ASan checks); on failure the array
 * is zeroed and the message is one non-empty line; a successful read writes back and reads
 * again to the same bytes. */
#define _POSIX_C_SOURCE 200809L

#include "fuzz_files.h"
#include "npy.h"

#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_files_init("fuzz_npy");
    return 0;
}

static volatile unsigned char sink;

static size_t element_size(bn_dtype dtype) {
    return dtype == BN_FLOAT16 ? 2 : dtype == BN_FLOAT32 ? 4 : 8;
}

static int is_zeroed(const bn_npy *a) {
    static const bn_npy zero;
    return memcmp(a, &zero, sizeof zero) == 0;
}

static void check_success(const bn_npy *a) {
    if (a->dtype != BN_FLOAT16 && a->dtype != BN_FLOAT32 && a->dtype != BN_FLOAT64) die("dtype");
    if (a->ndim < 0 || a->ndim > BN_NPY_MAX_NDIM) die("ndim");
    int64_t count = 1;
    int zero = 0;
    for (int i = 0; i < a->ndim; i++) {
        if (a->dims[i] < 0) die("negative size");
        if (a->dims[i] == 0) zero = 1;
        else if (!zero && count <= INT64_MAX / a->dims[i]) count *= a->dims[i];
    }
    for (int i = a->ndim; i < BN_NPY_MAX_NDIM; i++)
        if (a->dims[i] != 0) die("dims past ndim not zero");
    if (zero) count = 0;
    if (a->count != count) die("count is not the product of dims");
    if (a->nbytes != (size_t)count * element_size(a->dtype)) die("nbytes");
    if (!a->data) die("data NULL after success");
    for (size_t k = 0; k < a->nbytes; k++) /* touch every byte: ASan catches a short buffer */
        sink ^= ((const unsigned char *)a->data)[k];
}

static void check_message(const char *err, size_t errlen) {
    size_t n = strnlen(err, errlen);
    if (n == 0 || n == errlen) die("empty or unterminated message");
    if (memchr(err, '\n', n)) die("message of more than one line");
}

/* The file read in two pieces split where the data says: the same status and the same bytes
 * as the whole read, except that the stream refuses Fortran order (not contiguous). */
static void check_stream(bn_status whole, const bn_npy *b) {
    char err[512];
    bn_npy_stream s;
    bn_status st = bn_npy_stream_open(&s, path, err, sizeof err);
    if (st != whole && !(whole == BN_OK && st == BN_ERR_UNSUPPORTED))
        die("stream and read disagree on the status");
    if (st != BN_OK) {
        check_message(err, sizeof err);
        return;
    }
    if (s.count != b->count || s.ndim != b->ndim || s.dtype != b->dtype) die("stream header");
    size_t size = element_size(b->dtype);
    unsigned char *out = malloc(b->nbytes + 1);
    int64_t cut = b->count ? (int64_t)(((const unsigned char *)b->data)[0] % (b->count + 1)) : 0;
    if (bn_npy_stream_read(&s, out + cut * size, cut, b->count - cut, err, sizeof err) != BN_OK ||
        bn_npy_stream_read(&s, out, 0, cut, err, sizeof err) != BN_OK)
        die("stream read failed");
    if (b->nbytes && memcmp(out, b->data, b->nbytes) != 0) die("stream and read give different data");
    if (bn_npy_stream_read(&s, out, b->count, 1, err, sizeof err) != BN_ERR_SHAPE)
        die("stream read past the end");
    free(out);
    bn_npy_stream_close(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err1[512], err2[512];
    bn_npy a, b;
    memset(&a, 0x5A, sizeof a);
    memset(&b, 0x5A, sizeof b);
    bn_status s1 = bn_npy_parse(&a, data, size, err1, sizeof err1);

    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) die("cannot write the file");
    bn_status s2 = bn_npy_read(&b, path, err2, sizeof err2);

    /* the same bytes through a pipe (they fit in its buffer: -max_len is far below 64 KiB) */
    int fds[2];
    char pipe_path[32], err4[512];
    bn_npy p;
    if (size > 65536 || pipe(fds) != 0) die("cannot make a pipe");
    if (size && write(fds[1], data, size) != (ssize_t)size) die("cannot fill the pipe");
    close(fds[1]);
    snprintf(pipe_path, sizeof pipe_path, "/dev/fd/%d", fds[0]);
    bn_status s4 = bn_npy_read(&p, pipe_path, err4, sizeof err4);
    close(fds[0]);
    /* the same status, except that a pipe's length is unknown until it ends: a header length
     * past the end of the file may be refused as too large before that is seen */
    if (s4 != s2 && !(s2 == BN_ERR_FORMAT && s4 == BN_ERR_TOO_LARGE)) die("file and pipe disagree");
    if (s4 == BN_OK) {
        if (p.ndim != b.ndim || p.count != b.count || memcmp(p.data, b.data, b.nbytes) != 0)
            die("file and pipe give different arrays");
        bn_npy_free(&p);
    } else {
        check_message(err4, sizeof err4);
    }

    if (s1 != s2) die("parse and read disagree on the status");
    check_stream(s2, &b);
    if (s1 == BN_OK) {
        check_success(&a);
        check_success(&b);
        if (a.dtype != b.dtype || a.ndim != b.ndim || a.count != b.count ||
            memcmp(a.dims, b.dims, sizeof a.dims) != 0 || memcmp(a.data, b.data, a.nbytes) != 0)
            die("parse and read give different arrays");
        /* the writer's file reads back to the same array */
        char err3[512];
        bn_npy c;
        if (bn_npy_write(out_path, a.dtype, a.ndim, a.dims, a.data, err3, sizeof err3) != BN_OK)
            die("cannot write back what was read");
        if (bn_npy_read(&c, out_path, err3, sizeof err3) != BN_OK) die("cannot read back");
        if (c.dtype != a.dtype || c.ndim != a.ndim || memcmp(c.dims, a.dims, sizeof a.dims) != 0 ||
            memcmp(c.data, a.data, a.nbytes) != 0)
            die("round trip changed the array");
        bn_npy_free(&c);
    } else {
        if (s1 != BN_ERR_FORMAT && s1 != BN_ERR_UNSUPPORTED && s1 != BN_ERR_TOO_LARGE)
            die("unexpected status");
        if (!is_zeroed(&a) || !is_zeroed(&b)) die("array not zeroed on failure");
        check_message(err1, sizeof err1);
        check_message(err2, sizeof err2);
        if (strcmp(err1, err2) != 0) die("parse and read give different messages");
    }
    bn_npy_free(&a);
    bn_npy_free(&b);
    return 0;
}
