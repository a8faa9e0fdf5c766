/* npy.c - NumPy .npy files: a strict reader (versions 1-3, either byte order, C or Fortran
 * order) and a writer (version 1.0), which writes through bn_write_output. See npy.h. */
#define _POSIX_C_SOURCE 200809L

#include "npy.h"
#include "bytes.h"
#include "input.h"
#include "message.h"
#include "output.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
enum {
    NPY_ALIGN = 64,           /* the writer starts the data at a multiple of this */
    NPY_MAX_HEADER = 1 << 20, /* longer headers are refused (NumPy writes under 1 KiB) */
    NPY_READ_CHUNK = 1 << 24  /* first allocation when the file size is not known */
};

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static size_t dtype_size(bn_dtype dtype) {
    switch (dtype) {
    case BN_FLOAT16: return 2;
    case BN_FLOAT32: return 4;
    case BN_FLOAT64: return 8;
    default: return 0;
    }
}

static const char *dtype_name(bn_dtype dtype) {
    return dtype == BN_FLOAT16 ? "float16" : dtype == BN_FLOAT32 ? "float32" : "float64";
}

/* *out = a * b for a, b >= 0; returns 0 on overflow of int64_t. */
static int mul_checked(int64_t a, int64_t b, int64_t *out) {
    if (a != 0 && b > INT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* *count = the product of dims[0 .. ndim-1] (each >= 0), 0 when any is 0 however large the
 * others; returns 0 when it overflows int64_t. */
static int shape_count(int ndim, const int64_t *dims, int64_t *count) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (dims[i] == 0) n = 0;
    for (int i = 0; i < ndim && n; i++)
        if (!mul_checked(n, dims[i], &n)) return 0;
    *count = n;
    return 1;
}

char *bn_npy_shape_string(char *buf, size_t buflen, int ndim, const int64_t *dims) {
    if (!buf || buflen == 0) return buf;
    size_t used = 0;
    buf[0] = '\0';
    /* appends with snprintf, stopping quietly once the buffer is full */
#define SHAPE_APPEND(...)                                                        \
    do {                                                                         \
        if (used < buflen) {                                                     \
            int k_ = snprintf(buf + used, buflen - used, __VA_ARGS__);           \
            used += k_ > 0 ? (size_t)k_ : 0;                                     \
        }                                                                        \
    } while (0)
    SHAPE_APPEND("(");
    for (int i = 0; i < ndim; i++) SHAPE_APPEND(i ? ", %lld" : "%lld", (long long)dims[i]);
    SHAPE_APPEND(ndim == 1 ? ",)" : ")");
#undef SHAPE_APPEND
    return buf;
}

void bn_npy_free(bn_npy *arr) {
    if (!arr) return;
    free(arr->data);
    memset(arr, 0, sizeof *arr);
}

/* ---------------------------------------------------------------------------------------------
 * The preamble: magic, version, header length.
 */

typedef struct npy_preamble {
    int major, minor;
    size_t prefix_len; /* bytes before the header text: 10 (version 1) or 12 */
    size_t header_len; /* bytes of header text */
} npy_preamble;

/* Reads the preamble from the first len bytes of a file whose total size is file_len
 * (len = min(file_len, 12) is enough). */
static bn_status parse_preamble(npy_preamble *pre, const unsigned char *buf, size_t len,
                                size_t file_len, char *err, size_t errlen) {
    if (file_len == 0) {
        bn_io_set_err(err, errlen, "file is empty (0 bytes), not a .npy file");
        return BN_ERR_FORMAT;
    }
    size_t have = len < sizeof npy_magic ? len : sizeof npy_magic;
    if (memcmp(buf, npy_magic, have) != 0) {
        bn_io_set_err(err, errlen,
                      "not a .npy file: it does not start with the magic \"\\x93NUMPY\"");
        return BN_ERR_FORMAT;
    }
    if (len < 8) {
        bn_io_set_err(err, errlen, "truncated: the file is %zu bytes long and ends inside the %s",
                      len, len < 6 ? "magic string \"\\x93NUMPY\"" : "format version");
        return BN_ERR_FORMAT;
    }
    pre->major = buf[6];
    pre->minor = buf[7];
    if (pre->minor != 0 || pre->major < 1 || pre->major > 3) {
        bn_io_set_err(err, errlen, "format version %d.%d is not supported (only 1.0, 2.0 and 3.0)",
                      pre->major, pre->minor);
        return BN_ERR_UNSUPPORTED;
    }
    size_t field = pre->major == 1 ? 2 : 4;
    pre->prefix_len = 8 + field;
    if (len < pre->prefix_len) {
        bn_io_set_err(err, errlen,
                      "truncated: the file is %zu bytes long and ends inside the %zu-byte header "
                      "length field",
                      len, field);
        return BN_ERR_FORMAT;
    }
    uint32_t hlen = (uint32_t)buf[8] | (uint32_t)buf[9] << 8;
    if (field == 4) hlen |= (uint32_t)buf[10] << 16 | (uint32_t)buf[11] << 24;
    pre->header_len = hlen;
    if (hlen > file_len - pre->prefix_len) {
        bn_io_set_err(err, errlen,
                      "header longer than the file: the header length field says %lu bytes, "
                      "but only %zu bytes follow it",
                      (unsigned long)hlen, file_len - pre->prefix_len);
        return BN_ERR_FORMAT;
    }
    if (hlen > NPY_MAX_HEADER) {
        bn_io_set_err(err, errlen, "header of %lu bytes is larger than the %d bytes accepted",
                      (unsigned long)hlen, NPY_MAX_HEADER);
        return BN_ERR_TOO_LARGE;
    }
    return BN_OK;
}

/* ---------------------------------------------------------------------------------------------
 * The header: a Python dict literal with the keys 'descr', 'fortran_order' and 'shape'.
 */

typedef struct npy_header {
    bn_dtype dtype;
    int swap;    /* the data's byte order is not the machine's */
    int fortran; /* the data is stored in Fortran (column-major) order */
    int ndim;
    int64_t dims[BN_NPY_MAX_NDIM];
    int64_t count;
    size_t nbytes;
} npy_header;

typedef struct cursor {
    const char *start, *p, *end;
    char *err;
    size_t errlen;
} cursor;

static void skip_space(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r' ||
                             *c->p == '\f' || *c->p == '\v'))
        c->p++;
}

