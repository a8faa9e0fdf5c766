/* state.c - a batch norm layer's state in safetensors files, under state_dict keys (see
 * include/bnorm_state.h): the layer's rules (which tensors, shapes and dtypes make a state) on
 * top of io/'s safetensors reader and writer, which check the file itself and replace it
 * atomically. */
#include "bnorm_state.h"
#include "message.h"
#include "safetensors.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bn_state_file {
    cli_st_file st;
};

/* A layer's tensors, in state_dict order; the first four are its (C) float arrays. */
enum { WEIGHT, BIAS, RUNNING_MEAN, RUNNING_VAR, NUM_BATCHES_TRACKED, NTENSORS };
static const char *const tensor_names[NTENSORS] = {"weight", "bias", "running_mean",
                                                   "running_var", "num_batches_tracked"};

static size_t dtype_size(bn_dtype dtype) { return dtype == BN_FLOAT64 ? 8 : 4; }

static bn_status null_error(const char *what, char *err, size_t errlen) {
    bn_io_set_err(err, errlen, "%s is NULL", what);
    return BN_ERR_NULL_POINTER;
}

static bn_status no_memory(char *err, size_t errlen) {
    bn_io_set_err(err, errlen, "out of memory");
    return BN_ERR_NO_MEMORY;
}

/* prefix + name, with a '.' between them when prefix is not empty and ends in none. Caller
 * frees; NULL when out of memory. */
static char *key_of(const char *prefix, const char *name) {
    const size_t p = strlen(prefix), n = strlen(name);
    const size_t dot = p && prefix[p - 1] != '.';
    char *key = malloc(p + dot + n + 1);
    if (!key) return NULL;
    memcpy(key, prefix, p);
    if (dot) key[p] = '.';
    memcpy(key + p + dot, name, n + 1);
    return key;
}

static void free_keys(char *keys[NTENSORS]) {
    for (int k = 0; k < NTENSORS; k++) free(keys[k]);
}

