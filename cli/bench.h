/* bench.h - what the parts of `bnorm bench` share: a case (shape, layout, mode, threads, dtype)
 * and what it measured. bench.c reads the command line and walks the grid, bench_case.c times
 * one case, roofline.c holds the streaming kernels it is compared with, bench_report.c prints
 * the results. */
#ifndef BN_CLI_BENCH_H
#define BN_CLI_BENCH_H

#include "bnorm.h"

#include <stddef.h>
#include <stdint.h>

enum { BENCH_TRAIN, BENCH_EVAL, BENCH_BACKWARD, BENCH_MODES };
extern const char *const bench_mode_names[BENCH_MODES]; /* "train", "eval", "backward" */

enum { BENCH_MAX_DIMS = 5 };

/* One shape of the grid, in one layout: dims in logical order (N, C, ...). */
typedef struct bench_shape {
    int ndim;
    int64_t dims[BENCH_MAX_DIMS];
    bn_layout layout;
} bench_shape;

/* One timed case. */
typedef struct bench_case {
    bench_shape shape;
    int mode;    /* BENCH_TRAIN, BENCH_EVAL or BENCH_BACKWARD */
    int threads;
    bn_dtype dtype;
    int fuse;    /* BENCH_FUSE_NONE, BENCH_FUSE_RELU or BENCH_FUSE_ADD_RELU */
} bench_case;

/* --fuse: the fused calls (bn_forward_*_relu, bn_backward_*_relu), with z for add-relu */
enum { BENCH_FUSE_NONE, BENCH_FUSE_RELU, BENCH_FUSE_ADD_RELU };

/* What one case measured: times per call in ns. */
typedef struct bench_result {
    double median_ns, min_ns, roofline_ns, roofline_min_ns;
    double bytes, tensor_bytes;
    int repeat, inner, roofline_inner;
    const char *roofline_kind;
    char plan[768]; /* what the library chose for this case (src/plan.h), as one line */
} bench_result;

/* ---- bench_case.c ---- */

/*
 * Allocates and fills the case's buffers, times the library's call and the roofline
 * alternately, `repeat` times (0: enough for about 0.4 s), frees the buffers.
 * @return CLI_OK with *res filled, or CLI_RUNTIME_ERROR, already reported.
 */
int bench_run_case(const bench_case *bc, int repeat, bench_result *res);

/* The library's plan of the case on this machine (src/plan.h), as one line; "" for a shape
 * the library refuses. */
void bench_plan(const bench_case *bc, char *buf, size_t size);

/* This machine as the plan sees it: the CPU model (/proc/cpuinfo) and the caches /sys reports. */
void bench_machine(char *buf, size_t size);

/* ---- roofline.c: y = x * 1.5 + 0.25 (forward), dx = dy * 1.5 + x * 0.25 (backward) ---- */

/* The variants: ordinary stores, and non-temporal stores of 16 and of 64 bytes. */
enum { ROOF_STORE, ROOF_NT128, ROOF_NT512, ROOF_KINDS };

/* "store", "ntstore128", "ntstore512". */
const char *bench_roofline_name(int kind);

/* Whether this build and this CPU have the variant. */
int bench_roofline_available(int kind);

/* The forward roofline: y, x (n) of dtype, the work split statically over `threads`. */
void bench_roofline_forward(int kind, bn_dtype dtype, void *y, const void *x, ptrdiff_t n,
                            int threads);

/* The backward roofline: dx, dy, x (n) of dtype, the work split statically over `threads`. */
void bench_roofline_backward(int kind, bn_dtype dtype, void *dx, const void *dy, const void *x,
                             ptrdiff_t n, int threads);

/* ---- bench_report.c ---- */

/* The case as "32x64x56x56". */
void bench_shape_string(char *buf, size_t size, const bench_shape *g);

/* The table's title and column names. */
void bench_print_header(void);

/* One case: a table row, or (json) one JSON object on a line. */
void bench_print_result(const bench_case *bc, const bench_result *r, int json);

/* --plan: the case and the library's plan of it, untimed; a JSON object with --json. */
void bench_print_plan(const bench_case *bc, int json);

#endif /* BN_CLI_BENCH_H */