/* "header: <what> at byte K: 'text...'", quoting what is there so the user can see it. */
static bn_status syntax_error(cursor *c, const char *what) {
    char near[24];
    size_t k = 0;
    for (const char *q = c->p; q < c->end && k < 16; q++, k++)
        near[k] = (*q >= 0x20 && *q < 0x7f) ? *q : '?';
    near[k] = '\0';
    if (c->p >= c->end)
        bn_io_set_err(c->err, c->errlen, "malformed header: %s at its end", what);
    else
        bn_io_set_err(c->err, c->errlen, "malformed header: %s at byte %ld of the header: \"%s%s\"",
                      what, (long)(c->p - c->start), near, c->end - c->p > 16 ? "..." : "");
    return BN_ERR_FORMAT;
}

static int at(cursor *c, char ch) { return c->p < c->end && *c->p == ch; }

/* A quoted string without escapes, into out (at most outlen - 1 characters). */
static bn_status parse_string(cursor *c, char *out, size_t outlen, const char *what) {
    if (!at(c, '\'') && !at(c, '"')) return syntax_error(c, what);
    char quote = *c->p++;
    size_t k = 0;
    while (c->p < c->end && *c->p != quote) {
        if (*c->p == '\\') return syntax_error(c, "escape sequences in strings are not supported");
        if (*c->p == '\n') return syntax_error(c, "unterminated string");
        if (k + 1 >= outlen) return syntax_error(c, "string too long");
        out[k++] = *c->p++;
    }
    if (c->p >= c->end) return syntax_error(c, "unterminated string");
    c->p++;
    out[k] = '\0';
    return BN_OK;
}

/* A bare word (True, False), compared with want. */
static int take_word(cursor *c, const char *want) {
    size_t n = strlen(want);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, want, n) != 0) return 0;
    const char *after = c->p + n;
    if (after < c->end && (*after == '_' || (*after >= 'a' && *after <= 'z') ||
                           (*after >= 'A' && *after <= 'Z') || (*after >= '0' && *after <= '9')))
        return 0;
    c->p = after;
    return 1;
}

