/* test_npy.c - the .npy reader and writer: round trips, every header form NumPy may write, and
 * one check per way a file can be wrong; the writer's promise that a failure leaves no file and
 * changes no existing file, and its rule for each kind of path (FIFO, symbolic link, long name);
 * readers that do not wait on a FIFO. Files live in a fresh directory under /tmp. */
#define _XOPEN_SOURCE 700

#include "check.h"
#include "input.h"
#include "npy.h"
#include "output.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

static char dir[64];
static char err[512];

/* dir/name, in a static buffer (one at a time is enough here). */
static const char *in_dir(const char *name) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

static int put_file(const char *path, const void *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(buf, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}

/* The whole file into a malloc'd buffer; *len its size. NULL if it cannot be read. */
static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = malloc(1 << 20);
    *len = buf ? fread(buf, 1, 1 << 20, f) : 0;
    fclose(f);
    return buf;
}

/* Number of directory entries other than . and .. */
static int count_entries(const char *path) {
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static int host_little(void) {
    uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* A .npy file in buf: magic, version major.0, the header text as given (no padding added),
 * then data. Returns its length. */
static size_t make_npy(unsigned char *buf, int major, const char *header, const void *data,
                       size_t nbytes) {
    size_t hlen = strlen(header), k = 0;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    k = 8;
    buf[k++] = (unsigned char)(hlen & 0xff);
    buf[k++] = (unsigned char)(hlen >> 8);
    if (major >= 2) {
        buf[k++] = (unsigned char)(hlen >> 16);
        buf[k++] = (unsigned char)(hlen >> 24);
    }
    memcpy(buf + k, header, hlen);
    if (nbytes) memcpy(buf + k + hlen, data, nbytes);
    return k + hlen + nbytes;
}

/* Reads bytes both from a file and from memory; both must give want, with msg in the error. */
static void expect_bad(const char *what, const void *bytes, size_t len, bn_status want,
                       const char *msg) {
    const char *path = in_dir("bad.npy");
    bn_npy a;
    CHECK_MSG(put_file(path, bytes, len), "%s: cannot write the test file", what);
    memset(err, 0, sizeof err);
    bn_status st = bn_npy_read(&a, path, err, sizeof err);
    CHECK_MSG(st == want, "%s: read status %d, want %d (%s)", what, st, want, err);
    CHECK_MSG(strstr(err, msg) != NULL, "%s: message \"%s\" lacks \"%s\"", what, err, msg);
    CHECK_MSG(a.data == NULL && a.ndim == 0, "%s: the array is not cleared on failure", what);
    memset(err, 0, sizeof err);
    st = bn_npy_parse(&a, bytes, len, err, sizeof err);
    CHECK_MSG(st == want, "%s: parse status %d, want %d (%s)", what, st, want, err);
    CHECK_MSG(strstr(err, msg) != NULL, "%s: parse message \"%s\" lacks \"%s\"", what, err, msg);
    remove(path);
}

/* A header with the given descr and shape values, fortran_order False. */
#define HDR(descr, shape) "{'descr': " descr ", 'fortran_order': False, 'shape': " shape ", }"

static void expect_bad_header(const char *what, const char *header, size_t nbytes,
                              bn_status want, const char *msg) {
    static unsigned char buf[4096], zeros[256];
    expect_bad(what, buf, make_npy(buf, 1, header, zeros, nbytes), want, msg);
}

/* ------------------------------------------------------------------------------------------ */

static void round_trip(bn_dtype dtype, int ndim, const int64_t *dims) {
    size_t size = dtype == BN_FLOAT16 ? 2 : dtype == BN_FLOAT32 ? 4 : 8;
    int64_t count = 1;
    for (int i = 0; i < ndim; i++) count *= dims[i];
    unsigned char *data = malloc((size_t)count * size + 1);
    for (int64_t i = 0; i < count; i++) {
        if (dtype == BN_FLOAT16) ((uint16_t *)data)[i] = (uint16_t)(i * 0x1357 & 0xffff);
        else if (dtype == BN_FLOAT32) ((float *)data)[i] = (float)i * 0.25f - 3.0f;
        else ((double *)data)[i] = (double)i / 3.0 - 1e300 * (i % 2);
    }
    char shape[256];
    bn_npy_shape_string(shape, sizeof shape, ndim, dims);
    const char *path = in_dir("rt.npy");
    bn_status st = bn_npy_write(path, dtype, ndim, dims, data, err, sizeof err);
    CHECK_MSG(st == BN_OK, "write %s: %s", shape, err);

    size_t len = 0;
    unsigned char *file = slurp(path, &len);
    if (CHECK_MSG(file && len >= 10, "%s: file missing", shape)) {
        size_t hlen = (size_t)file[8] | (size_t)file[9] << 8;
        CHECK_MSG(memcmp(file, "\x93NUMPY\x01\x00", 8) == 0, "%s: magic/version", shape);
        CHECK_MSG((10 + hlen) % 64 == 0, "%s: data starts at %zu", shape, 10 + hlen);
        CHECK_MSG(file[10 + hlen - 1] == '\n', "%s: header does not end with a newline", shape);
        CHECK_MSG(len == 10 + hlen + (size_t)count * size, "%s: file is %zu bytes", shape, len);
    }
    free(file);

    bn_npy a;
    st = bn_npy_read(&a, path, err, sizeof err);
    if (CHECK_MSG(st == BN_OK, "read %s: %s", shape, err)) {
        CHECK_MSG(a.dtype == dtype && a.ndim == ndim, "%s: dtype %d ndim %d", shape, a.dtype,
                  a.ndim);
        CHECK_MSG(a.count == count && a.nbytes == (size_t)count * size, "%s: count", shape);
        CHECK_MSG(memcmp(a.dims, dims, (size_t)ndim * sizeof *dims) == 0, "%s: dims", shape);
        CHECK_MSG(a.data != NULL, "%s: data NULL", shape);
        CHECK_MSG(count == 0 || memcmp(a.data, data, a.nbytes) == 0, "%s: data differs", shape);
        bn_npy_free(&a);
        CHECK(a.data == NULL);
    }
    free(data);
    remove(path);
}

static void test_round_trips(void) {
    static const int64_t d0[1] = {0}, d1[1] = {7}, d1e[1] = {0}, d2[2] = {3, 4}, d2e[2] = {0, 5},
                         d3e[3] = {2, 0, 3}, d5[5] = {2, 3, 4, 5, 6}, d4[4] = {1, 1, 1, 1};
    for (int t = 0; t < 3; t++) {
        bn_dtype dt = t == 2 ? BN_FLOAT16 : t ? BN_FLOAT64 : BN_FLOAT32;
        round_trip(dt, 0, d0);
        round_trip(dt, 1, d1);
        round_trip(dt, 1, d1e);
        round_trip(dt, 2, d2);
        round_trip(dt, 2, d2e);
        round_trip(dt, 3, d3e);
        round_trip(dt, 5, d5);
        round_trip(dt, 4, d4);
    }
    /* the writer replaces an existing file */
    const char *path = in_dir("over.npy");
    CHECK(put_file(path, "old contents", 12));
    float v[3] = {1, 2, 3};
    int64_t n3 = 3;
    CHECK_STATUS(bn_npy_write(path, BN_FLOAT32, 1, &n3, v, err, sizeof err), BN_OK);
    bn_npy a;
    if (CHECK(bn_npy_read(&a, path, err, sizeof err) == BN_OK)) {
        CHECK(a.count == 3 && memcmp(a.data, v, sizeof v) == 0);
        bn_npy_free(&a);
    }
    /* the new file has the permissions of an ordinary new file, not mkstemp's 0600 */
    remove(path);
    mode_t mask = umask(022);
    umask(mask);
    CHECK_STATUS(bn_npy_write(path, BN_FLOAT32, 1, &n3, v, err, sizeof err), BN_OK);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == (0666 & ~mask));
    remove(path);
    CHECK_MSG(count_entries(dir) == 0, "files left in %s", dir);
}

/* The same 2x3 float32 array, (i, j) -> 10 i + j, in versions 1, 2 and 3 and header styles. */
static void test_header_forms(void) {
    static const float c_order[6] = {0, 1, 2, 10, 11, 12};
    static const struct { int major; const char *header; } forms[] = {
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n"},
        {2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n"},
        {3, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n"},
        {1, "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}"},
        {1, "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(2,3)}"},
        {1, "  {\n 'fortran_order' :  False ,\t'shape':( 2 , 3 , ) ,'descr' : '<f4' , }\n\n"},
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }\n"},
    };
    unsigned char buf[512];
    for (size_t k = 0; k < sizeof forms / sizeof forms[0]; k++) {
        float data[6];
        memcpy(data, c_order, sizeof data);
        if (!host_little()) /* the headers say '<' */
            for (int i = 0; i < 6; i++) {
                unsigned char *b = (unsigned char *)&data[i], t;
                t = b[0], b[0] = b[3], b[3] = t, t = b[1], b[1] = b[2], b[2] = t;
            }
        size_t len = make_npy(buf, forms[k].major, forms[k].header, data, sizeof data);
        const char *path = in_dir("form.npy");
        CHECK(put_file(path, buf, len));
        bn_npy a;
        bn_status st = bn_npy_read(&a, path, err, sizeof err);
        if (CHECK_MSG(st == BN_OK, "form %zu: %s", k, err)) {
            CHECK_MSG(a.dtype == BN_FLOAT32 && a.ndim == 2 && a.dims[0] == 2 && a.dims[1] == 3,
                      "form %zu: shape", k);
            CHECK_MSG(memcmp(a.data, c_order, sizeof c_order) == 0, "form %zu: data", k);
            bn_npy_free(&a);
        }
        remove(path);
    }
    /* 0-d and 1-element shapes */
    double one = 2.5;
    size_t len = make_npy(buf, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': ()}", &one,
                          host_little() ? 8 : 0);
    bn_npy a;
    if (host_little() && CHECK(bn_npy_parse(&a, buf, len, err, sizeof err) == BN_OK)) {
        CHECK(a.ndim == 0 && a.count == 1 && ((double *)a.data)[0] == 2.5);
        bn_npy_free(&a);
    }
    len = make_npy(buf, 1, "{'descr': 'float64', 'fortran_order': False, 'shape': (1,)}", &one, 8);
    if (CHECK(bn_npy_parse(&a, buf, len, err, sizeof err) == BN_OK)) {
        CHECK(a.ndim == 1 && a.dims[0] == 1 && ((double *)a.data)[0] == 2.5);
        bn_npy_free(&a);
    }
    len = make_npy(buf, 1, "{'descr': '=f8', 'fortran_order': False, 'shape': (1,)}", &one, 8);
    if (CHECK(bn_npy_parse(&a, buf, len, err, sizeof err) == BN_OK)) {
        CHECK(a.dtype == BN_FLOAT64 && ((double *)a.data)[0] == 2.5);
        bn_npy_free(&a);
    }
}

/* '>f4' and '>f8' data come back in the machine's order. */
static void test_big_endian(void) {
    unsigned char buf[512], data[8 * 4];
    float f[4] = {1.5f, -2.0f, 3.25e-20f, 7e30f};
    double d[4] = {1.5, -2.0, 1e-300, 6.02214076e23};
    for (int i = 0; i < 4; i++) { /* write big-endian bytes by value, whatever the host */
        uint32_t u;
        memcpy(&u, &f[i], 4);
        for (int b = 0; b < 4; b++) data[4 * i + b] = (unsigned char)(u >> (24 - 8 * b));
    }
    size_t len = make_npy(buf, 1, HDR("'>f4'", "(2, 2)"),
                          data, 16);
    bn_npy a;
    if (CHECK(bn_npy_parse(&a, buf, len, err, sizeof err) == BN_OK)) {
        CHECK(a.dtype == BN_FLOAT32 && memcmp(a.data, f, sizeof f) == 0);
        bn_npy_free(&a);
    }
    const uint16_t h[4] = {0x3c00, 0xc000, 0x0001, 0x7bff}; /* float16 1, -2, 2^-24, 65504 */
    for (int i = 0; i < 4; i++) data[2 * i] = (unsigned char)(h[i] >> 8), data[2 * i + 1] = (unsigned char)h[i];
    len = make_npy(buf, 1, HDR("'>f2'", "(4,)"), data, 8);
    if (CHECK(bn_npy_parse(&a, buf, len, err, sizeof err) == BN_OK)) {
        CHECK(a.dtype == BN_FLOAT16 && a.nbytes == 8 && memcmp(a.data, h, sizeof h) == 0);
        bn_npy_free(&a);
    }
    len = make_npy(buf, 1, HDR("'float16'", "(4,)"), h, 8); /* a dtype name: native order */
    if (CHECK(bn_npy_parse(&a, buf, len, err, sizeof err) == BN_OK)) {
        CHECK(a.dtype == BN_FLOAT16 && memcmp(a.data, h, sizeof h) == 0);
        bn_npy_free(&a);
    }
    for (int i = 0; i < 4; i++) {
        uint64_t u;
        memcpy(&u, &d[i], 8);
        for (int b = 0; b < 8; b++) data[8 * i + b] = (unsigned char)(u >> (56 - 8 * b));
    }
    len = make_npy(buf, 2, HDR("'>f8'", "(4,)"), data, 32);
    const char *path = in_dir("be.npy");
    CHECK(put_file(path, buf, len));
    if (CHECK(bn_npy_read(&a, path, err, sizeof err) == BN_OK)) {
        CHECK(a.dtype == BN_FLOAT64 && memcmp(a.data, d, sizeof d) == 0);
        bn_npy_free(&a);
    }
    remove(path);
}

/* fortran_order True: element (i, j, k) of a (2, 3, 4) array is stored at i + 2 (j + 3 k). */
static void test_fortran_order(void) {
    double stored[24], want[24];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 4; k++) {
                double v = 100 * i + 10 * j + k;
                stored[i + 2 * (j + 3 * k)] = v;
                want[(i * 3 + j) * 4 + k] = v;
            }
    unsigned char buf[1024];
    size_t len = make_npy(buf, 1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3, 4), }",
                          stored, host_little() ? sizeof stored : 0);
    bn_npy a;
    if (host_little() && CHECK(bn_npy_parse(&a, buf, len, err, sizeof err) == BN_OK)) {
        CHECK(a.ndim == 3 && a.dims[0] == 2 && a.dims[1] == 3 && a.dims[2] == 4);
        CHECK(memcmp(a.data, want, sizeof want) == 0);
        bn_npy_free(&a);
    }
    /* big-endian and Fortran together, 2-d float32: (i, j) = 10 i + j stored column by column */
    float col[6] = {0, 10, 1, 11, 2, 12}, c_order[6] = {0, 1, 2, 10, 11, 12};
    unsigned char data[24];
    for (int i = 0; i < 6; i++) {
        uint32_t u;
        memcpy(&u, &col[i], 4);
        for (int b = 0; b < 4; b++) data[4 * i + b] = (unsigned char)(u >> (24 - 8 * b));
    }
    len = make_npy(buf, 1, "{'descr': '>f4', 'fortran_order': True, 'shape': (2, 3), }", data, 24);
    if (CHECK(bn_npy_parse(&a, buf, len, err, sizeof err) == BN_OK)) {
        CHECK(memcmp(a.data, c_order, sizeof c_order) == 0);
        bn_npy_free(&a);
    }
    /* an empty Fortran array is fine too */
    len = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (0, 3), }", data, 0);
    if (CHECK(bn_npy_parse(&a, buf, len, err, sizeof err) == BN_OK)) {
        CHECK(a.count == 0 && a.data != NULL);
        bn_npy_free(&a);
    }
}

