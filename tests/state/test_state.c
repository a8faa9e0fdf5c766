/* test_state.c - libbnorm_state (include/bnorm_state.h): round trips of every kind of layer in
 * both dtypes, many layers in one file and the prefix rules, the checkpoint torch wrote
 * (tests/state/torch_layers.safetensors, made by make_state_golden.py: its layers read by prefix
 * among other tensors and run by bn_forward_eval against torch's eval outputs), and one check per
 * way a read or a write can fail, with its promise: nothing held, nothing written, one line
 * saying why. Files live in a fresh directory under /tmp; the checkpoint is found relative to
 * the working directory (the repository's root), or where BNORM_STATE_GOLDEN says. */
#define _XOPEN_SOURCE 700

#include "bnorm.h"
#include "bnorm_state.h"
#include "check.h"
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GOLDEN_DEFAULT_PATH "tests/state/torch_layers.safetensors"

static char dir[64];
static char err[512];

/* dir/name, in one of a few static buffers (two paths may be in use at once). */
static const char *in_dir(const char *name) {
    static char paths[4][512];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

static int put_file(const char *path, const void *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(buf, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}

/* A safetensors file of the given header text (no padding) and data bytes. */
static int put_safetensors(const char *path, const char *json, const void *data, size_t len) {
    const size_t hlen = strlen(json);
    unsigned char *buf = malloc(8 + hlen + len + 1);
    if (!buf) return 0;
    for (int b = 0; b < 8; b++) buf[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
    memcpy(buf + 8, json, hlen);
    if (len) memcpy(buf + 8 + hlen, data, len);
    int ok = put_file(path, buf, 8 + hlen + len);
    free(buf);
    return ok;
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

static int count_entries(const char *path) {
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* A message is one line, not empty, that fits the buffer. */
static int one_line(const char *msg) {
    size_t n = strnlen(msg, sizeof err);
    return n > 0 && n < sizeof err && !memchr(msg, '\n', n);
}

static int contains(const unsigned char *bytes, size_t len, const char *needle) {
    const size_t n = strlen(needle);
    for (size_t k = 0; k + n <= len; k++)
        if (memcmp(bytes + k, needle, n) == 0) return 1;
    return 0;
}

static int all_zero(const void *p, size_t len) {
    const unsigned char *b = p;
    for (size_t k = 0; k < len; k++)
        if (b[k]) return 0;
    return 1;
}

static size_t dtype_size(bn_dtype dtype) { return dtype == BN_FLOAT64 ? 8 : 4; }

/* ---------------------------------------------------------------------------------------------
 * Round trips.
 */

/* A state of c channels in dtype, with the pairs and the count asked for; values that tell the
 * arrays apart, NaN, infinity and -0.0 among them. Free with free_made. */
static bn_state make_state(int64_t c, bn_dtype dtype, int affine, int running, int counted,
                           int salt) {
    bn_state s = {.c = c, .dtype = dtype};
    void **arrays[4] = {&s.weight, &s.bias, &s.running_mean, &s.running_var};
    for (int k = 0; k < 4; k++) {
        if (k < 2 ? !affine : !running) continue;
        *arrays[k] = malloc((size_t)c * dtype_size(dtype));
        for (int64_t i = 0; i < c; i++) {
            double v = salt * 100.0 + k * 10.0 + (double)i / 3.0;
            if (i == 1) v = k == 0 ? NAN : k == 1 ? -INFINITY : -0.0;
            if (dtype == BN_FLOAT64) ((double *)*arrays[k])[i] = v;
            else ((float *)*arrays[k])[i] = (float)v;
        }
    }
    s.has_num_batches_tracked = counted;
    s.num_batches_tracked = counted ? 1000000007LL * 1000000007LL + salt : 0; /* past 2^53 */
    return s;
}

static void free_made(bn_state *s) {
    free(s->weight);
    free(s->bias);
    free(s->running_mean);
    free(s->running_var);
}

/* got holds exactly what want holds, bit for bit. */
static int same_state(const bn_state *got, const bn_state *want) {
    if (got->c != want->c || got->dtype != want->dtype ||
        !got->has_num_batches_tracked != !want->has_num_batches_tracked ||
        (want->has_num_batches_tracked &&
         got->num_batches_tracked != want->num_batches_tracked))
        return 0;
    const void *g[4] = {got->weight, got->bias, got->running_mean, got->running_var};
    const void *w[4] = {want->weight, want->bias, want->running_mean, want->running_var};
    for (int k = 0; k < 4; k++) {
        if (!g[k] != !w[k]) return 0;
        if (w[k] && memcmp(g[k], w[k], (size_t)want->c * dtype_size(want->dtype)) != 0) return 0;
    }
    return 1;
}

/* Every kind of layer (affine or not, running statistics or not, counted or not), in F32 and
 * F64: written, read back bit for bit, and the file as torch writes one: state_dict order,
 * float tensors of shape (C), num_batches_tracked an I64 of shape (), {"format": "pt"}. */
static void test_every_kind_round_trips(void) {
    const char *path = in_dir("layer.safetensors");
    for (int dt = 0; dt < 2; dt++)
        for (int kind = 0; kind < 8; kind++) {
            const int affine = kind & 1, running = kind & 2, counted = kind & 4;
            if (!affine && !running) continue;
            const bn_dtype dtype = dt ? BN_FLOAT64 : BN_FLOAT32;
            bn_state want = make_state(5, dtype, affine, running, counted, kind);
            CHECK_STATUS(bn_state_write(path, "layer1.0.bn1.", &want, err, sizeof err), BN_OK);
            bn_state got;
            memset(&got, 0x5A, sizeof got);
            CHECK_STATUS(bn_state_read(&got, path, "layer1.0.bn1.", err, sizeof err), BN_OK);
            CHECK_MSG(same_state(&got, &want), "dtype %d kind %d: not read back as written", dt,
                      kind);
            bn_state_free(&got);
            CHECK(all_zero(&got, sizeof got));

            cli_st_file f;
            CHECK_STATUS(cli_safetensors_read(&f, path, err, sizeof err), BN_OK);
            static const char *const names[5] = {"weight", "bias", "running_mean",
                                                  "running_var", "num_batches_tracked"};
            const int present[5] = {affine, affine, running, running, counted};
            int at = 0;
            for (int k = 0; k < 5; k++) {
                if (!present[k]) continue;
                char key[64];
                snprintf(key, sizeof key, "layer1.0.bn1.%s", names[k]);
                const cli_st_tensor *t = at < f.count ? &f.tensors[at] : NULL;
                CHECK_MSG(t && strcmp(t->name, key) == 0, "tensor %d is not %s", at, key);
                if (t && k < 4)
                    CHECK(t->dtype == (dt ? CLI_ST_F64 : CLI_ST_F32) && t->ndim == 1 &&
                          t->dims[0] == 5);
                if (t && k == 4) CHECK(t->dtype == CLI_ST_I64 && t->ndim == 0 && t->count == 1);
                at++;
            }
            CHECK(f.count == at);
            cli_safetensors_free(&f);
            size_t len;
            unsigned char *bytes = slurp(path, &len);
            CHECK(bytes && len > 8 && (bytes[0] | bytes[1] << 8) % 8 == 0 &&
                  contains(bytes, len, "\"__metadata__\":{\"format\":\"pt\"}"));
            free(bytes);
            free_made(&want);
        }
    remove(path);
}

/* Many layers in one file, one read of it for all; prefixes with and without their '.', and
 * none; two layers whose keys would be the same are refused before anything is written. */
static void test_layers_in_one_file(void) {
    const char *path = in_dir("model.safetensors");
    bn_state layers[4] = {make_state(3, BN_FLOAT32, 1, 1, 1, 1),
                          make_state(7, BN_FLOAT32, 0, 1, 1, 2),
                          make_state(2, BN_FLOAT64, 1, 0, 0, 3),
                          make_state(4, BN_FLOAT32, 1, 1, 0, 4)};
    const char *prefixes[4] = {"layer1.0.bn1.", "layer1.0.bn10", NULL, "."};
    CHECK_STATUS(bn_state_write_layers(path, 4, prefixes, layers, err, sizeof err), BN_OK);
    bn_state_file *file = NULL;
    CHECK_STATUS(bn_state_open(&file, path, err, sizeof err), BN_OK);
    const struct { const char *prefix; int layer; } finds[] = {
        {"layer1.0.bn1.", 0}, {"layer1.0.bn1", 0}, {"layer1.0.bn10.", 1}, {"layer1.0.bn10", 1},
        {NULL, 2}, {"", 2}, {".", 3}};
    for (size_t k = 0; k < sizeof finds / sizeof finds[0]; k++) {
        bn_state got;
        CHECK_STATUS(bn_state_get(&got, file, finds[k].prefix, err, sizeof err), BN_OK);
        CHECK_MSG(same_state(&got, &layers[finds[k].layer]), "prefix \"%s\"",
                  finds[k].prefix ? finds[k].prefix : "(NULL)");
        bn_state_free(&got);
    }
    /* keys match exactly: no layer under "layer1.0.bn", "layer1.0", "layer1.0.bn1.weight." */
    const char *absent[] = {"layer1.0.bn", "layer1.0", "layer1.0.bn1.weight", "ayer1.0.bn1."};
    for (size_t k = 0; k < sizeof absent / sizeof absent[0]; k++) {
        bn_state got;
        memset(&got, 0x5A, sizeof got);
        CHECK_STATUS(bn_state_get(&got, file, absent[k], err, sizeof err), BN_ERR_FORMAT);
        CHECK(all_zero(&got, sizeof got) && one_line(err) && strstr(err, "no batch norm state"));
    }
    bn_state_close(file);

    /* "bn" and "bn." name the same keys; "" and "." do not */
    size_t before_len;
    unsigned char *before = slurp(path, &before_len);
    const char *same[2] = {"bn", "bn."};
    err[0] = '\0';
    CHECK_STATUS(bn_state_write_layers(path, 2, same, layers, err, sizeof err), BN_ERR_ARGUMENT);
    CHECK(one_line(err) && strstr(err, "two layers would write \"bn."));
    const char *empty[2] = {"", NULL};
    CHECK_STATUS(bn_state_write_layers(path, 2, empty, layers, err, sizeof err),
                 BN_ERR_ARGUMENT);
    size_t after_len;
    unsigned char *after = slurp(path, &after_len);
    CHECK(before && after && before_len == after_len && memcmp(before, after, after_len) == 0);
    free(before);
    free(after);
    CHECK(count_entries(dir) == 1);
    for (int k = 0; k < 4; k++) free_made(&layers[k]);
    remove(path);
}

/* ---------------------------------------------------------------------------------------------
 * The checkpoint torch wrote.
 */

/* Worst |y - want| / max(1, |want|) over n values (NaN when any is NaN: tu_worst's rule). */
static double worst_rel(const void *y, const void *want, int64_t n, bn_dtype dtype,
                        int want_f64) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double a = dtype == BN_FLOAT64 ? ((const double *)y)[i] : ((const float *)y)[i];
        double b = want_f64 ? ((const double *)want)[i] : ((const float *)want)[i];
        double e = fabs(a - b) / fmax(1.0, fabs(b));
        if (!(e <= worst)) worst = e; /* takes a NaN, and keeps it */
        if (isnan(worst)) break;
    }
    return worst;
}

/* An aligned copy of a tensor's data (the file's may be unaligned); NULL if it is absent. */
static void *copy_of(const cli_st_file *f, const char *name, size_t *bytes) {
    const cli_st_tensor *t = cli_safetensors_find(f, name);
    if (!t) return NULL;
    *bytes = (size_t)t->count * (t->dtype == CLI_ST_F32 ? 4 : 8);
    void *p = malloc(*bytes ? *bytes : 1);
    if (p) memcpy(p, t->data, *bytes);
    return p;
}

/* One layer P of the checkpoint: read by prefix, run by bn_forward_eval on golden.P.x, compared
 * with torch's eval output golden.P.y and with the float64 run golden.P.y64. */
static void check_torch_layer(const bn_state_file *file, const cli_st_file *f, const char *name,
                              int64_t c, bn_dtype dtype, int affine) {
    char prefix[64], key[96];
    snprintf(prefix, sizeof prefix, "%s.", name);
    bn_state bn;
    if (!CHECK_MSG(bn_state_get(&bn, file, name, err, sizeof err) == BN_OK, "%s: %s", name, err))
        return;
    CHECK_MSG(bn.c == c && bn.dtype == dtype && !bn.weight == !affine && bn.running_mean &&
                  bn.running_var && bn.has_num_batches_tracked && bn.num_batches_tracked == 5,
              "%s: c %lld dtype %d", name, (long long)bn.c, (int)bn.dtype);
    /* the very bytes of the file's tensors */
    static const char *const names[4] = {"weight", "bias", "running_mean", "running_var"};
    void *arrays[4] = {bn.weight, bn.bias, bn.running_mean, bn.running_var};
    for (int k = 0; k < 4; k++) {
        snprintf(key, sizeof key, "%s%s", prefix, names[k]);
        const cli_st_tensor *t = cli_safetensors_find(f, key);
        CHECK(!t == !arrays[k]);
        if (t && arrays[k]) CHECK(memcmp(arrays[k], t->data, (size_t)c * dtype_size(dtype)) == 0);
    }
    size_t xbytes = 0, ybytes = 0, y64bytes = 0;
    snprintf(key, sizeof key, "golden.%sx", prefix);
    void *x = copy_of(f, key, &xbytes);
    snprintf(key, sizeof key, "golden.%sy", prefix);
    void *want = copy_of(f, key, &ybytes);
    snprintf(key, sizeof key, "golden.%sy64", prefix);
    void *want64 = copy_of(f, key, &y64bytes);
    const int64_t m = (int64_t)(xbytes / dtype_size(dtype));
    void *y = malloc(xbytes);
    bn_desc desc;
    const int64_t dims[4] = {2, c, 4, 4};
    if (CHECK(x && want && want64 && y && ybytes == xbytes && m == 2 * c * 16) &&
        CHECK(bn_desc_from_dims(&desc, 4, dims, dtype, BN_CHANNELS_FIRST) == BN_OK)) {
        CHECK_STATUS(bn_forward_eval(y, x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                     &desc, 1e-5),
                     BN_OK);
        /* torch's float32 eval is x * a + b, a few roundings off the float64 result */
        const double tol_torch = dtype == BN_FLOAT64 ? 1e-13 : 2e-6;
        const double tol_f64 = dtype == BN_FLOAT64 ? 1e-13 : 1e-6;
        double e = worst_rel(y, want, m, dtype, dtype == BN_FLOAT64);
        CHECK_MSG(e <= tol_torch, "%s: %.3g from torch's eval output", name, e);
        e = worst_rel(y, want64, m, dtype, 1);
        CHECK_MSG(e <= tol_f64, "%s: %.3g from the float64 run", name, e);
    }
    free(x);
    free(y);
    free(want);
    free(want64);
    bn_state_free(&bn);
}

BN_SUITE(suite_state_torch) {
    const char *path = getenv("BNORM_STATE_GOLDEN");
    if (!path) path = GOLDEN_DEFAULT_PATH;
    bn_state_file *file = NULL;
    /* the file holds BOOL, U8, I32, F16 and BF16 tensors too, which the reader steps over */
    if (!CHECK_MSG(bn_state_open(&file, path, err, sizeof err) == BN_OK, "%s: %s", path, err))
        return;
    cli_st_file f;
    if (!CHECK_MSG(cli_safetensors_read_any(&f, path, err, sizeof err) == BN_OK, "%s", err)) {
        bn_state_close(file);
        return;
    }
    check_torch_layer(file, &f, "bn", 4, BN_FLOAT32, 1);
    check_torch_layer(file, &f, "layer1.0.bn1", 6, BN_FLOAT32, 1);
    check_torch_layer(file, &f, "layer1.0.bn2", 6, BN_FLOAT32, 0);
    check_torch_layer(file, &f, "double.bn", 4, BN_FLOAT64, 1);

    /* track_running_stats=False: weight and bias only; "layer1.0.bn1" did not find it */
    bn_state bn;
    CHECK_STATUS(bn_state_get(&bn, file, "layer1.0.bn10.", err, sizeof err), BN_OK);
    CHECK(bn.c == 6 && bn.weight && bn.bias && !bn.running_mean && !bn.running_var &&
          !bn.has_num_batches_tracked);
    bn_state_free(&bn);
    /* a float16 layer (model.half()) is refused, naming its dtype */
    CHECK_STATUS(bn_state_get(&bn, file, "half.bn.", err, sizeof err), BN_ERR_UNSUPPORTED);
    CHECK(one_line(err) && strstr(err, "\"half.bn.weight\"") && strstr(err, "F16"));
    /* a convolution is not a batch norm layer: a weight without a bias, or not of shape (C) */
    CHECK_STATUS(bn_state_get(&bn, file, "layer1.0.conv1.", err, sizeof err), BN_ERR_FORMAT);
    CHECK(one_line(err) && strstr(err, "\"layer1.0.conv1.weight\" without"));
    CHECK_STATUS(bn_state_get(&bn, file, "conv", err, sizeof err), BN_ERR_FORMAT);
    CHECK(one_line(err) && strstr(err, "shape (4, 3, 3, 3)"));
    CHECK_STATUS(bn_state_get(&bn, file, "layer1.0.bn", err, sizeof err), BN_ERR_FORMAT);
    CHECK(all_zero(&bn, sizeof bn));
    cli_safetensors_free(&f);
    bn_state_close(file);
}

/* ---------------------------------------------------------------------------------------------
 * Reading: every way it fails.
 */

static const float values[8] = {1, 2, 3, 4, 5, 6, 7, 8}; /* 32 bytes of data */

/* A file of the given header over data; the read of prefix "bn." fails with want, holding
 * nothing, and says so in one line containing needle. */
static void expect_bad(const char *what, const char *json, const void *data, size_t len,
                       bn_status want, const char *needle) {
    const char *path = in_dir("bad.safetensors");
    CHECK_MSG(put_safetensors(path, json, data, len), "%s: cannot write the test file", what);
    bn_state got;
    memset(&got, 0x5A, sizeof got);
    err[0] = '\0';
    bn_status st = bn_state_read(&got, path, "bn.", err, sizeof err);
    CHECK_MSG(st == want, "%s: status %d, want %d (%s)", what, (int)st, (int)want, err);
    CHECK_MSG(all_zero(&got, sizeof got), "%s: something held after a failure", what);
    CHECK_MSG(one_line(err) && strstr(err, needle), "%s: message \"%s\", want \"%s\"", what, err,
              needle);
    remove(path);
}

BN_SUITE(suite_state_read_errors) {
    snprintf(dir, sizeof dir, "/tmp/bnorm_state_XXXXXX");
    if (!CHECK_MSG(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno))) return;
    bn_state got;
    bn_state_file *file = (bn_state_file *)&got;

    /* files that are not there, or not regular */
    memset(&got, 0x5A, sizeof got);
    CHECK_STATUS(bn_state_read(&got, in_dir("missing.safetensors"), "bn.", err, sizeof err),
                 BN_ERR_IO);
    CHECK(all_zero(&got, sizeof got) && one_line(err));
    CHECK_STATUS(bn_state_open(&file, dir, err, sizeof err), BN_ERR_IO);
    CHECK(file == NULL && one_line(err));

    /* not safetensors */
    CHECK(put_file(in_dir("bad.safetensors"), "", 0));
    CHECK_STATUS(bn_state_read(&got, in_dir("bad.safetensors"), "bn.", err, sizeof err),
                 BN_ERR_FORMAT);
    CHECK(one_line(err) && strstr(err, "not a safetensors file"));
    CHECK(put_file(in_dir("bad.safetensors"), "hello, world: not a tensor", 26));
    CHECK_STATUS(bn_state_read(&got, in_dir("bad.safetensors"), "bn.", err, sizeof err),
                 BN_ERR_FORMAT);
    CHECK(one_line(err) && strstr(err, "not a safetensors file"));
    remove(in_dir("bad.safetensors"));
    expect_bad("bad JSON", "{\"bn.weight\": {", NULL, 0, BN_ERR_FORMAT, "not valid JSON");
    expect_bad("offsets past the data",
               "{\"bn.weight\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", values,
               8, BN_ERR_FORMAT, "data_offsets");
    expect_bad("a hole in the data",
               "{\"bn.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", values,
               12, BN_ERR_FORMAT, "holes");
    expect_bad("a dtype the format does not name, anywhere in the file",
               "{\"other\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,4]}}", values, 4,
               BN_ERR_UNSUPPORTED, "Q7");

    /* safetensors, but not a layer's state */
    expect_bad("no tensor under the prefix",
               "{\"bn1.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"bn1.bias\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               values, 8, BN_ERR_FORMAT, "no batch norm state under the prefix \"bn.\"");
    expect_bad("an empty file of no tensors", "{}", NULL, 0, BN_ERR_FORMAT, "no batch norm");
    expect_bad("a weight without a bias",
               "{\"bn.weight\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", values,
               12, BN_ERR_FORMAT, "\"bn.weight\" without \"bn.bias\"");
    expect_bad("a running_var without a running_mean",
               "{\"bn.running_var\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
               values, 12, BN_ERR_FORMAT, "\"bn.running_var\" without \"bn.running_mean\"");
    expect_bad("a matrix",
               "{\"bn.weight\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]},"
               "\"bn.bias\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[4,8]}}",
               values, 8, BN_ERR_FORMAT, "\"bn.weight\": shape (1, 1)");
    expect_bad("a scalar",
               "{\"bn.weight\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
               "\"bn.bias\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]}}",
               values, 8, BN_ERR_FORMAT, "shape ()");
    expect_bad("no channels",
               "{\"bn.weight\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
               "\"bn.bias\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
               NULL, 0, BN_ERR_FORMAT, "shape (0)");
    expect_bad("channels that differ",
               "{\"bn.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"bn.bias\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
               values, 12, BN_ERR_FORMAT,
               "\"bn.weight\" is F32 of 2 values, but \"bn.bias\" F32 of 1");
    expect_bad("dtypes that differ",
               "{\"bn.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"bn.bias\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[4,12]}}",
               values, 12, BN_ERR_FORMAT, "but \"bn.bias\" F64 of 1");
    expect_bad("float16",
               "{\"bn.weight\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
               "\"bn.bias\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]}}",
               values, 8, BN_ERR_UNSUPPORTED, "\"bn.weight\": dtype F16 is not supported");
    expect_bad("integers",
               "{\"bn.running_mean\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
               "\"bn.running_var\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[8,16]}}",
               values, 16, BN_ERR_UNSUPPORTED, "dtype I64 is not supported");

    /* num_batches_tracked: an I64 of shape () or (1), >= 0 */
    const int64_t counts[3] = {3, -1, 0};
    unsigned char data[64];
    memcpy(data, values, 8);
    memcpy(data + 8, counts, sizeof counts);
#define NBT_FILE(spec)                                                                         \
    "{\"bn.running_mean\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"         \
    "\"bn.running_var\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"           \
    "\"bn.num_batches_tracked\":" spec "}"
    expect_bad("a float count",
               NBT_FILE("{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[8,16]}"), data, 16,
               BN_ERR_FORMAT, "\"bn.num_batches_tracked\": F64 of shape (), not I64");
    expect_bad("two counts",
               NBT_FILE("{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[8,24]}"), data, 24,
               BN_ERR_FORMAT, "I64 of shape (2), not I64");
    expect_bad("a count of shape (1, 1)",
               NBT_FILE("{\"dtype\":\"I64\",\"shape\":[1,1],\"data_offsets\":[8,16]}"), data, 16,
               BN_ERR_FORMAT, "I64 of shape (1, 1)");
    memcpy(data + 8, counts + 1, 8);
    expect_bad("a negative count",
               NBT_FILE("{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[8,16]}"), data, 16,
               BN_ERR_FORMAT, "is -1, a negative count");
    /* shape (1) is read as () is, at any offset (unaligned here) */
    memcpy(data + 4, counts, 8);
    const char *path = in_dir("count.safetensors");
    CHECK(put_safetensors(path,
                          "{\"bn.running_mean\":{\"dtype\":\"F32\",\"shape\":[1],"
                          "\"data_offsets\":[0,4]},\"bn.num_batches_tracked\":{\"dtype\":\"I64\","
                          "\"shape\":[1],\"data_offsets\":[4,12]},\"bn.running_var\":{\"dtype\":"
                          "\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}",
                          data, 16));
    CHECK_STATUS(bn_state_read(&got, path, "bn", err, sizeof err), BN_OK);
    CHECK(got.c == 1 && got.has_num_batches_tracked && got.num_batches_tracked == 3 &&
          ((float *)got.running_mean)[0] == 1 && !got.weight);
    bn_state_free(&got);
    remove(path);
#undef NBT_FILE

    /* NULL pointers */
    CHECK_STATUS(bn_state_open(NULL, path, err, sizeof err), BN_ERR_NULL_POINTER);
    CHECK(one_line(err));
    file = (bn_state_file *)&got;
    CHECK_STATUS(bn_state_open(&file, NULL, err, sizeof err), BN_ERR_NULL_POINTER);
    CHECK(file == NULL);
    CHECK_STATUS(bn_state_get(NULL, file, "bn.", err, sizeof err), BN_ERR_NULL_POINTER);
    memset(&got, 0x5A, sizeof got);
    CHECK_STATUS(bn_state_get(&got, NULL, "bn.", err, sizeof err), BN_ERR_NULL_POINTER);
    CHECK(all_zero(&got, sizeof got));
    CHECK_STATUS(bn_state_read(NULL, path, "bn.", err, sizeof err), BN_ERR_NULL_POINTER);
    memset(&got, 0x5A, sizeof got);
    CHECK_STATUS(bn_state_read(&got, NULL, "bn.", NULL, 0), BN_ERR_NULL_POINTER);
    CHECK(all_zero(&got, sizeof got));
    bn_state_free(NULL);
    bn_state_close(NULL);
    bn_state_free(&got); /* a zeroed state frees nothing, twice */
    bn_state_free(&got);
    CHECK(count_entries(dir) == 0);
    CHECK_MSG(rmdir(dir) == 0, "%s not empty at the end: %s", dir, strerror(errno));
}

