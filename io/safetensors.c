/* safetensors.c - safetensors files, read and written per the format's specification (see
 * safetensors.h), the JSON header parsed and printed by cJSON. */
#define _POSIX_C_SOURCE 200809L

#include "safetensors.h"
#include "bytes.h"
#include "input.h"
#include "message.h"
#include "output.h"

#ifdef BN_HAVE_CJSON
#include <cjson/cJSON.h>
#endif
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The format's dtypes, in the order of the CLI_ST_* values, and their element sizes. */
static const char *const dtype_names[CLI_ST_NDTYPES] = {
    "F32", "F64", "I64", "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
    "I32", "U32", "U64"};
static const unsigned char dtype_sizes[CLI_ST_NDTYPES] = {4, 8, 8, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                                          4, 4, 8};

static size_t elem_size(int dtype) { return dtype_sizes[dtype]; }

const char *cli_safetensors_dtype_name(int dtype) {
    return dtype >= 0 && dtype < CLI_ST_NDTYPES ? dtype_names[dtype] : "?";
}

#ifdef BN_HAVE_CJSON

#define MAX_HEADER (100u << 20) /* the specification's limit on the header */

static int little_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* To or from little-endian, in place (nothing to do on a little-endian machine). */
static void to_little(void *p, int64_t count, size_t size) {
    if (!little_endian()) bn_io_swap_bytes(p, count, size);
}

/* ---------------------------------------------------------------------------------------------
 * Writing.
 */

static cJSON *entry(const cli_st_tensor *t, size_t begin, size_t end) {
    cJSON *e = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *off = cJSON_CreateArray();
    if (!e || !shape || !off) {
        cJSON_Delete(e);
        cJSON_Delete(shape);
        cJSON_Delete(off);
        return NULL;
    }
    cJSON_AddItemToObject(e, "dtype", cJSON_CreateString(dtype_names[t->dtype]));
    for (int k = 0; k < t->ndim; k++)
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->dims[k]));
    cJSON_AddItemToObject(e, "shape", shape);
    cJSON_AddItemToArray(off, cJSON_CreateNumber((double)begin));
    cJSON_AddItemToArray(off, cJSON_CreateNumber((double)end));
    cJSON_AddItemToObject(e, "data_offsets", off);
    return e;
}