static void test_malformed_files(void) {
    static const char good[] = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
    unsigned char buf[4096];
    float six[6] = {0};
    size_t len = make_npy(buf, 1, good, six, sizeof six);

    expect_bad("empty", buf, 0, BN_ERR_FORMAT, "empty");
    expect_bad("truncated magic", buf, 4, BN_ERR_FORMAT, "truncated");
    expect_bad("no version", buf, 7, BN_ERR_FORMAT, "format version");
    expect_bad("truncated length", buf, 9, BN_ERR_FORMAT, "header length field");
    expect_bad("wrong magic", "\x89PNG\r\n\x1a\n0123456789", 18, BN_ERR_FORMAT, "magic");
    expect_bad("text file", "hello, world\n", 13, BN_ERR_FORMAT, "not a .npy file");
    expect_bad("header longer than file", buf, 40, BN_ERR_FORMAT, "header longer than the file");
    expect_bad("data too short", buf, len - 4, BN_ERR_FORMAT,
               "header says 24 bytes of data (shape (2, 3) of float32), file has 20");
    memcpy(buf + len, "xyz", 3);
    expect_bad("data too long", buf, len + 3, BN_ERR_FORMAT, "header says 24 bytes of data");
    expect_bad("data too long", buf, len + 3, BN_ERR_FORMAT, "file has 27");

    unsigned char v4[64];
    memcpy(v4, buf, sizeof v4);
    v4[6] = 4;
    expect_bad("version 4.0", v4, sizeof v4, BN_ERR_UNSUPPORTED, "version 4.0");
    v4[6] = 1, v4[7] = 1;
    expect_bad("version 1.1", v4, sizeof v4, BN_ERR_UNSUPPORTED, "version 1.1");

    expect_bad_header("negative shape", HDR("'<f4'", "(2, -3)"), 0, BN_ERR_FORMAT,
                      "negative size in dimension 1");
    expect_bad_header("overflowing shape", HDR("'<f4'", "(4294967296, 4294967296)"), 0,
                      BN_ERR_TOO_LARGE, "more elements than 64 bits");
    bn_npy empty;
    static unsigned char hbuf[256];
    size_t hn = make_npy(hbuf, 1, HDR("'<f4'", "(4294967296, 4294967296, 0)"), NULL, 0);
    if (CHECK_MSG(bn_npy_parse(&empty, hbuf, hn, err, sizeof err) == BN_OK, "%s", err)) {
        CHECK(empty.count == 0 && empty.nbytes == 0 && empty.dims[0] == 4294967296);
        bn_npy_free(&empty);
    }
    expect_bad_header("overflowing bytes", HDR("'<f8'", "(2305843009213693952,)"), 0,
                      BN_ERR_TOO_LARGE, "too large");
    expect_bad_header("huge size", HDR("'<f4'", "(99999999999999999999,)"), 0, BN_ERR_TOO_LARGE,
                      "does not fit in 64 bits");
    expect_bad_header("lying huge shape", HDR("'<f4'", "(1000000000,)"), 0, BN_ERR_FORMAT,
                      "header says 4000000000 bytes of data");
    expect_bad_header("int dtype", HDR("'<i8'", "(3,)"), 24, BN_ERR_UNSUPPORTED,
                      "'<i8' (signed integer) is not supported");
    expect_bad_header("bool dtype", HDR("'|b1'", "(3,)"), 3, BN_ERR_UNSUPPORTED, "boolean");
    expect_bad_header("float128", HDR("'<f16'", "(3,)"), 48, BN_ERR_UNSUPPORTED,
                      "'<f16' (float128) is not supported: only float16, float32 and float64");
    expect_bad_header("complex", HDR("'<c8'", "(3,)"), 24, BN_ERR_UNSUPPORTED, "complex");
    expect_bad_header("structured", HDR("[('a', '<f4')]", "(3,)"), 12, BN_ERR_UNSUPPORTED,
                      "structured");
    expect_bad_header("no byte order", HDR("'|f4'", "(3,)"), 12, BN_ERR_FORMAT, "no byte order");
    expect_bad_header("nonsense dtype", HDR("'hello'", "(3,)"), 12, BN_ERR_FORMAT,
                      "not a NumPy dtype");
    expect_bad_header("33 dimensions",
                      HDR("'<f4'", "(1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
                                   "1,1,1)"),
                      4, BN_ERR_UNSUPPORTED, "more than 32 dimensions");

    /* bad dicts; F3 is the rest of a good header after 'descr' */
#define F3 "'fortran_order': False, 'shape': (3,)"
    static const struct { const char *what, *header, *msg; } dicts[] = {
        {"no brace", "'descr': '<f4', " F3, "start with '{'"},
        {"unclosed", "{'descr': '<f4', " F3, "expected ',' or '}'"},
        {"missing key", "{'descr': '<f4', 'shape': (3,)}", "'fortran_order' is missing"},
        {"unknown key", "{'descr': '<f4', " F3 ", 'x': 1}", "unexpected key 'x'"},
        {"duplicate key", "{'descr': '<f4', 'descr': '<f4', " F3 "}", "'descr' appears twice"},
        {"number, not tuple", "{'descr': '<f4', 'fortran_order': False, 'shape': (3)}",
         "not a tuple"},
        {"list shape", "{'descr': '<f4', 'fortran_order': False, 'shape': [3]}",
         "must be a tuple"},
        {"float in shape", "{'descr': '<f4', 'fortran_order': False, 'shape': (3.0,)}",
         "expected ',' or ')'"},
        {"fortran 1", "{'descr': '<f4', 'fortran_order': 1, 'shape': (3,)}", "True or False"},
        {"fortran Truely", "{'descr': '<f4', 'fortran_order': Truely, 'shape': (3,)}",
         "True or False"},
        {"unquoted descr", "{'descr': f4, " F3 "}", "quoted dtype"},
        {"unterminated string", "{'descr': '<f4", "unterminated string"},
        {"unseparated", "{'descr': '<f4' " F3 "}", "expected ',' or '}' after a value"},
        {"trailing junk", "{'descr': '<f4', " F3 "} x", "unexpected text after the dict"},
        {"empty header", "", "start with '{'"},
        {"double comma", "{'descr': '<f4',, " F3 "}", "quoted key"},
        {"escape", "{'descr': '<f\\4', " F3 "}", "escape sequences"},
    };
#undef F3
    for (size_t k = 0; k < sizeof dicts / sizeof dicts[0]; k++)
        expect_bad_header(dicts[k].what, dicts[k].header, 12, BN_ERR_FORMAT, dicts[k].msg);

    /* the operating system's errors name the cause */
    bn_npy a;
    CHECK_STATUS(bn_npy_read(&a, in_dir("does-not-exist.npy"), err, sizeof err), BN_ERR_IO);
    CHECK_MSG(strstr(err, strerror(ENOENT)) != NULL, "message: %s", err);
    CHECK_STATUS(bn_npy_read(&a, dir, err, sizeof err), BN_ERR_IO);
    CHECK_MSG(strstr(err, strerror(EISDIR)) != NULL, "message: %s", err);
    /* a small error buffer truncates without overflowing; NULL discards */
    char tiny[8] = "xxxxxxx";
    CHECK_STATUS(bn_npy_parse(&a, buf, 0, tiny, 5), BN_ERR_FORMAT);
    CHECK(strlen(tiny) == 4 && tiny[5] == 'x');
    CHECK_STATUS(bn_npy_parse(&a, buf, 0, NULL, 0), BN_ERR_FORMAT);
    CHECK_STATUS(bn_npy_read(NULL, "x", err, sizeof err), BN_ERR_NULL_POINTER);
    CHECK_MSG(count_entries(dir) == 0, "files left in %s", dir);
}