static const char *kind_name(char kind) {
    switch (kind) {
    case 'b': return "boolean";
    case 'i': return "signed integer";
    case 'u': return "unsigned integer";
    case 'c': return "complex";
    case 'U': return "unicode string";
    case 'S': case 'a': return "byte string";
    case 'O': return "Python object";
    case 'M': return "datetime";
    case 'm': return "timedelta";
    case 'V': return "raw bytes (void)";
    default: return NULL;
    }
}

/* 'descr': "<f4", ">f8", "=f2", "f8", "float16", "float32", "float64"; any other type is
 * refused. */
static bn_status parse_descr(npy_header *h, const char *descr, char *err, size_t errlen) {
    static const char supported[] =
        "only float16, float32 and float64 arrays ('<f2', '<f4', '<f8') are supported";
    int little = host_is_little_endian();
    if (strcmp(descr, "float16") == 0 || strcmp(descr, "float32") == 0 ||
        strcmp(descr, "float64") == 0) {
        h->dtype = descr[5] == '1' ? BN_FLOAT16 : descr[5] == '3' ? BN_FLOAT32 : BN_FLOAT64;
        h->swap = 0;
        return BN_OK;
    }
    const char *q = descr;
    char order = '=';
    if (*q == '<' || *q == '>' || *q == '=' || *q == '|') order = *q++;
    char kind = *q ? *q++ : '\0';
    const char *digits = q;
    long size = 0;
    while (*q >= '0' && *q <= '9' && size < 100000) size = size * 10 + (*q++ - '0');
    int plain = q != digits && *q == '\0'; /* kind letter, then only digits */
    if (kind == 'f' && plain && (size == 2 || size == 4 || size == 8)) {
        if (order == '|') {
            bn_io_set_err(err, errlen, "dtype '%s' has no byte order, which a %ld-byte float needs",
                          descr, size);
            return BN_ERR_FORMAT;
        }
        h->dtype = size == 2 ? BN_FLOAT16 : size == 4 ? BN_FLOAT32 : BN_FLOAT64;
        h->swap = (order == '<' && !little) || (order == '>' && little);
        return BN_OK;
    }
    if (kind == 'f' && plain) {
        bn_io_set_err(err, errlen, "dtype '%s' (float%ld) is not supported: %s", descr, size * 8,
                      supported);
        return BN_ERR_UNSUPPORTED;
    }
    const char *name = kind_name(kind);
    if (name) {
        bn_io_set_err(err, errlen, "dtype '%s' (%s) is not supported: %s", descr, name, supported);
        return BN_ERR_UNSUPPORTED;
    }
    bn_io_set_err(err, errlen, "malformed header: 'descr' is '%s', which is not a NumPy dtype",
                  descr);
    return BN_ERR_FORMAT;
}

/* 'shape': a tuple of non-negative integers: (), (5,), (2, 3), (2, 3,), (2L, 3L). */
static bn_status parse_shape(npy_header *h, cursor *c) {
    if (!at(c, '(')) return syntax_error(c, "'shape' must be a tuple such as (2, 3), expected '('");
    c->p++;
    h->ndim = 0;
    int commas = 0;
    for (;;) {
        skip_space(c);
        if (at(c, ')')) break;
        if (h->ndim == BN_NPY_MAX_NDIM) {
            bn_io_set_err(c->err, c->errlen, "shape has more than %d dimensions, NumPy's limit",
                          BN_NPY_MAX_NDIM);
            return BN_ERR_UNSUPPORTED;
        }
        int negative = 0;
        if (at(c, '-') || at(c, '+')) negative = *c->p++ == '-';
        skip_space(c);
        if (!(c->p < c->end && *c->p >= '0' && *c->p <= '9'))
            return syntax_error(c, "expected an integer in 'shape'");
        int64_t v = 0;
        int too_big = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            int d = *c->p++ - '0';
            if (v > (INT64_MAX - d) / 10) too_big = 1;
            else v = v * 10 + d;
        }
        if (at(c, 'L') || at(c, 'l')) c->p++; /* Python 2 wrote longs as 3L */
        if (negative && (v != 0 || too_big)) {
            bn_io_set_err(c->err, c->errlen, "shape has a negative size in dimension %d", h->ndim);
            return BN_ERR_FORMAT;
        }
        if (too_big) {
            bn_io_set_err(c->err, c->errlen, "shape size in dimension %d does not fit in 64 bits",
                          h->ndim);
            return BN_ERR_TOO_LARGE;
        }
        h->dims[h->ndim++] = v;
        skip_space(c);
        if (at(c, ',')) {
            c->p++;
            commas++;
            continue;
        }
        if (at(c, ')')) break;
        return syntax_error(c, "expected ',' or ')' in 'shape'");
    }
    c->p++; /* ')' */
    if (h->ndim == 1 && commas == 0)
        return syntax_error(c, "'shape' is a parenthesized number, not a tuple: write (n,)");
    return BN_OK;
}