/* The keys of a layer's tensors under prefix; on failure none is held. */
static bn_status make_keys(char *keys[NTENSORS], const char *prefix, char *err, size_t errlen) {
    for (int k = 0; k < NTENSORS; k++) keys[k] = key_of(prefix, tensor_names[k]);
    for (int k = 0; k < NTENSORS; k++)
        if (!keys[k]) {
            free_keys(keys);
            memset(keys, 0, sizeof(char *) * NTENSORS);
            return no_memory(err, errlen);
        }
    return BN_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Reading.
 */

bn_status bn_state_open(bn_state_file **file, const char *path, char *err, size_t errlen) {
    if (!file) return null_error("file", err, errlen);
    *file = NULL;
    if (!path) return null_error("path", err, errlen);
    bn_state_file *f = malloc(sizeof *f);
    if (!f) return no_memory(err, errlen);
    /* the other tensors of a checkpoint may be of any of the format's dtypes */
    bn_status st = cli_safetensors_read_any(&f->st, path, err, errlen);
    if (st != BN_OK) {
        free(f);
        return st;
    }
    *file = f;
    return BN_OK;
}

void bn_state_close(bn_state_file *file) {
    if (!file) return;
    cli_safetensors_free(&file->st);
    free(file);
}

/* "(2, 3, 3, 3)", "()" */
static const char *shape_text(char *buf, size_t len, const cli_st_tensor *t) {
    size_t at = (size_t)snprintf(buf, len, "(");
    for (int k = 0; k < t->ndim && at < len; k++)
        at += (size_t)snprintf(buf + at, len - at, "%s%lld", k ? ", " : "", (long long)t->dims[k]);
    if (at < len) snprintf(buf + at, len - at, ")");
    return buf;
}

/* The float tensors t[WEIGHT .. RUNNING_VAR] that are present: pairs complete, F32 or F64, one
 * dtype, each (C) with the same C >= 1, found in *c and *dtype. */
static bn_status check_floats(int64_t *c, bn_dtype *dtype, const cli_st_tensor *const t[NTENSORS],
                              char *const keys[NTENSORS], const char *prefix, char *err,
                              size_t errlen) {
    char shape[200];
    if (!t[WEIGHT] && !t[BIAS] && !t[RUNNING_MEAN] && !t[RUNNING_VAR]) {
        bn_io_set_err(err, errlen,
                      "no batch norm state under the prefix \"%s\": none of \"%s\", \"%s\", "
                      "\"%s\", \"%s\"",
                      prefix, keys[WEIGHT], keys[BIAS], keys[RUNNING_MEAN], keys[RUNNING_VAR]);
        return BN_ERR_FORMAT;
    }
    for (int k = WEIGHT; k <= RUNNING_MEAN; k += 2) /* the pairs (weight, bias), (mean, var) */
        if (!t[k] != !t[k + 1]) {
            const int has = t[k] ? k : k + 1;
            bn_io_set_err(err, errlen, "\"%s\" without \"%s\"", keys[has], keys[has ^ 1]);
            return BN_ERR_FORMAT;
        }
    int first = -1;
    for (int k = WEIGHT; k <= RUNNING_VAR; k++) {
        if (!t[k]) continue;
        if (t[k]->dtype != CLI_ST_F32 && t[k]->dtype != CLI_ST_F64) {
            bn_io_set_err(err, errlen, "\"%s\": dtype %s is not supported (only F32 and F64)",
                          keys[k], cli_safetensors_dtype_name(t[k]->dtype));
            return BN_ERR_UNSUPPORTED;
        }
        if (t[k]->ndim != 1 || t[k]->dims[0] < 1) {
            bn_io_set_err(err, errlen, "\"%s\": shape %s, not (C) with C >= 1", keys[k],
                          shape_text(shape, sizeof shape, t[k]));
            return BN_ERR_FORMAT;
        }
        if (first < 0) {
            first = k;
            continue;
        }
        if (t[k]->dims[0] != t[first]->dims[0] || t[k]->dtype != t[first]->dtype) {
            bn_io_set_err(err, errlen, "\"%s\" is %s of %lld values, but \"%s\" %s of %lld",
                          keys[first], cli_safetensors_dtype_name(t[first]->dtype),
                          (long long)t[first]->dims[0], keys[k],
                          cli_safetensors_dtype_name(t[k]->dtype), (long long)t[k]->dims[0]);
            return BN_ERR_FORMAT;
        }
    }
    *c = t[first]->dims[0];
    *dtype = t[first]->dtype == CLI_ST_F64 ? BN_FLOAT64 : BN_FLOAT32;
    return BN_OK;
}

/* num_batches_tracked: an I64 of shape () or (1), >= 0, into *value. */
static bn_status check_count(int64_t *value, const cli_st_tensor *t, const char *key, char *err,
                             size_t errlen) {
    char shape[200];
    if (t->dtype != CLI_ST_I64 || t->count != 1 || t->ndim > 1) {
        bn_io_set_err(err, errlen, "\"%s\": %s of shape %s, not I64 of shape () or (1)", key,
                      cli_safetensors_dtype_name(t->dtype), shape_text(shape, sizeof shape, t));
        return BN_ERR_FORMAT;
    }
    memcpy(value, t->data, sizeof *value); /* the file's data may be unaligned */
    if (*value < 0) {
        bn_io_set_err(err, errlen, "\"%s\" is %lld, a negative count", key, (long long)*value);
        return BN_ERR_FORMAT;
    }
    return BN_OK;
}

bn_status bn_state_get(bn_state *out, const bn_state_file *file, const char *prefix, char *err,
                       size_t errlen) {
    if (!out) return null_error("out", err, errlen);
    memset(out, 0, sizeof *out);
    if (!file) return null_error("file", err, errlen);
    if (!prefix) prefix = "";
    char *keys[NTENSORS];
    bn_status st = make_keys(keys, prefix, err, errlen);
    if (st != BN_OK) return st;
    const cli_st_tensor *t[NTENSORS];
    for (int k = 0; k < NTENSORS; k++) t[k] = cli_safetensors_find(&file->st, keys[k]);
    bn_state s = {0};
    st = check_floats(&s.c, &s.dtype, t, keys, prefix, err, errlen);
    if (st == BN_OK && t[NUM_BATCHES_TRACKED]) {
        st = check_count(&s.num_batches_tracked, t[NUM_BATCHES_TRACKED],
                         keys[NUM_BATCHES_TRACKED], err, errlen);
        s.has_num_batches_tracked = 1;
    }
    free_keys(keys);
    if (st != BN_OK) return st;
    void **arrays[4] = {&s.weight, &s.bias, &s.running_mean, &s.running_var};
    const size_t bytes = (size_t)s.c * dtype_size(s.dtype); /* s.c values are in the file */
    for (int k = WEIGHT; k <= RUNNING_VAR; k++) {
        if (!t[k]) continue;
        if (!(*arrays[k] = malloc(bytes))) {
            bn_state_free(&s);
            return no_memory(err, errlen);
        }
        memcpy(*arrays[k], t[k]->data, bytes);
    }
    *out = s;
    return BN_OK;
}

bn_status bn_state_read(bn_state *out, const char *path, const char *prefix, char *err,
                        size_t errlen) {
    if (!out) return null_error("out", err, errlen);
    memset(out, 0, sizeof *out);
    bn_state_file *file;
    bn_status st = bn_state_open(&file, path, err, errlen);
    if (st != BN_OK) return st;
    st = bn_state_get(out, file, prefix, err, errlen);
    bn_state_close(file);
    return st;
}

void bn_state_free(bn_state *state) {
    if (!state) return;
    free(state->weight);
    free(state->bias);
    free(state->running_mean);
    free(state->running_var);
    memset(state, 0, sizeof *state);
}

/* ---------------------------------------------------------------------------------------------
 * Writing.
 */

/* Whether s is UTF-8 (as JSON text must be): no stray continuation byte, truncated or
 * overlong sequence, surrogate, or code point past U+10FFFF. */
static int is_utf8(const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    while (*s) {
        const unsigned lead = *s++;
        if (lead < 0x80) continue;
        int more;
        uint32_t v, least;
        if ((lead & 0xE0) == 0xC0) more = 1, v = lead & 0x1F, least = 0x80;
        else if ((lead & 0xF0) == 0xE0) more = 2, v = lead & 0x0F, least = 0x800;
        else if ((lead & 0xF8) == 0xF0) more = 3, v = lead & 0x07, least = 0x10000;
        else return 0;
        for (; more > 0; more--, s++) { /* the terminating NUL is no continuation byte */
            if ((*s & 0xC0) != 0x80) return 0;
            v = v << 6 | (*s & 0x3F);
        }
        if (v < least || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    }
    return 1;
}

/* Layer k's state and prefix, as reading would take them; *bytes += its arrays' bytes. */
static bn_status check_layer(size_t *bytes, const bn_state *s, const char *prefix, int k,
                             char *err, size_t errlen) {
    if (s->c < 1) {
        bn_io_set_err(err, errlen, "layer %d: c = %lld, not >= 1", k, (long long)s->c);
        return BN_ERR_SHAPE;
    }
    if (s->dtype != BN_FLOAT32 && s->dtype != BN_FLOAT64) {
        bn_io_set_err(err, errlen, "layer %d: dtype %d is neither BN_FLOAT32 nor BN_FLOAT64", k,
                      (int)s->dtype);
        return BN_ERR_UNSUPPORTED;
    }
    /* the bytes of every layer's arrays, four at most per layer, stay within PTRDIFF_MAX */
    const size_t limit = PTRDIFF_MAX, size = dtype_size(s->dtype);
    if ((uint64_t)s->c > limit / 4 / size || *bytes > limit - 4 * (size_t)s->c * size) {
        bn_io_set_err(err, errlen, "layer %d: c = %lld, too large", k, (long long)s->c);
        return BN_ERR_TOO_LARGE;
    }
    const void *arrays[4] = {s->weight, s->bias, s->running_mean, s->running_var};
    for (int j = WEIGHT; j <= RUNNING_MEAN; j += 2) /* the pairs (weight, bias), (mean, var) */
        if (!arrays[j] != !arrays[j + 1]) {
            const int has = arrays[j] ? j : j + 1;
            bn_io_set_err(err, errlen, "layer %d: %s without %s (they come together)", k,
                          tensor_names[has], tensor_names[has ^ 1]);
            return BN_ERR_ARGUMENT;
        }
    if (!s->weight && !s->running_mean) {
        bn_io_set_err(err, errlen, "layer %d: no weight and bias, nor running_mean and "
                      "running_var: nothing to write", k);
        return BN_ERR_ARGUMENT;
    }
    if (s->has_num_batches_tracked && s->num_batches_tracked < 0) {
        bn_io_set_err(err, errlen, "layer %d: num_batches_tracked = %lld, a negative count", k,
                      (long long)s->num_batches_tracked);
        return BN_ERR_ARGUMENT;
    }
    if (!is_utf8(prefix)) {
        bn_io_set_err(err, errlen, "layer %d: the prefix is not UTF-8 text", k);
        return BN_ERR_ARGUMENT;
    }
    *bytes += ((s->weight ? 2 : 0) + (s->running_mean ? 2 : 0)) * (size_t)s->c * size;
    return BN_OK;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const cli_st_tensor *)a)->name, ((const cli_st_tensor *)b)->name);
}

