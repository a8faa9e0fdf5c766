/* fuzz_safetensors.c - libFuzzer target for the safetensors reader of `bnorm fit` and `bnorm
 * apply` (io/safetensors.c): the fuzzed bytes are written to a file and read. Invariants: on
 * success every tensor has a known dtype, 0 .. CLI_ST_MAX_NDIM dims whose product is its count,
 * data whose every element can be read (ASan checks), a name that finds it, and the file written
 * back reads to the same tensors; on failure nothing is held and the message is one line. */
#define _POSIX_C_SOURCE 200809L

#include "fuzz_files.h"
#include "safetensors.h"

#include <string.h>

static volatile double sink;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_files_init("fuzz_safetensors");
    return 0;
}

static void check_tensor(const cli_st_file *f, const cli_st_tensor *t) {
    if (t->dtype != CLI_ST_F32 && t->dtype != CLI_ST_F64 && t->dtype != CLI_ST_I64) die("dtype");
    if (t->ndim < 0 || t->ndim > CLI_ST_MAX_NDIM) die("ndim");
    int64_t count = 1;
    for (int k = 0; k < t->ndim; k++) {
        if (t->dims[k] < 0) die("negative size");
        if (t->dims[k] && count > INT64_MAX / t->dims[k]) die("count overflows");
        count *= t->dims[k];
    }
    if (count != t->count) die("count is not the product of dims");
    if (!t->name || cli_safetensors_find(f, t->name) != t) die("find by name");
    if (count && !t->data) die("no data");
    for (int64_t k = 0; k < count; k++) sink = cli_safetensors_value(t, k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, size, fp) != size || fclose(fp) != 0) die("cannot write the file");
    char err[512];
    memset(err, 0, sizeof err);
    cli_st_file f;
    memset(&f, 0x5A, sizeof f);
    bn_status st = cli_safetensors_read(&f, path, err, sizeof err);
    if (st != BN_OK) {
        static const cli_st_file zero;
        if (st != BN_ERR_FORMAT && st != BN_ERR_UNSUPPORTED && st != BN_ERR_NO_MEMORY)
            die("unexpected status");
        if (memcmp(&f, &zero, sizeof f) != 0) die("something held after a failure");
        size_t n = strnlen(err, sizeof err);
        if (n == 0 || n == sizeof err || memchr(err, '\n', n)) die("message");
        return 0;
    }
    if (f.count < 0) die("count");
    for (int k = 0; k < f.count; k++) check_tensor(&f, &f.tensors[k]);
    /* written back (names the writer accepts) and read again: the same tensors */
    bn_status wst = cli_safetensors_write(out_path, f.tensors, f.count, NULL, NULL, err, sizeof err);
    if (wst == BN_OK) {
        cli_st_file g;
        if (cli_safetensors_read(&g, out_path, err, sizeof err) != BN_OK) die("cannot read back");
        if (g.count != f.count) die("round trip: count");
        for (int k = 0; k < f.count; k++) {
            const cli_st_tensor *a = &f.tensors[k], *b = cli_safetensors_find(&g, a->name);
            if (!b || b->dtype != a->dtype || b->ndim != a->ndim || b->count != a->count ||
                memcmp(b->dims, a->dims, sizeof a->dims[0] * (size_t)a->ndim) != 0)
                die("round trip: tensor");
            size_t bytes = (size_t)a->count * (a->dtype == CLI_ST_F32 ? 4 : 8);
            if (bytes && memcmp(a->data, b->data, bytes) != 0) die("round trip: data");
        }
        cli_safetensors_free(&g);
    } else if (wst != BN_ERR_ARGUMENT) {
        die("write back failed");
    }
    cli_safetensors_free(&f);
    return 0;
}