static bn_status parse_header(npy_header *h, const char *text, size_t len, char *err,
                              size_t errlen) {
    cursor c = {text, text, text + len, err, errlen};
    int seen_descr = 0, seen_fortran = 0, seen_shape = 0;
    char descr[64];
    memset(h, 0, sizeof *h);
    skip_space(&c);
    if (!at(&c, '{')) return syntax_error(&c, "expected the dict to start with '{'");
    c.p++;
    for (;;) {
        skip_space(&c);
        if (at(&c, '}')) break;
        char key[32];
        bn_status st = parse_string(&c, key, sizeof key, "expected a quoted key or '}'");
        if (st != BN_OK) return st;
        skip_space(&c);
        if (!at(&c, ':')) return syntax_error(&c, "expected ':' after a key");
        c.p++;
        skip_space(&c);
        int *seen;
        if (strcmp(key, "descr") == 0) {
            seen = &seen_descr;
            if (at(&c, '[')) {
                bn_io_set_err(err, errlen,
                              "structured dtypes (a list of fields in 'descr') are not "
                              "supported: only float32 and float64 arrays");
                return BN_ERR_UNSUPPORTED;
            }
            st = parse_string(&c, descr, sizeof descr, "'descr' must be a quoted dtype string");
        } else if (strcmp(key, "fortran_order") == 0) {
            seen = &seen_fortran;
            if (take_word(&c, "True")) h->fortran = 1;
            else if (take_word(&c, "False")) h->fortran = 0;
            else st = syntax_error(&c, "'fortran_order' must be True or False");
        } else if (strcmp(key, "shape") == 0) {
            seen = &seen_shape;
            st = parse_shape(h, &c);
        } else {
            bn_io_set_err(err, errlen,
                          "malformed header: unexpected key '%s' (the keys are 'descr', "
                          "'fortran_order' and 'shape')",
                          key);
            return BN_ERR_FORMAT;
        }
        if (st != BN_OK) return st;
        if (*seen) {
            bn_io_set_err(err, errlen, "malformed header: key '%s' appears twice", key);
            return BN_ERR_FORMAT;
        }
        *seen = 1;
        skip_space(&c);
        if (at(&c, ',')) {
            c.p++;
            continue;
        }
        if (at(&c, '}')) break;
        return syntax_error(&c, "expected ',' or '}' after a value");
    }
    c.p++; /* '}' */
    skip_space(&c);
    if (c.p != c.end) return syntax_error(&c, "unexpected text after the dict");
    if (!seen_descr || !seen_fortran || !seen_shape) {
        bn_io_set_err(err, errlen, "malformed header: the key '%s' is missing",
                      !seen_descr ? "descr" : !seen_fortran ? "fortran_order" : "shape");
        return BN_ERR_FORMAT;
    }
    bn_status st = parse_descr(h, descr, err, errlen);
    if (st != BN_OK) return st;

    int64_t count, bytes;
    if (!shape_count(h->ndim, h->dims, &count)) {
        char shape[512];
        bn_io_set_err(err, errlen, "shape %s has more elements than 64 bits can count",
                      bn_npy_shape_string(shape, sizeof shape, h->ndim, h->dims));
        return BN_ERR_TOO_LARGE;
    }
    if (!mul_checked(count, (int64_t)dtype_size(h->dtype), &bytes) ||
        (uint64_t)bytes > (uint64_t)SIZE_MAX) {
        char shape[512];
        bn_io_set_err(err, errlen, "shape %s of %s is too large to address in memory",
                      bn_npy_shape_string(shape, sizeof shape, h->ndim, h->dims),
                      dtype_name(h->dtype));
        return BN_ERR_TOO_LARGE;
    }
    h->count = count;
    h->nbytes = (size_t)bytes;
    return BN_OK;
}

