/* bench_report.c - what `bnorm bench` prints: a table (a title, the column names, one row per
 * case, each followed by the library's plan of the case) or one JSON object per case and line,
 * with the keys bench/run.py reads and the plan. */
#include "bench.h"

#include <stdio.h>

void bench_shape_string(char *buf, size_t size, const bench_shape *g) {
    size_t len = 0;
    buf[0] = '\0';
    for (int k = 0; k < g->ndim && len < size; k++)
        len += (size_t)snprintf(buf + len, size - len, "%s%lld", k ? "x" : "",
                                (long long)g->dims[k]);
}

/* "123 ns", "45.6 us", "7.89 ms", "1.23 s" */
static const char *fmt_time(char *buf, size_t size, double ns) {
    if (ns < 1e3) snprintf(buf, size, "%.0f ns", ns);
    else if (ns < 1e6) snprintf(buf, size, "%.2f us", ns / 1e3);
    else if (ns < 1e9) snprintf(buf, size, "%.3f ms", ns / 1e6);
    else snprintf(buf, size, "%.3f s", ns / 1e9);
    return buf;
}

void bench_print_header(void) {
    char machine[640];
    bench_machine(machine, sizeof machine);
    printf("bnorm %s bench: median (and min) time per call; roofline = a streaming kernel moving\n"
           "the same bytes on the same threads; %% of roofline = roofline time / our time\n"
           "machine: %s\n\n",
           bn_version_string(), machine);
    printf("%-16s %-6s %-9s %3s %-5s %11s %11s %10s %8s %11s %7s\n", "shape", "layout", "mode",
           "thr", "dtype", "median", "min", "MB moved", "GB/s", "roofline", "% roof");
}

void bench_print_plan(const bench_case *bc, int json) {
    char shape[96], plan[768];
    bench_shape_string(shape, sizeof shape, &bc->shape);
    bench_plan(bc, plan, sizeof plan);
    const char *layout = bc->shape.layout == BN_CHANNELS_LAST ? "nhwc" : "nchw";
    static const char *const names[] = {"f32", "f64", "bf16", "f16"};
    const char *dtype = names[bc->dtype];
    if (json)
        printf("{\"shape\": \"%s\", \"layout\": \"%s\", \"mode\": \"%s\", \"threads\": %d, "
               "\"dtype\": \"%s\", \"plan\": \"%s\"}\n",
               shape, layout, bench_mode_names[bc->mode], bc->threads, dtype, plan);
    else
        printf("%s %s %s threads=%d %s\n  plan: %s\n", shape, layout, bench_mode_names[bc->mode],
               bc->threads, dtype, plan);
}

/* --fuse, by BENCH_FUSE_*: its name, and its JSON member (none without it). */
static const char *const fuse_names[] = {"", "relu", "add-relu"};
static const char *const fuse_json[] = {"", "\"fuse\": \"relu\", ", "\"fuse\": \"add-relu\", "};

void bench_print_result(const bench_case *bc, const bench_result *r, int json) {
    char shape[96], t1[32], t2[32], t3[32];
    bench_shape_string(shape, sizeof shape, &bc->shape);
    const char *layout = bc->shape.layout == BN_CHANNELS_LAST ? "nhwc" : "nchw";
    static const char *const names[] = {"f32", "f64", "bf16", "f16"};
    const char *dtype = names[bc->dtype];
    double gbps = r->bytes / r->median_ns, roof_gbps = r->bytes / r->roofline_ns;
    double pct = 100.0 * r->roofline_ns / r->median_ns;
    if (json) {
        printf("{\"peer\": \"bnorm\", \"shape\": \"%s\", \"layout\": \"%s\", \"mode\": \"%s\", "
               "\"threads\": %d, \"dtype\": \"%s\", \"median_ns\": %.3f, \"min_ns\": %.3f, "
               "\"bytes\": %.0f, \"gbps\": %.4f, \"roofline_ns\": %.3f, "
               "\"roofline_min_ns\": %.3f, \"roofline_gbps\": %.4f, \"roofline_pct\": %.3f, "
               "\"roofline_kind\": \"%s\", "
               "\"repeat\": %d, \"inner\": %d, \"roofline_inner\": %d, \"tensor_bytes\": %.0f, "
               "\"lib_threads\": %d, \"version\": \"%s\", %s\"plan\": \"%s\"}\n",
               shape, layout, bench_mode_names[bc->mode], bc->threads, dtype, r->median_ns,
               r->min_ns, r->bytes, gbps, r->roofline_ns, r->roofline_min_ns, roof_gbps, pct,
               r->roofline_kind, r->repeat, r->inner, r->roofline_inner, r->tensor_bytes,
               bn_get_num_threads(), bn_version_string(), fuse_json[bc->fuse], r->plan);
    } else {
        printf("%-16s %-6s %-9s %3d %-5s %11s %11s %10.2f %8.2f %11s %6.1f%%\n", shape, layout,
               bench_mode_names[bc->mode], bc->threads, dtype,
               fmt_time(t1, sizeof t1, r->median_ns), fmt_time(t2, sizeof t2, r->min_ns),
               r->bytes / 1e6, gbps, fmt_time(t3, sizeof t3, r->roofline_ns), pct);
        printf("  plan: %s\n", r->plan);
        if (bc->fuse) printf("  fused: %s\n", fuse_names[bc->fuse]);
    }
    fflush(stdout);
}
