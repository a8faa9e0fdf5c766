/* fuzz_state.c - libFuzzer target for libbnorm_state (include/bnorm_state.h): the fuzzed bytes
 * are written to a file, opened, and a few prefixes' layers taken out of it. Invariants: a
 * failure holds nothing (the file pointer NULL, the state zeroed) and says why in one line; a
 * layer taken has C >= 1, a float dtype, complete pairs, arrays whose every element can be read
 * (ASan checks), a count >= 0; written back under its prefix and read again, it is the same
 * bits. */
#define _POSIX_C_SOURCE 200809L

#include "bnorm_state.h"
#include "fuzz_files.h"

#include <string.h>

static volatile unsigned char sink;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_files_init("fuzz_state");
    return 0;
}

static void check_message(const char *err, size_t len) {
    size_t n = strnlen(err, len);
    if (n == 0 || n == len || memchr(err, '\n', n)) die("message");
}

static size_t array_bytes(const bn_state *s) {
    return (size_t)s->c * (s->dtype == BN_FLOAT64 ? 8 : 4);
}

static void check_state(const bn_state *s) {
    if (s->c < 1) die("c");
    if (s->dtype != BN_FLOAT32 && s->dtype != BN_FLOAT64) die("dtype");
    if (!s->weight != !s->bias || !s->running_mean != !s->running_var) die("pairs");
    if (!s->weight && !s->running_mean) die("no array");
    if (s->has_num_batches_tracked && s->num_batches_tracked < 0) die("count");
    const unsigned char *arrays[4] = {s->weight, s->bias, s->running_mean, s->running_var};
    for (int k = 0; k < 4; k++)
        for (size_t b = 0; arrays[k] && b < array_bytes(s); b++) sink = arrays[k][b];
}

static int same(const bn_state *a, const bn_state *b) {
    if (a->c != b->c || a->dtype != b->dtype ||
        !a->has_num_batches_tracked != !b->has_num_batches_tracked ||
        (a->has_num_batches_tracked && a->num_batches_tracked != b->num_batches_tracked))
        return 0;
    const void *x[4] = {a->weight, a->bias, a->running_mean, a->running_var};
    const void *y[4] = {b->weight, b->bias, b->running_mean, b->running_var};
    for (int k = 0; k < 4; k++)
        if (!x[k] != !y[k] || (x[k] && memcmp(x[k], y[k], array_bytes(a)) != 0)) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, size, fp) != size || fclose(fp) != 0) die("cannot write the file");
    char err[512];
    memset(err, 0, sizeof err);
    bn_state_file *file = (bn_state_file *)err; /* not NULL: a failure must set it so */
    bn_status st = bn_state_open(&file, path, err, sizeof err);
    if (st != BN_OK) {
        if (st != BN_ERR_FORMAT && st != BN_ERR_UNSUPPORTED && st != BN_ERR_NO_MEMORY)
            die("open: unexpected status");
        if (file) die("open: a file held after a failure");
        check_message(err, sizeof err);
        return 0;
    }
    static const char *const prefixes[] = {"", "bn.", "layer1.0.bn1.", "a"};
    for (size_t k = 0; k < sizeof prefixes / sizeof prefixes[0]; k++) {
        static const bn_state zero;
        bn_state s;
        memset(&s, 0x5A, sizeof s);
        err[0] = '\0';
        st = bn_state_get(&s, file, prefixes[k], err, sizeof err);
        if (st != BN_OK) {
            if (st != BN_ERR_FORMAT && st != BN_ERR_UNSUPPORTED && st != BN_ERR_NO_MEMORY)
                die("get: unexpected status");
            if (memcmp(&s, &zero, sizeof s) != 0) die("get: a state held after a failure");
            check_message(err, sizeof err);
            continue;
        }
        check_state(&s);
        if (bn_state_write(out_path, prefixes[k], &s, err, sizeof err) != BN_OK)
            die("cannot write a state read");
        bn_state back;
        if (bn_state_read(&back, out_path, prefixes[k], err, sizeof err) != BN_OK)
            die("cannot read back");
        if (!same(&s, &back)) die("round trip");
        bn_state_free(&back);
        bn_state_free(&s);
    }
    bn_state_close(file);
    return 0;
}