/* A child process limited to 4 KiB files writes 1 MiB over an existing file: the write must
 * fail with EFBIG and leave the old file and nothing else. */
static void test_write_failure_keeps_old(void) {
    const char *path = in_dir("keep.npy");
    CHECK(put_file(path, "precious", 8));
    fflush(stdout); /* the child must not print what the parent has buffered */
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit rl = {4096, 4096};
        signal(SIGXFSZ, SIG_IGN);
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(3);
        static double big[1 << 17];
        int64_t n = 1 << 17;
        char e[512];
        bn_status st = bn_npy_write(path, BN_FLOAT64, 1, &n, big, e, sizeof e);
        _exit(st == BN_ERR_IO && strstr(e, strerror(EFBIG)) ? 0 : 4);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    size_t len = 0;
    unsigned char *file = slurp(path, &len);
    CHECK(file && len == 8 && memcmp(file, "precious", 8) == 0);
    free(file);
    CHECK_MSG(count_entries(dir) == 1, "%d entries in %s", count_entries(dir), dir);
    remove(path);
}

static void test_write_errors(void) {
    float v[4] = {1, 2, 3, 4};
    int64_t dims[2] = {2, 2};

    /* /dev/full: written in place (it is a device), and the full disk is noticed */
    int dev_before = count_entries("/dev");
    CHECK_STATUS(bn_npy_write("/dev/full", BN_FLOAT32, 2, dims, v, err, sizeof err), BN_ERR_IO);
    CHECK_MSG(strstr(err, strerror(ENOSPC)) != NULL, "message: %s", err);
    struct stat sb;
    CHECK(stat("/dev/full", &sb) == 0 && S_ISCHR(sb.st_mode));
    CHECK(count_entries("/dev") == dev_before);

    /* a directory that does not exist */
    const char *missing = in_dir("no/such/dir/out.npy");
    CHECK_STATUS(bn_npy_write(missing, BN_FLOAT32, 2, dims, v, err, sizeof err), BN_ERR_IO);
    CHECK_MSG(strstr(err, "temporary file") && strstr(err, strerror(ENOENT)), "message: %s", err);
    /* a directory as the output */
    CHECK(mkdir(in_dir("sub"), 0755) == 0);
    CHECK_STATUS(bn_npy_write(in_dir("sub"), BN_FLOAT32, 2, dims, v, err, sizeof err), BN_ERR_IO);
    CHECK_MSG(strstr(err, strerror(EISDIR)) != NULL, "message: %s", err);
    CHECK(count_entries(in_dir("sub")) == 0);
    CHECK_STATUS(bn_npy_write(in_dir("sub/"), BN_FLOAT32, 2, dims, v, err, sizeof err), BN_ERR_IO);
    rmdir(in_dir("sub"));

    /* arguments the writer refuses before touching anything */
    const char *path = in_dir("refused.npy");
    int64_t neg[2] = {2, -1}, huge[2] = {INT64_MAX / 2, 3};
    CHECK_STATUS(bn_npy_write(path, BN_FLOAT32, 2, neg, v, err, sizeof err), BN_ERR_SHAPE);
    CHECK(strstr(err, "negative size -1 in dimension 1") != NULL);
    CHECK_STATUS(bn_npy_write(path, BN_FLOAT32, 2, huge, v, err, sizeof err), BN_ERR_TOO_LARGE);
    CHECK_STATUS(bn_npy_write(path, BN_FLOAT32, 33, dims, v, err, sizeof err), BN_ERR_SHAPE);
    CHECK_STATUS(bn_npy_write(path, BN_FLOAT32, -1, dims, v, err, sizeof err), BN_ERR_SHAPE);
    CHECK_STATUS(bn_npy_write(path, (bn_dtype)7, 2, dims, v, err, sizeof err), BN_ERR_UNSUPPORTED);
    CHECK_STATUS(bn_npy_write(path, BN_BFLOAT16, 2, dims, v, err, sizeof err), BN_ERR_UNSUPPORTED);
    CHECK_STATUS(bn_npy_write(path, BN_FLOAT32, 2, dims, NULL, err, sizeof err),
                 BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_npy_write(NULL, BN_FLOAT32, 2, dims, v, err, sizeof err), BN_ERR_NULL_POINTER);
    CHECK(access(path, F_OK) != 0);
    /* an empty array needs no data pointer, and its other sizes may be anything */
    int64_t empty[3] = {INT64_MAX, 3, 0};
    CHECK_STATUS(bn_npy_write(path, BN_FLOAT64, 3, empty, NULL, err, sizeof err), BN_OK);
    bn_npy a;
    if (CHECK(bn_npy_read(&a, path, err, sizeof err) == BN_OK)) {
        CHECK(a.ndim == 3 && a.dims[0] == INT64_MAX && a.count == 0);
        bn_npy_free(&a);
    }
    remove(path);
    CHECK_MSG(count_entries(dir) == 0, "files left in %s", dir);

    test_write_failure_keeps_old();
}