bn_status cli_safetensors_write(const char *path, const cli_st_tensor *t, int n,
                                const char *meta_key, const char *meta_value, char *err,
                                size_t errlen) {
    size_t total = 0;
    for (int k = 0; k < n; k++) {
        if (t[k].dtype < CLI_ST_F32 || t[k].dtype > CLI_ST_I64 || !t[k].name ||
            !t[k].name[0] || strcmp(t[k].name, "__metadata__") == 0) {
            bn_io_set_err(err, errlen, "tensor %d: bad name or dtype", k);
            return BN_ERR_ARGUMENT;
        }
        total += (size_t)t[k].count * elem_size(t[k].dtype);
    }
    cJSON *root = cJSON_CreateObject();
    bn_status st = root ? BN_OK : BN_ERR_NO_MEMORY;
    size_t at = 0;
    for (int k = 0; k < n && st == BN_OK; k++) {
        size_t bytes = (size_t)t[k].count * elem_size(t[k].dtype);
        cJSON *e = entry(&t[k], at, at + bytes);
        if (!e || !cJSON_AddItemToObject(root, t[k].name, e)) st = BN_ERR_NO_MEMORY;
        at += bytes;
    }
    if (st == BN_OK && meta_key) {
        cJSON *meta = cJSON_CreateObject();
        if (!meta || !cJSON_AddItemToObject(root, "__metadata__", meta) ||
            !cJSON_AddItemToObject(meta, meta_key, cJSON_CreateString(meta_value)))
            st = BN_ERR_NO_MEMORY;
    }
    char *json = st == BN_OK ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (st == BN_OK && !json) st = BN_ERR_NO_MEMORY;
    /* the header padded with spaces so that the data starts at a multiple of 8 */
    size_t jlen = json ? strlen(json) : 0, hlen = (jlen + 7) / 8 * 8;
    unsigned char *buf = st == BN_OK ? malloc(8 + hlen + total + 1) : NULL;
    if (st == BN_OK && !buf) st = BN_ERR_NO_MEMORY;
    if (st == BN_OK) {
        for (int b = 0; b < 8; b++) buf[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
        memcpy(buf + 8, json, jlen);
        memset(buf + 8 + jlen, ' ', hlen - jlen);
        unsigned char *data = buf + 8 + hlen;
        for (int k = 0; k < n; k++) {
            size_t size = elem_size(t[k].dtype), bytes = (size_t)t[k].count * size;
            if (bytes) memcpy(data, t[k].data, bytes);
            to_little(data, t[k].count, size);
            data += bytes;
        }
        st = bn_write_output(path, (const char *)buf, 8 + hlen, buf + 8 + hlen, total, err,
                             errlen);
    } else {
        bn_io_set_err(err, errlen, "out of memory");
    }
    free(buf);
    cJSON_free(json);
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * Reading.
 */

/* The whole of the regular file at path. Its size says how much to read, unless it says 0
 * bytes: a /proc or /sys file then shows what it has when read to its end. */
static bn_status read_all(const char *path, unsigned char **out, size_t *len, char *err,
                          size_t errlen) {
    FILE *f;
    bn_status st = bn_open_regular(&f, path, err, errlen); /* no FIFO, device or directory */
    if (st != BN_OK) return st;
    struct stat sb;
    const int sized = fstat(fileno(f), &sb) == 0 && sb.st_size > 0;
    size_t cap = sized ? (size_t)sb.st_size : 4096, got = 0;
    *out = NULL;
    for (;;) {
        unsigned char *grown = realloc(*out, cap);
        if (!grown) {
            st = BN_ERR_NO_MEMORY;
            bn_io_set_err(err, errlen, "out of memory reading %zu bytes", cap);
            break;
        }
        *out = grown;
        got += fread(*out + got, 1, cap - got, f);
        if (ferror(f)) {
            st = BN_ERR_IO;
            bn_io_os_error("read failed", errno, err, errlen);
            break;
        }
        if (got < cap || sized) break; /* the end, or all the size promised */
        cap *= 2;
    }
    fclose(f);
    if (st == BN_OK && sized && got != cap) {
        st = BN_ERR_IO;
        bn_io_set_err(err, errlen, "read failed: the file shrank");
    }
    if (st != BN_OK) {
        free(*out);
        *out = NULL;
        return st;
    }
    *len = got;
    return BN_OK;
}

/* A JSON number that is a whole number in [0, 2^53]. */
static int whole(const cJSON *item, int64_t *v) {
    if (!cJSON_IsNumber(item)) return 0;
    double d = item->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != floor(d)) return 0;
    *v = (int64_t)d;
    return 1;
}

/* text from the file, fit for a one-line message: bytes outside printable ASCII become '?' (no
 * newline or terminal escape reaches the user's screen), and long text is cut with "...". */
static const char *shown(char *buf, size_t buflen, const char *text) {
    size_t k = 0;
    for (; text[k] && k + 4 < buflen; k++)
        buf[k] = text[k] >= 0x20 && text[k] < 0x7f ? text[k] : '?';
    if (text[k]) memcpy(buf + k, "...", 3), k += 3;
    buf[k] = '\0';
    return buf;
}

/* One header entry: dtype, shape, offsets within data_len bytes. Dtypes past CLI_ST_I64 are
 * taken when any_dtype is set. */
static bn_status parse_entry(cli_st_tensor *t, int64_t off[2], const cJSON *e, size_t data_len,
                             int any_dtype, char *err, size_t errlen) {
    char name_buf[68], dtype_buf[20];
    const char *name = shown(name_buf, sizeof name_buf, e->string);
    if (!cJSON_IsObject(e)) {
        bn_io_set_err(err, errlen, "header entry \"%s\" is not a JSON object", name);
        return BN_ERR_FORMAT;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs) ||
        cJSON_GetArraySize(offs) != 2) {
        bn_io_set_err(err, errlen,
                      "tensor \"%s\": needs \"dtype\" (a string), \"shape\" (an array) and "
                      "\"data_offsets\" (two numbers)",
                      name);
        return BN_ERR_FORMAT;
    }
    t->name = e->string;
    t->dtype = -1;
    for (int k = 0; k < (any_dtype ? CLI_ST_NDTYPES : CLI_ST_I64 + 1); k++)
        if (strcmp(dt->valuestring, dtype_names[k]) == 0) t->dtype = k;
    if (t->dtype < 0 && any_dtype) {
        bn_io_set_err(err, errlen, "tensor \"%s\": dtype %s is not one of the format's", name,
                      shown(dtype_buf, sizeof dtype_buf, dt->valuestring));
        return BN_ERR_UNSUPPORTED;
    }
    if (t->dtype < 0) {
        bn_io_set_err(err, errlen, "tensor \"%s\": dtype %s is not supported (only F32, F64, I64)",
                      name, shown(dtype_buf, sizeof dtype_buf, dt->valuestring));
        return BN_ERR_UNSUPPORTED;
    }
    t->ndim = cJSON_GetArraySize(shape);
    if (t->ndim > CLI_ST_MAX_NDIM) {
        bn_io_set_err(err, errlen, "tensor \"%s\": %d dimensions, more than %d", name, t->ndim,
                      CLI_ST_MAX_NDIM);
        return BN_ERR_UNSUPPORTED;
    }
    t->count = 1;
    for (int k = 0; k < t->ndim; k++) {
        if (!whole(cJSON_GetArrayItem(shape, k), &t->dims[k])) {
            bn_io_set_err(err, errlen, "tensor \"%s\": shape entry %d is not a size", name, k);
            return BN_ERR_FORMAT;
        }
        if (t->dims[k] && t->count > INT64_MAX / 8 / t->dims[k]) {
            bn_io_set_err(err, errlen, "tensor \"%s\": the shape is too large", name);
            return BN_ERR_FORMAT;
        }
        t->count *= t->dims[k];
    }
    if (!whole(cJSON_GetArrayItem(offs, 0), &off[0]) ||
        !whole(cJSON_GetArrayItem(offs, 1), &off[1]) || off[0] > off[1] ||
        (uint64_t)off[1] > data_len) {
        bn_io_set_err(err, errlen, "tensor \"%s\": data_offsets outside the %zu bytes of data",
                      name, data_len);
        return BN_ERR_FORMAT;
    }
    if (off[1] - off[0] != t->count * (int64_t)elem_size(t->dtype)) {
        bn_io_set_err(err, errlen,
                      "tensor \"%s\": data_offsets span %lld bytes, but %lld elements of %s "
                      "take %lld",
                      name, (long long)(off[1] - off[0]), (long long)t->count, dt->valuestring,
                      (long long)(t->count * (int64_t)elem_size(t->dtype)));
        return BN_ERR_FORMAT;
    }
    return BN_OK;
}