/* The first name that two of the n tensors share, or NULL (none, or no memory: *st says). */
static const char *repeated_name(const cli_st_tensor *t, int n, bn_status *st) {
    cli_st_tensor *sorted = malloc(sizeof *sorted * (size_t)n);
    if (!sorted) {
        *st = BN_ERR_NO_MEMORY;
        return NULL;
    }
    memcpy(sorted, t, sizeof *sorted * (size_t)n);
    qsort(sorted, (size_t)n, sizeof *sorted, by_name);
    const char *found = NULL;
    for (int k = 1; k < n && !found; k++)
        if (strcmp(sorted[k - 1].name, sorted[k].name) == 0) found = sorted[k].name;
    free(sorted);
    return found;
}

bn_status bn_state_write_layers(const char *path, int n, const char *const *prefixes,
                                const bn_state *states, char *err, size_t errlen) {
    if (!path) return null_error("path", err, errlen);
    if (!prefixes) return null_error("prefixes", err, errlen);
    if (!states) return null_error("states", err, errlen);
    if (n < 1) {
        bn_io_set_err(err, errlen, "n = %d layers, not >= 1", n);
        return BN_ERR_ARGUMENT;
    }
    if (n > INT_MAX / NTENSORS) {
        bn_io_set_err(err, errlen, "n = %d layers, too many", n);
        return BN_ERR_TOO_LARGE;
    }
    bn_status st = BN_OK;
    size_t bytes = 0;
    for (int k = 0; k < n && st == BN_OK; k++)
        st = check_layer(&bytes, &states[k], prefixes[k] ? prefixes[k] : "", k, err, errlen);
    if (st != BN_OK) return st;

    /* the tensors, layer by layer in state_dict order, their names allocated */
    cli_st_tensor *t = calloc((size_t)n * NTENSORS, sizeof *t);
    if (!t) return no_memory(err, errlen);
    int count = 0;
    for (int k = 0; k < n && st == BN_OK; k++) {
        const bn_state *s = &states[k];
        const void *data[NTENSORS] = {s->weight, s->bias, s->running_mean, s->running_var,
                                      s->has_num_batches_tracked ? &s->num_batches_tracked
                                                                 : NULL};
        const int dt = s->dtype == BN_FLOAT64 ? CLI_ST_F64 : CLI_ST_F32;
        for (int j = 0; j < NTENSORS && st == BN_OK; j++) {
            if (!data[j]) continue;
            char *name = key_of(prefixes[k] ? prefixes[k] : "", tensor_names[j]);
            if (!name) {
                st = no_memory(err, errlen);
                break;
            }
            if (j == NUM_BATCHES_TRACKED) /* torch's 0-dim int64 tensor */
                t[count] = (cli_st_tensor){.name = name, .dtype = CLI_ST_I64, .ndim = 0,
                                           .count = 1, .data = data[j]};
            else
                t[count] = (cli_st_tensor){.name = name, .dtype = dt, .ndim = 1,
                                           .dims = {s->c}, .count = s->c, .data = data[j]};
            count++;
        }
    }
    const char *twice = st == BN_OK ? repeated_name(t, count, &st) : NULL;
    if (st == BN_ERR_NO_MEMORY) {
        no_memory(err, errlen);
    } else if (twice) {
        bn_io_set_err(err, errlen, "two layers would write \"%s\"", twice);
        st = BN_ERR_ARGUMENT;
    } else if (st == BN_OK) {
        /* torch's safetensors writer marks its files so */
        st = cli_safetensors_write(path, t, count, "format", "pt", err, errlen);
    }
    for (int k = 0; k < count; k++) free((char *)t[k].name);
    free(t);
    return st;
}

bn_status bn_state_write(const char *path, const char *prefix, const bn_state *state, char *err,
                         size_t errlen) {
    if (!state) return null_error("state", err, errlen);
    return bn_state_write_layers(path, 1, &prefix, state, err, errlen);
}