static bn_status data_size_error(const npy_header *h, size_t file_has, int more, char *err,
                                 size_t errlen) {
    char shape[512];
    bn_io_set_err(err, errlen, "header says %zu bytes of data (shape %s of %s), file has %s%zu",
                  h->nbytes, bn_npy_shape_string(shape, sizeof shape, h->ndim, h->dims),
                  dtype_name(h->dtype), more ? "more than " : "", file_has);
    return BN_ERR_FORMAT;
}

/* ---------------------------------------------------------------------------------------------
 * The data: to native byte order, then to C order.
 */

/* dst (dims) in C order = src (dims) stored in Fortran order: element (i0, ..., ik) of src sits
 * at i0 + d0*(i1 + d1*(i2 + ...)). Walks dst in order, keeping src's offset in step. */
static void fortran_to_c(void *dst, const void *src, size_t size, int ndim, const int64_t *dims,
                         int64_t count) {
    int64_t fstride[BN_NPY_MAX_NDIM], idx[BN_NPY_MAX_NDIM] = {0};
    int64_t off = 0;
    unsigned char *out = dst;
    const unsigned char *in = src;
    for (int j = 0; j < ndim; j++) fstride[j] = j ? fstride[j - 1] * dims[j - 1] : 1;
    for (int64_t i = 0; i < count; i++) {
        if (size == 4) memcpy(out + (size_t)i * 4, in + (size_t)off * 4, 4);
        else memcpy(out + (size_t)i * 8, in + (size_t)off * 8, 8);
        for (int j = ndim - 1; j >= 0; j--) { /* odometer, last index fastest */
            off += fstride[j];
            if (++idx[j] < dims[j]) break;
            off -= fstride[j] * dims[j];
            idx[j] = 0;
        }
    }
}

/* Takes ownership of raw (h->nbytes of file data, malloc'd); fills *arr or frees raw. */
static bn_status finish(bn_npy *arr, const npy_header *h, void *raw, char *err, size_t errlen) {
    size_t size = dtype_size(h->dtype);
    if (h->swap) bn_io_swap_bytes(raw, h->count, size);
    if (h->fortran && h->ndim > 1 && h->count > 1) {
        void *c_order = malloc(h->nbytes);
        if (!c_order) {
            free(raw);
            bn_io_set_err(err, errlen,
                          "out of memory: cannot allocate %zu bytes to reorder the "
                          "Fortran-order data",
                          h->nbytes);
            return BN_ERR_TOO_LARGE;
        }
        fortran_to_c(c_order, raw, size, h->ndim, h->dims, h->count);
        free(raw);
        raw = c_order;
    }
    memset(arr, 0, sizeof *arr);
    arr->dtype = h->dtype;
    arr->ndim = h->ndim;
    memcpy(arr->dims, h->dims, (size_t)h->ndim * sizeof h->dims[0]);
    arr->count = h->count;
    arr->nbytes = h->nbytes;
    arr->data = raw;
    return BN_OK;
}

static void *alloc_data(size_t nbytes, char *err, size_t errlen) {
    void *p = malloc(nbytes ? nbytes : 1);
    if (!p)
        bn_io_set_err(err, errlen, "out of memory: cannot allocate %zu bytes for the data",
                      nbytes);
    return p;
}

bn_status bn_npy_parse(bn_npy *arr, const void *buf, size_t len, char *err, size_t errlen) {
    if (!arr || (!buf && len)) {
        bn_io_set_err(err, errlen, "a required argument is NULL");
        return BN_ERR_NULL_POINTER;
    }
    memset(arr, 0, sizeof *arr);
    const unsigned char *bytes = buf;
    npy_preamble pre;
    npy_header h;
    bn_status st = parse_preamble(&pre, bytes, len < 12 ? len : 12, len, err, errlen);
    if (st != BN_OK) return st;
    st = parse_header(&h, (const char *)bytes + pre.prefix_len, pre.header_len, err, errlen);
    if (st != BN_OK) return st;
    size_t offset = pre.prefix_len + pre.header_len;
    if (len - offset != h.nbytes) return data_size_error(&h, len - offset, 0, err, errlen);
    void *raw = alloc_data(h.nbytes, err, errlen);
    if (!raw) return BN_ERR_TOO_LARGE;
    if (h.nbytes) memcpy(raw, bytes + offset, h.nbytes);
    return finish(arr, &h, raw, err, errlen);
}

