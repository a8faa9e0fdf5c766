/* test_npy_stream.c - reading .npy files in pieces (bn_npy_stream_*): any piece of the data in
 * any order, either byte order; files that cannot be read in pieces are refused at open. */
#define _POSIX_C_SOURCE 200809L

#include "check.h"
#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A version 1.0 .npy file with the given header dict and data bytes. */
static void write_raw(const char *path, const char *dict, const void *data, size_t nbytes) {
    char header[256];
    size_t len = strlen(dict), total = (10 + len + 1 + 63) / 64 * 64;
    memset(header, ' ', sizeof header);
    memcpy(header, "\x93NUMPY\x01\x00", 8);
    header[8] = (char)((total - 10) & 0xff);
    header[9] = (char)((total - 10) >> 8);
    memcpy(header + 10, dict, len);
    header[total - 1] = '\n';
    FILE *f = fopen(path, "wb");
    fwrite(header, 1, total, f);
    fwrite(data, 1, nbytes, f);
    fclose(f);
}

BN_SUITE(suite_npy_stream) {
    char dir[] = "/tmp/bnorm_stream_XXXXXX", path[128], err[256];
    if (!CHECK(mkdtemp(dir) != NULL)) return;
    /* a (5, 3, 4) float64 array: pieces in any order, seeks back and forth */
    snprintf(path, sizeof path, "%s/a.npy", dir);
    double v[60];
    for (int i = 0; i < 60; i++) v[i] = i * 0.5 - 3;
    const int64_t dims[3] = {5, 3, 4};
    CHECK_STATUS(bn_npy_write(path, BN_FLOAT64, 3, dims, v, err, sizeof err), BN_OK);
    bn_npy_stream s;
    CHECK_STATUS(bn_npy_stream_open(&s, path, err, sizeof err), BN_OK);
    CHECK(s.dtype == BN_FLOAT64 && s.ndim == 3 && s.dims[0] == 5 && s.dims[2] == 4 && s.count == 60);
    double piece[60];
    CHECK_STATUS(bn_npy_stream_read(&s, piece, 24, 12, err, sizeof err), BN_OK);
    CHECK(memcmp(piece, v + 24, 12 * sizeof(double)) == 0);
    CHECK_STATUS(bn_npy_stream_read(&s, piece, 36, 24, err, sizeof err), BN_OK);
    CHECK(memcmp(piece, v + 36, 24 * sizeof(double)) == 0);
    CHECK_STATUS(bn_npy_stream_read(&s, piece, 0, 12, err, sizeof err), BN_OK);
    CHECK(memcmp(piece, v, 12 * sizeof(double)) == 0);
    CHECK_STATUS(bn_npy_stream_read(&s, piece, 60, 0, err, sizeof err), BN_OK);
    CHECK_STATUS(bn_npy_stream_read(&s, piece, 50, 11, err, sizeof err), BN_ERR_SHAPE);
    CHECK_STATUS(bn_npy_stream_read(&s, piece, -1, 2, err, sizeof err), BN_ERR_SHAPE);
    bn_npy_stream_close(&s);
    CHECK(s.file == NULL);
    bn_npy_stream_close(&s); /* twice is fine */

    /* big-endian float32: values come back in the machine's order */
    snprintf(path, sizeof path, "%s/be.npy", dir);
    unsigned char be[16];
    float want[4] = {1.5f, -2.25f, 1e-3f, 7.0f};
    for (int i = 0; i < 4; i++) {
        unsigned char b[4];
        memcpy(b, &want[i], 4);
        for (int k = 0; k < 4; k++) be[4 * i + k] = b[3 - k]; /* little-endian host */
    }
    write_raw(path, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", be, 16);
    CHECK_STATUS(bn_npy_stream_open(&s, path, err, sizeof err), BN_OK);
    float got[4];
    CHECK_STATUS(bn_npy_stream_read(&s, got, 1, 3, err, sizeof err), BN_OK);
    CHECK(got[0] == want[1] && got[1] == want[2] && got[2] == want[3]);
    bn_npy_stream_close(&s);

    /* refused at open: Fortran order, a data size that does not match, not a .npy file, a
     * directory, a missing file; nothing stays open */
    write_raw(path, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", be, 16);
    CHECK_STATUS(bn_npy_stream_open(&s, path, err, sizeof err), BN_ERR_UNSUPPORTED);
    CHECK(strstr(err, "Fortran") != NULL && s.file == NULL);
    write_raw(path, "{'descr': '<f4', 'fortran_order': True, 'shape': (4,), }", be, 16);
    CHECK_STATUS(bn_npy_stream_open(&s, path, err, sizeof err), BN_OK); /* 1-d: same order */
    bn_npy_stream_close(&s);
    write_raw(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", be, 16);
    CHECK_STATUS(bn_npy_stream_open(&s, path, err, sizeof err), BN_ERR_FORMAT);
    CHECK(strstr(err, "header says") != NULL);
    FILE *f = fopen(path, "wb");
    fputs("hello", f);
    fclose(f);
    CHECK_STATUS(bn_npy_stream_open(&s, path, err, sizeof err), BN_ERR_FORMAT);
    CHECK_STATUS(bn_npy_stream_open(&s, dir, err, sizeof err), BN_ERR_IO);
    snprintf(path, sizeof path, "%s/missing.npy", dir);
    CHECK_STATUS(bn_npy_stream_open(&s, path, err, sizeof err), BN_ERR_IO);
    CHECK_STATUS(bn_npy_stream_open(NULL, path, err, sizeof err), BN_ERR_NULL_POINTER);
    CHECK_STATUS(bn_npy_stream_read(&s, got, 0, 1, err, sizeof err), BN_ERR_NULL_POINTER);

    snprintf(path, sizeof path, "%s/a.npy", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/be.npy", dir);
    unlink(path);
    rmdir(dir);
}
