/*
 * bnorm_state.h - a batch norm layer's state in safetensors files, under PyTorch's state_dict
 * key names: libbnorm_state, beside libbnorm.
 *
 * WHAT IT DOES
 *
 *   A torch.nn.BatchNorm1d/2d/3d layer's state_dict holds up to five tensors, under the layer's
 *   prefix in its model ("layer1.0.bn1." in a ResNet):
 *
 *     PREFIXweight                (C)  float    the affine scale    (absent: affine=False)
 *     PREFIXbias                  (C)  float    the affine shift    (absent: affine=False)
 *     PREFIXrunning_mean          (C)  float    running statistics  (absent:
 *     PREFIXrunning_var           (C)  float                         track_running_stats=False)
 *     PREFIXnum_batches_tracked   ()   int64    training calls counted
 *
 *   bn_state_read() takes one layer's tensors out of a safetensors file that holds any number of
 *   other tensors (a whole checkpoint: convolutions, other layers, tensors of any of the
 *   format's dtypes), into a bn_state whose arrays go straight to bn_forward_eval() of
 *   bnorm.h. bn_state_open() and bn_state_get() read a file once and take many layers out of it.
 *   bn_state_write() and bn_state_write_layers() write one or many layers' states, which
 *   torch.nn.BatchNorm2d.load_state_dict() accepts. eps and momentum are constructor arguments,
 *   not state: they are in no file (torch's defaults: 1e-5 and 0.1).
 *
 * THE FILES
 *
 *   safetensors (huggingface/safetensors): 8 bytes, the header's length N (unsigned,
 *   little-endian); N bytes of JSON, {"KEY": {"dtype": "F32", "shape": [C], "data_offsets":
 *   [BEGIN, END]}, ..., "__metadata__": {...}}; then the tensors' bytes, little-endian, C
 *   order. Reading checks all of it against the file's size before any value is used: the
 *   header's length and JSON, every entry's dtype, shape and offsets, and that the tensors tile
 *   the data without holes or overlaps; a malformed file is an error, never a crash. Files are
 *   read into memory whole, once per bn_state_open() or bn_state_read().
 *
 *   Keys are the prefix followed by the tensor's name. A prefix that is not empty and does not
 *   end in '.' gets one ("layer1.0.bn1" and "layer1.0.bn1." both name layer1.0.bn1.weight);
 *   NULL or "" is no prefix (a BatchNorm module's own state_dict: "weight", ...). Keys match
 *   exactly: "bn1." never finds "bn10.weight".
 *
 *   Reading takes float tensors of dtype F32 (PyTorch's float32 checkpoints) or F64, all of a
 *   layer's in the same one, each of shape (C) with the same C >= 1; num_batches_tracked is I64
 *   of shape () (torch's 0-dim tensor) or (1), and >= 0. weight and bias come together or not
 *   at all, as do running_mean and running_var; num_batches_tracked is optional (checkpoints
 *   older than PyTorch 0.4.1 have none). Writing writes what reading reads: the float tensors in
 *   the state's dtype, num_batches_tracked as I64 of shape (), in state_dict order, with the
 *   metadata {"format": "pt"} that torch's safetensors writer puts there.
 *
 * ERRORS
 *
 *   Every function but bn_state_free() and bn_state_close() returns a bn_status (bnorm.h;
 *   bn_status_string() of libbnorm says what it means) and takes err, errlen: a buffer that
 *   receives one line naming the problem (the key, the dtype or shape found; not the file's
 *   name, which the caller knows), NUL-terminated and cut to errlen bytes; err may be NULL or
 *   errlen 0. It is left alone on success.
 *     BN_ERR_NULL_POINTER   a required pointer is NULL
 *     BN_ERR_IO             the file cannot be read or written (missing, a directory, a FIFO,
 *                           no permission, disk full)
 *     BN_ERR_FORMAT         not a safetensors file, or a malformed one; a layer's tensors
 *                           missing (none under the prefix, weight without bias...), of the
 *                           wrong shape, of mixed dtypes; num_batches_tracked not an I64 scalar
 *     BN_ERR_UNSUPPORTED    a float tensor of the layer in another dtype than F32 or F64 (F16,
 *                           BF16...); a dtype the format does not name anywhere in the file
 *     BN_ERR_SHAPE          writing: c < 1
 *     BN_ERR_TOO_LARGE      writing: the sizes overflow
 *     BN_ERR_ARGUMENT       writing: half of a pair, no tensor at all, a negative
 *                           num_batches_tracked, n < 1, a prefix that is not UTF-8, two layers
 *                           with the same keys
 *     BN_ERR_NO_MEMORY      an allocation failed
 *   On failure nothing is allocated or held (an output bn_state is zeroed, an output
 *   bn_state_file * set to NULL) and no file is created or changed: a file is written to a
 *   temporary file beside it, fsync'ed and renamed over it, so it is replaced whole or left
 *   exactly as it was (a symbolic link is followed; a device or FIFO is written in place).
 *
 * THREAD SAFETY
 *
 *   The calls share nothing a caller can observe. bn_state_get() may run concurrently on the
 *   same bn_state_file from any number of threads; distinct files and states may be used from
 *   any threads at once. Two writes of the same path at once each rename a whole file over it:
 *   the last one stays.
 *
 * BUILDING
 *
 *   cc prog.c -lbnorm_state -lbnorm (pkg-config --cflags --libs bnorm_state), or with the static
 *   libraries: cc prog.c libbnorm_state.a -lcjson libbnorm.a -fopenmp -lm. libbnorm_state
 *   needs cJSON (libcjson); libbnorm needs neither it nor this library.
 *
 * EXAMPLE (a float32 checkpoint's BatchNorm2d layers in eval mode: ./example FILE PREFIX...)
 *
 *   #include <bnorm.h>
 *   #include <bnorm_state.h>
 *   #include <stdio.h>
 *   #include <stdlib.h>
 *
 *   int main(int argc, char **argv) {
 *       if (argc < 3) { fprintf(stderr, "usage: %s FILE PREFIX...\n", argv[0]); return 2; }
 *       char err[256];
 *       bn_state_file *file;
 *       if (bn_state_open(&file, argv[1], err, sizeof err) != BN_OK) {
 *           fprintf(stderr, "%s: %s\n", argv[1], err);
 *           return 1;
 *       }
 *       int failed = 0;
 *       for (int k = 2; k < argc && !failed; k++) {
 *           bn_state bn;                                   // one layer: "layer1.0.bn1."
 *           if (bn_state_get(&bn, file, argv[k], err, sizeof err) != BN_OK) {
 *               fprintf(stderr, "%s: %s\n", argv[1], err);
 *               failed = 1;
 *               continue;
 *           }
 *           enum { N = 2, H = 2, W = 2 };                  // an (N, C, H, W) input
 *           int64_t dims[4] = {N, bn.c, H, W}, m = N * bn.c * H * W;
 *           float *x = malloc(sizeof(float) * (size_t)m), *y = malloc(sizeof(float) * (size_t)m);
 *           bn_desc desc;
 *           bn_status st = x && y && bn.dtype == BN_FLOAT32 ? BN_OK : BN_ERR_UNSUPPORTED;
 *           for (int64_t i = 0; st == BN_OK && i < m; i++) x[i] = (float)(i % 7) - 3;
 *           if (st == BN_OK)
 *               st = bn_desc_from_dims(&desc, 4, dims, BN_FLOAT32, BN_CHANNELS_FIRST);
 *           if (st == BN_OK)                               // weight and bias may be NULL
 *               st = bn_forward_eval(y, x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
 *                                    &desc, 1e-5);
 *           if (st == BN_OK)
 *               printf("%s: C = %lld, num_batches_tracked = %lld, y[0] = %.9g, y[%lld] = %.9g\n",
 *                      argv[k], (long long)bn.c, (long long)bn.num_batches_tracked, y[0],
 *                      (long long)(m - 1), y[m - 1]);
 *           else
 *               fprintf(stderr, "%s: %s\n", argv[k], bn_status_string(st)), failed = 1;
 *           free(x);
 *           free(y);
 *           bn_state_free(&bn);
 *       }
 *       bn_state_close(file);
 *       return failed;
 *   }
 *
 * Writing, for instance the statistics a C program estimated for two layers:
 *
 *   bn_state layers[2] = {{.c = C, .dtype = BN_FLOAT32, .running_mean = mean0,
 *                          .running_var = var0, .num_batches_tracked = 1,
 *                          .has_num_batches_tracked = 1}, ...};
 *   const char *prefixes[2] = {"bn1.", "bn2."};
 *   st = bn_state_write_layers("stats.safetensors", 2, prefixes, layers, err, sizeof err);
 */