static int by_offset(const void *a, const void *b) {
    const int64_t *x = a, *y = b;
    return (x[0] > y[0]) - (x[0] < y[0]);
}

/* Where the padding after the header's JSON object ends: the first byte in [from, hlen) that is
 * not padding, or hlen. The format pads with spaces; tabs, newlines and carriage returns are
 * taken too, since the reference reader parses the header as JSON text, which may end in any
 * JSON whitespace, and reads such files. Anything else (a second value, a stray brace, NUL
 * bytes) would be data the reader ignores, so the file is refused. */
static size_t padding_end(const char *json, size_t from, uint64_t hlen) {
    size_t at = from;
    while (at < hlen && (json[at] == ' ' || json[at] == '\t' || json[at] == '\n' ||
                         json[at] == '\r'))
        at++;
    return at;
}

/* A tensor entry of the header: its name and where it comes among the tensors. */
typedef struct named {
    const char *name;
    int index;
} named;

static int by_name(const void *a, const void *b) {
    const named *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

/* The index, among root's n tensor entries (all but __metadata__), of the first entry whose name
 * an earlier entry has; -1 when the names differ, -2 when out of memory. The names are sorted,
 * so that this takes n log n comparisons, not the n^2 / 2 of comparing every pair. */
static int first_repeat(const cJSON *root, int n) {
    named *all = malloc(sizeof *all * (size_t)(n ? n : 1));
    if (!all) return -2;
    int k = 0, first = -1;
    for (const cJSON *e = root->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0) all[k] = (named){e->string, k}, k++;
    qsort(all, (size_t)n, sizeof *all, by_name);
    /* an entry with an equal name before it in the sorted order (equal names are sorted by
     * index) is a repeat; the first repeat is the one of smallest index */
    for (int j = 1; j < n; j++)
        if (strcmp(all[j - 1].name, all[j].name) == 0 && (first < 0 || all[j].index < first))
            first = all[j].index;
    free(all);
    return first;
}

static bn_status read_file(cli_st_file *f, const char *path, int any_dtype, char *err,
                           size_t errlen) {
    memset(f, 0, sizeof *f);
    unsigned char *buf;
    size_t len;
    bn_status st = read_all(path, &buf, &len, err, errlen);
    if (st != BN_OK) return st;
    uint64_t hlen = 0;
    for (int b = 0; b < 8 && b < (int)len; b++) hlen |= (uint64_t)buf[b] << (8 * b);
    cJSON *root = NULL;
    if (len < 8) {
        bn_io_set_err(err, errlen,
                      "not a safetensors file: %zu bytes, shorter than the 8-byte header "
                      "length",
                      len);
        st = BN_ERR_FORMAT;
    } else if (hlen > len - 8 || hlen > MAX_HEADER || hlen < 2 || buf[8] != '{') {
        bn_io_set_err(err, errlen,
                      "not a safetensors file: the header length %llu does not fit the "
                      "file's %zu bytes, or the header is not a JSON object",
                      (unsigned long long)hlen, len);
        st = BN_ERR_FORMAT;
    } else {
        const char *json = (const char *)buf + 8, *parsed = NULL;
        root = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &parsed, 0);
        size_t at;
        if (!cJSON_IsObject(root)) {
            bn_io_set_err(err, errlen, "the header is not valid JSON");
            st = BN_ERR_FORMAT;
        } else if ((at = padding_end(json, (size_t)(parsed - json), hlen)) < hlen) {
            bn_io_set_err(err, errlen,
                          "the header has bytes after its JSON object that are not "
                          "padding (byte %zu of %llu is 0x%02x)",
                          at, (unsigned long long)hlen, (unsigned char)json[at]);
            st = BN_ERR_FORMAT;
        }
    }
    const size_t data_at = 8 + (size_t)hlen, data_len = len - (st == BN_OK ? data_at : len);
    int n = 0;
    for (const cJSON *e = root ? root->child : NULL; st == BN_OK && e; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0) n++;
    cli_st_tensor *t = st == BN_OK ? calloc((size_t)n + 1, sizeof *t) : NULL;
    int64_t *offs = st == BN_OK ? calloc((size_t)n + 1, 2 * sizeof(int64_t)) : NULL;
    if (st == BN_OK && (!t || !offs)) {
        bn_io_set_err(err, errlen, "out of memory");
        st = BN_ERR_NO_MEMORY;
    }
    int k = 0, twice = -1;
    if (st == BN_OK && (twice = first_repeat(root, n)) == -2) {
        bn_io_set_err(err, errlen, "out of memory");
        st = BN_ERR_NO_MEMORY;
    }
    for (const cJSON *e = root ? root->child : NULL; st == BN_OK && e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        if (k == twice) {
            char name_buf[68];
            bn_io_set_err(err, errlen, "tensor \"%s\" appears twice in the header",
                          shown(name_buf, sizeof name_buf, e->string));
            st = BN_ERR_FORMAT;
            break;
        }
        st = parse_entry(&t[k], &offs[2 * k], e, data_len, any_dtype, err, errlen);
        if (st == BN_OK) {
            t[k].data = buf + data_at + offs[2 * k];
            to_little((void *)t[k].data, t[k].count, elem_size(t[k].dtype));
            k++;
        }
    }
    if (st == BN_OK) { /* the tensors tile the data: no holes, no overlaps */
        int64_t (*sorted)[2] = (int64_t(*)[2])offs;
        qsort(sorted, (size_t)n, sizeof sorted[0], by_offset);
        int64_t end = 0;
        for (int j = 0; j < n && st == BN_OK; j++) {
            if (sorted[j][0] != end) st = BN_ERR_FORMAT;
            end = sorted[j][1];
        }
        if (st == BN_OK && (size_t)end != data_len) st = BN_ERR_FORMAT;
        if (st != BN_OK)
            bn_io_set_err(err, errlen,
                          "the tensors' data_offsets leave holes in or overlap the %zu "
                          "bytes of data",
                          data_len);
    }
    free(offs);
    if (st != BN_OK) {
        free(t);
        cJSON_Delete(root);
        free(buf);
        return st;
    }
    f->count = n;
    f->tensors = t;
    f->json = root;
    f->bytes = buf;
    return BN_OK;
}