/* ---------------------------------------------------------------------------------------------
 * Reading a file.
 */


/* Reads up to want bytes into buf; *got = bytes read. Fails only on a read error. */
static bn_status read_some(FILE *f, void *buf, size_t want, size_t *got, char *err,
                           size_t errlen) {
    *got = fread(buf, 1, want, f);
    if (*got < want && ferror(f)) return bn_io_os_error("read failed", errno, err, errlen);
    return BN_OK;
}

/* Reads exactly h->nbytes of data and then expects the end of the file. known_rest is the
 * number of bytes left in a regular file (checked first, so a lying header never makes us
 * allocate), or -1 for a pipe or device, which is read in growing chunks. */
static bn_status read_data(FILE *f, const npy_header *h, long long known_rest, void **out,
                           char *err, size_t errlen) {
    size_t want = h->nbytes;
    if (known_rest >= 0 && (unsigned long long)known_rest != (unsigned long long)want)
        return data_size_error(h, (size_t)known_rest, 0, err, errlen);
    size_t cap = known_rest >= 0 || want < NPY_READ_CHUNK ? want : NPY_READ_CHUNK;
    unsigned char *buf = alloc_data(cap, err, errlen);
    if (!buf) return BN_ERR_TOO_LARGE;
    size_t have = 0;
    bn_status st = BN_OK;
    while (have < want) {
        if (have == cap) {
            size_t grown = cap > want - cap ? want : 2 * cap;
            unsigned char *p = realloc(buf, grown);
            if (!p) {
                st = BN_ERR_TOO_LARGE;
                bn_io_set_err(err, errlen, "out of memory: cannot allocate %zu bytes for the data",
                              grown);
                break;
            }
            buf = p;
            cap = grown;
        }
        size_t got;
        st = read_some(f, buf + have, cap - have, &got, err, errlen);
        have += got;
        if (st != BN_OK || got == 0) break;
    }
    if (st == BN_OK && have < want) st = data_size_error(h, have, 0, err, errlen);
    if (st == BN_OK) { /* anything after the data? */
        unsigned char extra[4096];
        size_t more = 0, got;
        do {
            st = read_some(f, extra, sizeof extra, &got, err, errlen);
            more += got;
        } while (st == BN_OK && got == sizeof extra && more < ((size_t)1 << 30));
        if (st == BN_OK && more)
            st = data_size_error(h, want + more, got == sizeof extra, err, errlen);
    }
    if (st != BN_OK) {
        free(buf);
        return st;
    }
    *out = buf;
    return BN_OK;
}

/* Reads the preamble and the header of the file f is at the start of. On success *offset is where
 * the data starts and *rest the number of bytes after it (-1 when the size is not known: f is
 * not a regular file, or one that says 0 bytes and has some, as /proc files do). */