#ifndef BNORM_STATE_H
#define BNORM_STATE_H

#include "bnorm.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One batch norm layer's state. Arrays hold c elements of dtype; a NULL pointer is a tensor the
 * layer does not have. */
typedef struct bn_state {
    int64_t c;                     /* channels, >= 1 */
    bn_dtype dtype;                /* of the four arrays: BN_FLOAT32 or BN_FLOAT64 */
    void *weight, *bias;           /* (C) each, or both NULL (affine=False) */
    void *running_mean;            /* (C), or NULL with running_var NULL */
    void *running_var;             /* (C), or NULL with running_mean NULL */
    int64_t num_batches_tracked;   /* >= 0; meaningful when has_num_batches_tracked */
    int has_num_batches_tracked;   /* nonzero: the layer has a num_batches_tracked tensor */
} bn_state;

/* A safetensors file read into memory (opaque). */
typedef struct bn_state_file bn_state_file;

/*
 * Reads the safetensors file at path into memory and checks it whole (see THE FILES); the
 * layers are then taken out of it by bn_state_get(), and it is released by bn_state_close().
 * file: out, *file set to a new bn_state_file, or to NULL on failure. path: in.
 * @return BN_OK; BN_ERR_NULL_POINTER (file or path NULL), BN_ERR_IO, BN_ERR_FORMAT,
 *         BN_ERR_UNSUPPORTED (a dtype the format does not name), BN_ERR_NO_MEMORY.
 */