bn_status cli_safetensors_read(cli_st_file *f, const char *path, char *err, size_t errlen) {
    return read_file(f, path, 0, err, errlen);
}

bn_status cli_safetensors_read_any(cli_st_file *f, const char *path, char *err, size_t errlen) {
    return read_file(f, path, 1, err, errlen);
}

void cli_safetensors_free(cli_st_file *f) {
    free(f->tensors);
    cJSON_Delete(f->json);
    free(f->bytes);
    memset(f, 0, sizeof *f);
}

#else /* built without cJSON: the commands say what to install */

static bn_status no_json(char *err, size_t errlen) {
    bn_io_set_err(err, errlen,
                  "bnorm was built without cJSON, which safetensors files need: "
                  "apt-get install libcjson-dev, then rebuild");
    return BN_ERR_UNSUPPORTED;
}

bn_status cli_safetensors_write(const char *path, const cli_st_tensor *t, int n,
                                const char *meta_key, const char *meta_value, char *err,
                                size_t errlen) {
    (void)path, (void)t, (void)n, (void)meta_key, (void)meta_value;
    return no_json(err, errlen);
}

bn_status cli_safetensors_read(cli_st_file *f, const char *path, char *err, size_t errlen) {
    (void)path;
    memset(f, 0, sizeof *f);
    return no_json(err, errlen);
}

bn_status cli_safetensors_read_any(cli_st_file *f, const char *path, char *err, size_t errlen) {
    return cli_safetensors_read(f, path, err, errlen);
}

void cli_safetensors_free(cli_st_file *f) { memset(f, 0, sizeof *f); }

#endif

double cli_safetensors_value(const cli_st_tensor *t, int64_t k) {
    const unsigned char *p = (const unsigned char *)t->data + (size_t)k * elem_size(t->dtype);
    if (t->dtype == CLI_ST_F32) {
        float v;
        memcpy(&v, p, 4);
        return v;
    }
    if (t->dtype == CLI_ST_F64) {
        double v;
        memcpy(&v, p, 8);
        return v;
    }
    int64_t v;
    memcpy(&v, p, 8);
    return (double)v;
}

const cli_st_tensor *cli_safetensors_find(const cli_st_file *f, const char *name) {
    for (int k = 0; k < f->count; k++)
        if (strcmp(f->tensors[k].name, name) == 0) return &f->tensors[k];
    return NULL;
}