static bn_status read_header(FILE *f, npy_header *h, size_t *offset, long long *rest, char *err,
                             size_t errlen) {
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) return bn_io_os_error("cannot stat", errno, err, errlen);
    if (S_ISDIR(sb.st_mode)) return bn_io_os_error("cannot read", EISDIR, err, errlen);
    int regular = S_ISREG(sb.st_mode);
    unsigned char start[12];
    size_t got;
    bn_status st = read_some(f, start, sizeof start, &got, err, errlen);
    if (st != BN_OK) return st;
    if (regular && sb.st_size == 0 && got > 0) regular = 0; /* /proc, /sys: read as a stream */
    /* For a pipe the length is unknown: pretend it is just long enough for the header, and let
     * the short reads below tell the truth. */
    size_t file_len = regular ? (size_t)sb.st_size : got < sizeof start ? got : SIZE_MAX;
    npy_preamble pre;
    st = parse_preamble(&pre, start, got, file_len, err, errlen);
    if (st != BN_OK) return st;

    char *text = malloc(pre.header_len ? pre.header_len : 1);
    if (!text) {
        bn_io_set_err(err, errlen, "out of memory reading a %zu-byte header", pre.header_len);
        return BN_ERR_TOO_LARGE;
    }
    size_t in_start = got - pre.prefix_len; /* header bytes already read with the preamble */
    if (in_start > pre.header_len) in_start = pre.header_len;
    memcpy(text, start + pre.prefix_len, in_start);
    st = read_some(f, text + in_start, pre.header_len - in_start, &got, err, errlen);
    if (st == BN_OK && in_start + got < pre.header_len) {
        bn_io_set_err(err, errlen,
                      "header longer than the file: the header length field says %zu "
                      "bytes, but only %zu bytes follow it",
                      pre.header_len, in_start + got);
        st = BN_ERR_FORMAT;
    }
    if (st == BN_OK) st = parse_header(h, text, pre.header_len, err, errlen);
    free(text);
    if (st != BN_OK) return st;
    /* The preamble read above took 12 bytes; with a version 1 header of under 2 bytes some of
     * them were data, but such a header ("" or "{") never parses, so nothing is lost. */
    *offset = pre.prefix_len + pre.header_len;
    *rest = regular ? (long long)(file_len - *offset) : -1;
    return BN_OK;
}

static bn_status read_file(bn_npy *arr, FILE *f, char *err, size_t errlen) {
    npy_header h;
    size_t offset;
    long long rest;
    bn_status st = read_header(f, &h, &offset, &rest, err, errlen);
    if (st != BN_OK) return st;
    void *raw;
    st = read_data(f, &h, rest, &raw, err, errlen);
    if (st != BN_OK) return st;
    return finish(arr, &h, raw, err, errlen);
}

bn_status bn_npy_read(bn_npy *arr, const char *path, char *err, size_t errlen) {
    if (!arr || !path) {
        bn_io_set_err(err, errlen, "a required argument is NULL");
        return BN_ERR_NULL_POINTER;
    }
    memset(arr, 0, sizeof *arr);
    FILE *f = fopen(path, "rb");
    if (!f) return bn_io_os_error("cannot open", errno, err, errlen);
    bn_status st = read_file(arr, f, err, errlen);
    fclose(f); /* read-only: nothing to lose */
    return st;
}


/* ---------------------------------------------------------------------------------------------
 * Reading a file in pieces.
 */

bn_status bn_npy_stream_open(bn_npy_stream *s, const char *path, char *err, size_t errlen) {
    if (!s || !path) {
        bn_io_set_err(err, errlen, "a required argument is NULL");
        return BN_ERR_NULL_POINTER;
    }
    memset(s, 0, sizeof *s);
    FILE *f;
    bn_status st = bn_open_regular(&f, path, err, errlen);
    if (st != BN_OK) return st;
    npy_header h;
    size_t offset;
    long long rest;
    st = read_header(f, &h, &offset, &rest, err, errlen);
    if (st == BN_OK && rest < 0) {
        bn_io_set_err(err, errlen,
                      "the file system gives no size for it (it says 0 bytes): it cannot "
                      "be read in pieces");
        st = BN_ERR_IO;
    }
    if (st == BN_OK && (unsigned long long)rest != (unsigned long long)h.nbytes)
        st = data_size_error(&h, (size_t)rest, 0, err, errlen);
    if (st == BN_OK && h.fortran && h.ndim > 1 && h.count > 1) {
        bn_io_set_err(err, errlen,
                      "a Fortran-order array cannot be read sample by sample; save it in "
                      "C order (numpy.ascontiguousarray)");
        st = BN_ERR_UNSUPPORTED;
    }
    if (st != BN_OK) {
        fclose(f);
        return st;
    }
    s->file = f;
    s->dtype = h.dtype;
    s->swap = h.swap;
    s->ndim = h.ndim;
    memcpy(s->dims, h.dims, sizeof s->dims);
    s->count = h.count;
    s->data_offset = (int64_t)offset;
    return BN_OK;
}