BN_API bn_status bn_state_open(bn_state_file **file, const char *path, char *err, size_t errlen);

/*
 * Takes the state of the layer whose keys start with prefix out of file: the arrays are copied
 * into new allocations (aligned; the file may be closed afterwards), which bn_state_free()
 * releases. out: out, overwritten (zeroed on failure). file: in, not changed. prefix: in, NULL
 * for none.
 * @return BN_OK; BN_ERR_NULL_POINTER (out or file NULL), BN_ERR_FORMAT (see ERRORS),
 *         BN_ERR_UNSUPPORTED, BN_ERR_NO_MEMORY.
 */
BN_API bn_status bn_state_get(bn_state *out, const bn_state_file *file, const char *prefix,
                              char *err, size_t errlen);

/* Releases what bn_state_open() holds; file may be NULL. */
BN_API void bn_state_close(bn_state_file *file);

/*
 * bn_state_open(), bn_state_get() and bn_state_close() in one call: one layer's state out of
 * the file at path. out: out, overwritten (zeroed on failure); free it with bn_state_free().
 * @return as bn_state_open() and bn_state_get().
 */
BN_API bn_status bn_state_read(bn_state *out, const char *path, const char *prefix, char *err,
                               size_t errlen);

/* Frees the arrays of a state that bn_state_get() or bn_state_read() filled, and zeroes it;
 * state may be NULL. Not for a state whose arrays the caller allocated. */
BN_API void bn_state_free(bn_state *state);

/*
 * Writes the states of n layers, layer k's tensors under prefixes[k] (NULL for none), to the
 * safetensors file at path, replaced atomically (left as it was on failure). prefixes: (n);
 * states: (n), in, not changed.
 * @return BN_OK; BN_ERR_NULL_POINTER (path, prefixes or states NULL), BN_ERR_SHAPE (a c < 1),
 *         BN_ERR_TOO_LARGE, BN_ERR_UNSUPPORTED (a dtype), BN_ERR_ARGUMENT (see ERRORS),
 *         BN_ERR_IO, BN_ERR_NO_MEMORY.
 */
BN_API bn_status bn_state_write_layers(const char *path, int n, const char *const *prefixes,
                                       const bn_state *states, char *err, size_t errlen);

/* bn_state_write_layers() of one layer: state's tensors under prefix (NULL for none). */
BN_API bn_status bn_state_write(const char *path, const char *prefix, const bn_state *state,
                                char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* BNORM_STATE_H */