/* ---------------------------------------------------------------------------------------------
 * Writing: every way it fails, and the file left as it was.
 */

static unsigned char *old_bytes;
static size_t old_len;

/* The write fails with want, says so in one line with needle, and leaves the directory holding
 * only the old file, unchanged. */
static void expect_write_fails(const char *what, bn_status st, bn_status want,
                               const char *needle) {
    CHECK_MSG(st == want, "%s: status %d, want %d (%s)", what, (int)st, (int)want, err);
    CHECK_MSG(one_line(err) && strstr(err, needle), "%s: message \"%s\", want \"%s\"", what, err,
              needle);
    size_t len;
    unsigned char *now = slurp(in_dir("old.safetensors"), &len);
    CHECK_MSG(now && len == old_len && memcmp(now, old_bytes, len) == 0, "%s: the file changed",
              what);
    free(now);
    CHECK_MSG(count_entries(dir) == 1, "%s: a file left beside the old one", what);
    err[0] = '\0';
}

BN_SUITE(suite_state_write_errors) {
    snprintf(dir, sizeof dir, "/tmp/bnorm_state_XXXXXX");
    if (!CHECK_MSG(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno))) return;
    test_every_kind_round_trips();
    test_layers_in_one_file();

    const char *path = in_dir("old.safetensors");
    bn_state good = make_state(3, BN_FLOAT32, 1, 1, 1, 0);
    CHECK_STATUS(bn_state_write(path, "bn.", &good, err, sizeof err), BN_OK);
    old_bytes = slurp(path, &old_len);
    if (!CHECK(old_bytes)) return;

    bn_state s = good;
    s.c = 0;
    expect_write_fails("c = 0", bn_state_write(path, "bn.", &s, err, sizeof err), BN_ERR_SHAPE,
                       "c = 0, not >= 1");
    s.c = INT64_MAX / 2;
    expect_write_fails("c too large", bn_state_write(path, "bn.", &s, err, sizeof err),
                       BN_ERR_TOO_LARGE, "too large");
    s = good;
    s.dtype = (bn_dtype)7;
    expect_write_fails("dtype", bn_state_write(path, "bn.", &s, err, sizeof err),
                       BN_ERR_UNSUPPORTED, "dtype 7");
    s = good;
    s.bias = NULL;
    expect_write_fails("weight without bias", bn_state_write(path, "bn.", &s, err, sizeof err),
                       BN_ERR_ARGUMENT, "weight without bias");
    s = good;
    s.running_mean = NULL;
    expect_write_fails("running_var without running_mean",
                       bn_state_write(path, "bn.", &s, err, sizeof err), BN_ERR_ARGUMENT,
                       "running_var without running_mean");
    s = good;
    s.weight = s.bias = s.running_mean = s.running_var = NULL;
    expect_write_fails("nothing", bn_state_write(path, "bn.", &s, err, sizeof err),
                       BN_ERR_ARGUMENT, "nothing to write");
    s = good;
    s.num_batches_tracked = -2;
    expect_write_fails("negative count", bn_state_write(path, "bn.", &s, err, sizeof err),
                       BN_ERR_ARGUMENT, "num_batches_tracked = -2");
    const char *bad_prefixes[] = {"bn\xff.", "bn\xc0\xae.", "\xed\xa0\x80.", "bn\xe2\x82"};
    for (int k = 0; k < 4; k++)
        expect_write_fails("not UTF-8", bn_state_write(path, bad_prefixes[k], &good, err,
                                                       sizeof err),
                           BN_ERR_ARGUMENT, "not UTF-8");
    const char *one[1] = {"bn."};
    expect_write_fails("n = 0", bn_state_write_layers(path, 0, one, &good, err, sizeof err),
                       BN_ERR_ARGUMENT, "n = 0");
    bn_state layers[2] = {good, good};
    layers[1].c = -1;
    const char *two[2] = {"a.", "b."};
    expect_write_fails("the second layer",
                       bn_state_write_layers(path, 2, two, layers, err, sizeof err), BN_ERR_SHAPE,
                       "layer 1: c = -1");
    expect_write_fails("path NULL", bn_state_write(NULL, "bn.", &good, err, sizeof err),
                       BN_ERR_NULL_POINTER, "path is NULL");
    expect_write_fails("state NULL", bn_state_write(path, "bn.", NULL, err, sizeof err),
                       BN_ERR_NULL_POINTER, "state is NULL");
    expect_write_fails("prefixes NULL",
                       bn_state_write_layers(path, 1, NULL, &good, err, sizeof err),
                       BN_ERR_NULL_POINTER, "prefixes is NULL");
    expect_write_fails("states NULL", bn_state_write_layers(path, 1, one, NULL, err, sizeof err),
                       BN_ERR_NULL_POINTER, "states is NULL");
    /* files that cannot be written: a directory, a directory that is not there, a full disk */
    expect_write_fails("a directory", bn_state_write(dir, "bn.", &good, err, sizeof err),
                       BN_ERR_IO, "");
    expect_write_fails("no such directory",
                       bn_state_write(in_dir("none/x.safetensors"), "bn.", &good, err,
                                      sizeof err),
                       BN_ERR_IO, "");
    if (access("/dev/full", W_OK) == 0)
        expect_write_fails("/dev/full", bn_state_write("/dev/full", "bn.", &good, err, sizeof err),
                           BN_ERR_IO, "");
    /* and a good write still replaces it */
    CHECK_STATUS(bn_state_write(path, "other.", &good, NULL, 0), BN_OK);
    bn_state got;
    CHECK_STATUS(bn_state_read(&got, path, "other", NULL, 0), BN_OK);
    CHECK(same_state(&got, &good));
    bn_state_free(&got);
    CHECK_STATUS(bn_state_read(&got, path, "bn", err, sizeof err), BN_ERR_FORMAT);
    free(old_bytes);
    free_made(&good);
    remove(path);
    CHECK_MSG(rmdir(dir) == 0, "%s not empty at the end: %s", dir, strerror(errno));
}