/* Runs fn in a child process that SIGALRM ends after 10 s, so that a call that waits forever
 * fails the check instead of hanging the tests. Returns fn's value, or -1 if it did not return. */
static int without_waiting(int (*fn)(void)) {
    fflush(stdout); /* the child must not print what the parent has buffered */
    pid_t pid = fork();
    if (pid == 0) {
        alarm(10);
        _exit(fn());
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

static const float out_v[4] = {1, 2, 3, 4};
static const int64_t out_dims[2] = {2, 2};

static int write_to_fifo_without_reader(void) {
    char e[512];
    bn_status st = bn_npy_write(in_dir("fifo"), BN_FLOAT32, 2, out_dims, out_v, e, sizeof e);
    return st == BN_ERR_IO && strstr(e, strerror(ENXIO)) && strstr(e, "no process is reading");
}

static int open_fifo_as_regular(void) {
    char e[512];
    FILE *f = (FILE *)1;
    bn_status st = bn_open_regular(&f, in_dir("fifo"), e, sizeof e);
    return st == BN_ERR_IO && f == NULL && strcmp(e, "not a regular file (a FIFO)") == 0;
}

static int open_fifo_as_stream(void) {
    char e[512];
    bn_npy_stream s;
    bn_status st = bn_npy_stream_open(&s, in_dir("fifo"), e, sizeof e);
    return st == BN_ERR_IO && s.file == NULL && strcmp(e, "not a regular file (a FIFO)") == 0;
}

/* The bytes bn_npy_write writes for out_v, read back from a regular file. */
static unsigned char *expected_output(size_t *len) {
    const char *path = in_dir("expected.npy");
    if (bn_npy_write(path, BN_FLOAT32, 2, out_dims, out_v, err, sizeof err) != BN_OK) return NULL;
    unsigned char *bytes = slurp(path, len);
    remove(path);
    return bytes;
}

static int same_file(const char *path, const unsigned char *want, size_t want_len) {
    size_t len = 0;
    unsigned char *got = slurp(path, &len);
    int same = got && len == want_len && memcmp(got, want, len) == 0;
    free(got);
    return same;
}

/* bn_write_output's rule for each kind of path (through bn_npy_write). */
static void test_output_rule(void) {
    size_t want_len = 0;
    unsigned char *want = expected_output(&want_len);
    if (!CHECK(want != NULL)) return;

    /* a FIFO: no reader is ENXIO at once; with a reader, the bytes go through it */
    CHECK(mkfifo(in_dir("fifo"), 0644) == 0);
    CHECK_MSG(without_waiting(write_to_fifo_without_reader) == 1, "a FIFO without a reader");
    int rd = open(in_dir("fifo"), O_RDONLY | O_NONBLOCK);
    CHECK_STATUS(bn_npy_write(in_dir("fifo"), BN_FLOAT32, 2, out_dims, out_v, err, sizeof err),
                 BN_OK);
    unsigned char got[1024];
    ssize_t n = rd >= 0 ? read(rd, got, sizeof got) : -1;
    CHECK(n > 0 && (size_t)n == want_len && memcmp(got, want, (size_t)n) == 0);
    if (rd >= 0) close(rd);
    struct stat sb;
    CHECK(lstat(in_dir("fifo"), &sb) == 0 && S_ISFIFO(sb.st_mode));
    remove(in_dir("fifo"));

    /* a symbolic link (relative, to another directory): the file it leads to is replaced, with
     * the temporary file beside it, and the link stays; a link to nothing yet makes the file */
    CHECK(mkdir(in_dir("sub"), 0755) == 0);
    CHECK(put_file(in_dir("sub/t.npy"), "old", 3));
    CHECK(symlink("sub/t.npy", in_dir("link")) == 0);
    CHECK_STATUS(bn_npy_write(in_dir("link"), BN_FLOAT32, 2, out_dims, out_v, err, sizeof err),
                 BN_OK);
    CHECK(same_file(in_dir("sub/t.npy"), want, want_len));
    char text[64] = {0};
    CHECK(readlink(in_dir("link"), text, sizeof text - 1) == 9 && strcmp(text, "sub/t.npy") == 0);
    CHECK(count_entries(in_dir("sub")) == 1);
    CHECK(symlink("sub/new.npy", in_dir("dangling")) == 0);
    CHECK_STATUS(bn_npy_write(in_dir("dangling"), BN_FLOAT32, 2, out_dims, out_v, err, sizeof err),
                 BN_OK);
    CHECK(same_file(in_dir("sub/new.npy"), want, want_len));
    CHECK(lstat(in_dir("dangling"), &sb) == 0 && S_ISLNK(sb.st_mode));
    /* a link to a directory is the directory */
    CHECK(symlink("sub", in_dir("to-dir")) == 0);
    CHECK_STATUS(bn_npy_write(in_dir("to-dir"), BN_FLOAT32, 2, out_dims, out_v, err, sizeof err),
                 BN_ERR_IO);
    CHECK_MSG(strstr(err, strerror(EISDIR)) != NULL, "message: %s", err);
    remove(in_dir("to-dir"));
    remove(in_dir("dangling"));
    remove(in_dir("link"));
    remove(in_dir("sub/new.npy"));

    /* a replaced file keeps its mode */
    CHECK(chmod(in_dir("sub/t.npy"), 0600) == 0);
    CHECK_STATUS(bn_npy_write(in_dir("sub/t.npy"), BN_FLOAT32, 2, out_dims, out_v, err, sizeof err),
                 BN_OK);
    CHECK(stat(in_dir("sub/t.npy"), &sb) == 0 && (sb.st_mode & 07777) == 0600);
    remove(in_dir("sub/t.npy"));
    rmdir(in_dir("sub"));

    /* a name of NAME_MAX bytes: the temporary name keeps what fits */
    char name[256];
    memset(name, 'n', 255);
    name[255] = '\0';
    CHECK_STATUS(bn_npy_write(in_dir(name), BN_FLOAT32, 2, out_dims, out_v, err, sizeof err),
                 BN_OK);
    CHECK(same_file(in_dir(name), want, want_len));
    CHECK(count_entries(dir) == 1);

    /* a temporary file left by a killed write is found for its output, and only for it, and
     * left alone by the next write */
    char stale[300], found[512] = {0};
    snprintf(stale, sizeof stale, ".%.237s.bnorm-tmp.Ab3dE9", name);
    CHECK(put_file(in_dir(stale), "half", 4));
    char stale_path[512];
    snprintf(stale_path, sizeof stale_path, "%s", in_dir(stale));
    CHECK(bn_find_stale_temporary(in_dir(name), found, sizeof found) == 1);
    CHECK_MSG(strcmp(found, stale_path) == 0, "found %s", found);
    CHECK(bn_find_stale_temporary(in_dir("other.npy"), found, sizeof found) == 0);
    CHECK(put_file(in_dir(".keep.npy.bnorm-tmp.Ab3d"), "short", 5));  /* not 6 characters */
    CHECK(put_file(in_dir(".keep.npy.bnorm-tmp.Ab3d-9"), "other", 5)); /* not letters, digits */
    CHECK(bn_find_stale_temporary(in_dir("keep.npy"), NULL, 0) == 0);
    CHECK(put_file(in_dir(".keep.npy.bnorm-tmp.zZ09aQ"), "half", 4));
    CHECK(bn_find_stale_temporary(in_dir("keep.npy"), NULL, 0) == 1);
    CHECK_STATUS(bn_npy_write(in_dir("keep.npy"), BN_FLOAT32, 2, out_dims, out_v, err, sizeof err),
                 BN_OK);
    CHECK(same_file(in_dir(".keep.npy.bnorm-tmp.zZ09aQ"), (const unsigned char *)"half", 4));
    remove(in_dir(".keep.npy.bnorm-tmp.zZ09aQ"));
    remove(in_dir(".keep.npy.bnorm-tmp.Ab3d"));
    remove(in_dir(".keep.npy.bnorm-tmp.Ab3d-9"));
    remove(in_dir("keep.npy"));
    remove(stale_path);
    remove(in_dir(name));

    /* an empty name */
    CHECK_STATUS(bn_npy_write("", BN_FLOAT32, 2, out_dims, out_v, err, sizeof err), BN_ERR_IO);
    CHECK_MSG(strstr(err, "empty file name") != NULL, "message: %s", err);
    CHECK(bn_find_stale_temporary("", NULL, 0) == 0);
    free(want);
    CHECK_MSG(count_entries(dir) == 0, "files left in %s", dir);
}

/* Inputs that are not plain files: readers that need a regular file refuse a FIFO without
 * waiting for a writer, and a device; a /proc file says 0 bytes and has some: it is read for what
 * it is, not taken for an empty file. */
static void test_input_kinds(void) {
    CHECK(mkfifo(in_dir("fifo"), 0644) == 0);
    CHECK_MSG(without_waiting(open_fifo_as_regular) == 1, "bn_open_regular on a FIFO");
    CHECK_MSG(without_waiting(open_fifo_as_stream) == 1, "bn_npy_stream_open on a FIFO");
    remove(in_dir("fifo"));
    bn_npy a;
    if (!CHECK(access("/proc/cpuinfo", R_OK) == 0)) return;
    CHECK_STATUS(bn_npy_read(&a, "/proc/cpuinfo", err, sizeof err), BN_ERR_FORMAT);
    CHECK_MSG(strstr(err, "not a .npy file: it does not start with the magic") == err,
              "message: %s", err);
    bn_npy_stream s;
    CHECK_STATUS(bn_npy_stream_open(&s, "/proc/cpuinfo", err, sizeof err), BN_ERR_FORMAT);
    CHECK_MSG(strstr(err, "not a .npy file") == err, "message: %s", err);
    CHECK_STATUS(bn_npy_stream_open(&s, "/dev/null", err, sizeof err), BN_ERR_IO);
    CHECK_MSG(strcmp(err, "not a regular file (a character device)") == 0, "message: %s", err);
}

static void test_shape_string(void) {
    char buf[64];
    int64_t d[3] = {2, 3, 40};
    CHECK(strcmp(bn_npy_shape_string(buf, sizeof buf, 0, d), "()") == 0);
    CHECK(strcmp(bn_npy_shape_string(buf, sizeof buf, 1, d), "(2,)") == 0);
    CHECK(strcmp(bn_npy_shape_string(buf, sizeof buf, 3, d), "(2, 3, 40)") == 0);
    CHECK(strcmp(bn_npy_shape_string(buf, 6, 3, d), "(2, 3") == 0);
}

BN_SUITE(suite_npy) {
    snprintf(dir, sizeof dir, "/tmp/bnorm_npy_XXXXXX");
    if (!CHECK_MSG(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno))) return;
    test_round_trips();
    test_header_forms();
    test_big_endian();
    test_fortran_order();
    test_malformed_files();
    test_write_errors();
    test_output_rule();
    test_input_kinds();
    test_shape_string();
    CHECK_MSG(rmdir(dir) == 0, "%s not empty at the end: %s", dir, strerror(errno));
}