bn_status bn_npy_stream_read(bn_npy_stream *s, void *out, int64_t first, int64_t count,
                             char *err, size_t errlen) {
    if (!s || !s->file || (!out && count)) {
        bn_io_set_err(err, errlen, "a required argument is NULL");
        return BN_ERR_NULL_POINTER;
    }
    if (first < 0 || count < 0 || first > s->count || count > s->count - first) {
        bn_io_set_err(err, errlen, "elements [%lld, %lld) are outside the array's %lld",
                      (long long)first, (long long)(first + count), (long long)s->count);
        return BN_ERR_SHAPE;
    }
    const size_t size = dtype_size(s->dtype);
    const off_t at = (off_t)(s->data_offset + first * (int64_t)size);
    if (s->position != at && fseeko(s->file, at, SEEK_SET) != 0)
        return bn_io_os_error("seek failed", errno, err, errlen);
    size_t got = fread(out, size, (size_t)count, s->file);
    if (got < (size_t)count) {
        if (ferror(s->file)) return bn_io_os_error("read failed", errno, err, errlen);
        bn_io_set_err(err, errlen,
                      "the file is shorter than its header says (it changed while being "
                      "read?)");
        return BN_ERR_FORMAT;
    }
    s->position = at + (off_t)(count * (int64_t)size);
    if (s->swap) bn_io_swap_bytes(out, count, size);
    return BN_OK;
}

void bn_npy_stream_close(bn_npy_stream *s) {
    if (!s) return;
    if (s->file) fclose(s->file);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------------------------------------
 * Writing a file.
 */

/* The version 1.0 preamble and header for (dtype, dims), padded with spaces so that the data
 * starts at a multiple of NPY_ALIGN, ending with '\n'. Returns its length. */
static size_t format_header(char *out, size_t outlen, bn_dtype dtype, int ndim,
                            const int64_t *dims) {
    char shape[BN_NPY_MAX_NDIM * 22 + 8];
    bn_npy_shape_string(shape, sizeof shape, ndim, dims);
    char descr[4] = {host_is_little_endian() ? '<' : '>', 'f', (char)('0' + dtype_size(dtype))};
    int dict = snprintf(out + 10, outlen - 10,
                        "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr, shape);
    size_t total = 10 + (size_t)dict + 1; /* + '\n' */
    total = (total + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    size_t hlen = total - 10;
    memcpy(out, npy_magic, sizeof npy_magic);
    out[6] = 1;
    out[7] = 0;
    out[8] = (char)(hlen & 0xff);
    out[9] = (char)(hlen >> 8);
    memset(out + 10 + dict, ' ', total - 1 - 10 - (size_t)dict);
    out[total - 1] = '\n';
    return total;
}

bn_status bn_npy_write(const char *path, bn_dtype dtype, int ndim, const int64_t *dims,
                       const void *data, char *err, size_t errlen) {
    if (!path || (ndim > 0 && !dims)) {
        bn_io_set_err(err, errlen, "a required argument is NULL");
        return BN_ERR_NULL_POINTER;
    }
    size_t size = dtype_size(dtype);
    if (size == 0) {
        bn_io_set_err(err, errlen, "dtype %d is not supported: only float32 and float64",
                      (int)dtype);
        return BN_ERR_UNSUPPORTED;
    }
    if (ndim < 0 || ndim > BN_NPY_MAX_NDIM) {
        bn_io_set_err(err, errlen, "%d dimensions: a .npy array has 0 to %d", ndim,
                      BN_NPY_MAX_NDIM);
        return BN_ERR_SHAPE;
    }
    int64_t count, bytes;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 0) {
            bn_io_set_err(err, errlen, "negative size %lld in dimension %d", (long long)dims[i], i);
            return BN_ERR_SHAPE;
        }
    }
    if (!shape_count(ndim, dims, &count)) {
        bn_io_set_err(err, errlen, "the shape has more elements than 64 bits can count");
        return BN_ERR_TOO_LARGE;
    }
    if (!mul_checked(count, (int64_t)size, &bytes) || (uint64_t)bytes > (uint64_t)SIZE_MAX) {
        bn_io_set_err(err, errlen, "the array is too large to address in memory");
        return BN_ERR_TOO_LARGE;
    }
    if (bytes && !data) {
        bn_io_set_err(err, errlen, "a required argument is NULL");
        return BN_ERR_NULL_POINTER;
    }
    char header[2048];
    size_t hlen = format_header(header, sizeof header, dtype, ndim, dims);
    return bn_write_output(path, header, hlen, data, (size_t)bytes, err, errlen);
}
