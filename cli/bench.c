/* bench.c - `bnorm bench`: times the library's forward (training and eval) and backward passes
 * in-process, next to a streaming kernel that moves the same bytes on the same threads (the
 * memory roofline), and reports each case as a table row or a JSON line. This file reads the
 * options and walks the grid of cases they select; bench_case.c times a case. */
#include "bench.h"
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: bnorm bench [--json] [--plan] [--shape NxC[xHxW...]] [--layout nchw|nhwc]\n"
    "                   [--mode train|eval|backward] [--threads T] [--dtype f32|f64|bf16|f16]\n"
    "                   [--fuse relu|add-relu] [--repeat R]\n";

static const char help[] =
    "usage: bnorm bench [--json] [--plan] [--shape NxC[xHxW...]] [--layout nchw|nhwc]\n"
    "                   [--mode train|eval|backward] [--threads T] [--dtype f32|f64|bf16|f16]\n"
    "                   [--fuse relu|add-relu] [--repeat R]\n"
    "\n"
    "Times bn_forward_train (with running statistics), bn_forward_eval and bn_backward_train\n"
    "in this process, and next to each the memory roofline: a streaming kernel on the same\n"
    "threads that reads and writes the same bytes once (the fastest of plain and non-temporal\n"
    "stores on that case). Forward passes move 8 bytes per element in float32 (read x, write\n"
    "y), backward 12 (read x and dy, write dx); twice that in float64. Buffers are 64-byte\n"
    "aligned, filled with random values and written once before timing; both kernels are\n"
    "warmed up, then timed alternately with CLOCK_MONOTONIC, each timed batch right after two\n"
    "untimed calls of the same kernel. Each case reports the median and the minimum time per\n"
    "call, the bytes moved, the achieved GB/s, the roofline's median time and ours as a\n"
    "percentage of it (100% = at the floor). The table starts with the CPU model and the\n"
    "caches as Linux reports them, and every row is followed by the library's plan of it.\n"
    "\n"
    "Without --shape the default grid runs: 20x2, 256x1024, 32x64x56x56 in nchw and nhwc,\n"
    "32x512x7x7 and 8x256x128x128 (nchw), in every mode, on 1 and 2 threads, in float32.\n"
    "Each option below narrows the grid to what it names.\n"
    "\n"
    "options:\n"
    "  --json          one JSON object per case and line, instead of a table\n"
    "  --plan          time nothing: print each case's plan, what the library chose for it on\n"
    "                  this machine (work items, overlap, chunks, streaming stores) and why, and\n"
    "                  the machine's CPU model and caches as Linux reports them\n"
    "  --shape S       the logical shape N x C x ..., 2 to 5 sizes >= 1 joined by 'x', such as\n"
    "                  32x64x56x56; written N x C x H x W for nhwc too. N times the spatial\n"
    "                  size must be at least 2\n"
    "  --layout L      nchw (channels first) or nhwc (channels last); with --shape and no\n"
    "                  --layout, both (a 2-d shape has one layout, reported as nchw)\n"
    "  --mode M        train, eval or backward\n"
    "  --threads T     threads for the library and the roofline, 1 to 1024 (default: 1 and 2)\n"
    "  --dtype D       f32, f64, bf16 or f16 (default f32); the 16-bit types have float32\n"
    "                  weight, bias and running statistics, as under torch.autocast\n"
    "  --fuse F        relu or add-relu: the fused calls, y = relu(bn(x)) or relu(bn(x) + z),\n"
    "                  and their backward from y (MB moved counts z, y, dz as they read or\n"
    "                  write; the roofline stays the plain pass's)\n"
    "  --repeat R      timed repetitions, 1 to 1000000 (default: enough for about 0.4 s per\n"
    "                  case, at least 5). Calls shorter than 100 us are timed in batches;\n"
    "                  a repetition is one batch, and times are per call\n"
    "  -h, --help      show this help\n";

const char *const bench_mode_names[BENCH_MODES] = {"train", "eval", "backward"};

static const bench_shape default_grid[] = {
    {2, {20, 2, 0, 0, 0}, BN_CHANNELS_FIRST},
    {2, {256, 1024, 0, 0, 0}, BN_CHANNELS_FIRST},
    {4, {32, 64, 56, 56, 0}, BN_CHANNELS_FIRST},
    {4, {32, 64, 56, 56, 0}, BN_CHANNELS_LAST},
    {4, {32, 512, 7, 7, 0}, BN_CHANNELS_FIRST},
    {4, {8, 256, 128, 128, 0}, BN_CHANNELS_FIRST},
};

/* The command line. */
typedef struct bench_args {
    const char *shape_text, *layout_text, *mode_text, *threads_text, *dtype_text, *repeat_text,
        *fuse_text;
    int json, plan;
    bench_shape shape;    /* valid when shape_text */
    int layout;           /* -1: any */
    int mode;             /* -1: all */
    int threads;          /* 0: 1 and 2 */
    bn_dtype dtype;
    int fuse;             /* BENCH_FUSE_* */
    int repeat;           /* 0: automatic */
} bench_args;

static int parse_shape(bench_shape *g, const char *text) {
    char buf[256];
    if (strlen(text) >= sizeof buf) return 0;
    strcpy(buf, text);
    int nd = 0;
    char *p = buf;
    for (;;) {
        char *sep = strchr(p, 'x');
        if (sep) *sep = '\0';
        uint64_t v;
        if (nd == BENCH_MAX_DIMS || !cli_parse_u64(p, &v) || v < 1 || v > (uint64_t)INT64_MAX)
            return 0;
        g->dims[nd++] = (int64_t)v;
        if (!sep) break;
        p = sep + 1;
    }
    if (nd < 2) return 0;
    g->ndim = nd;
    g->layout = BN_CHANNELS_FIRST;
    return 1;
}

/* @return CLI_OK, CLI_USAGE_ERROR, or -1 after printing the help (exit 0). */
static int parse_args(bench_args *a, int argc, char **argv) {
    const cli_flag flags[] = {{"--json", &a->json}, {"--plan", &a->plan}, {NULL, NULL}};
    const cli_option options[] = {
        {NULL, "--shape", &a->shape_text, 0},     {NULL, "--layout", &a->layout_text, 0},
        {NULL, "--mode", &a->mode_text, 0},       {NULL, "--threads", &a->threads_text, 0},
        {NULL, "--dtype", &a->dtype_text, 0},     {NULL, "--repeat", &a->repeat_text, 0},
        {NULL, "--fuse", &a->fuse_text, 0},
        {NULL, NULL, NULL, 0}};
    int nfiles = 0;
    int status = cli_parse_args(argc, argv, "bench", usage, help, flags, options, NULL, 0, &nfiles);
    if (status != CLI_OK) return status;

    a->layout = -1;
    if (a->layout_text) {
        if (strcmp(a->layout_text, "nchw") == 0) a->layout = BN_CHANNELS_FIRST;
        else if (strcmp(a->layout_text, "nhwc") == 0) a->layout = BN_CHANNELS_LAST;
        else
            return cli_usage_error("bench", usage, "--layout: '%s' is not nchw or nhwc",
                                   a->layout_text);
    }
    a->mode = -1;
    if (a->mode_text) {
        for (int m = 0; m < BENCH_MODES; m++)
            if (strcmp(a->mode_text, bench_mode_names[m]) == 0) a->mode = m;
        if (a->mode < 0)
            return cli_usage_error("bench", usage, "--mode: '%s' is not train, eval or backward",
                                   a->mode_text);
    }
    a->threads = 0;
    if (a->threads_text) {
        uint64_t v;
        if (!cli_parse_u64(a->threads_text, &v) || v < 1 || v > 1024)
            return cli_usage_error("bench", usage,
                                   "--threads: '%s' is not an integer from 1 to 1024",
                                   a->threads_text);
        a->threads = (int)v;
    }
    a->dtype = BN_FLOAT32;
    if (a->dtype_text) {
        if (strcmp(a->dtype_text, "f32") == 0) a->dtype = BN_FLOAT32;
        else if (strcmp(a->dtype_text, "f64") == 0) a->dtype = BN_FLOAT64;
        else if (strcmp(a->dtype_text, "bf16") == 0) a->dtype = BN_BFLOAT16;
        else if (strcmp(a->dtype_text, "f16") == 0) a->dtype = BN_FLOAT16;
        else
            return cli_usage_error("bench", usage, "--dtype: '%s' is not f32, f64, bf16 or f16",
                                   a->dtype_text);
    }
    a->fuse = BENCH_FUSE_NONE;
    if (a->fuse_text) {
        if (strcmp(a->fuse_text, "relu") == 0) a->fuse = BENCH_FUSE_RELU;
        else if (strcmp(a->fuse_text, "add-relu") == 0) a->fuse = BENCH_FUSE_ADD_RELU;
        else
            return cli_usage_error("bench", usage, "--fuse: '%s' is not relu or add-relu",
                                   a->fuse_text);
    }
    a->repeat = 0;
    if (a->repeat_text) {
        uint64_t v;
        if (!cli_parse_u64(a->repeat_text, &v) || v < 1 || v > 1000000)
            return cli_usage_error("bench", usage,
                                   "--repeat: '%s' is not an integer from 1 to 1000000",
                                   a->repeat_text);
        a->repeat = (int)v;
    }
    if (a->shape_text) {
        if (!parse_shape(&a->shape, a->shape_text))
            return cli_usage_error("bench", usage,
                                   "--shape: '%s' is not 2 to 5 sizes >= 1 joined by 'x', such as "
                                   "32x64x56x56",
                                   a->shape_text);
        bn_desc d;
        bn_status st = bn_desc_from_dims(&d, a->shape.ndim, a->shape.dims, a->dtype,
                                         BN_CHANNELS_FIRST);
        if (st != BN_OK)
            return cli_usage_error("bench", usage, "--shape: %s: %s", a->shape_text,
                                   bn_status_string(st));
        if (d.n * d.s < 2)
            return cli_usage_error("bench", usage,
                                   "--shape: %s has one value per channel; training needs more",
                                   a->shape_text);
    }
    return CLI_OK;
}

/* The cases of one shape in one layout: every mode and thread count the options select. */
static int run_shape(const bench_args *a, const bench_shape *g, int *header_done) {
    static const int default_threads[] = {1, 2};
    for (int m = 0; m < BENCH_MODES; m++) {
        if (a->mode >= 0 && m != a->mode) continue;
        for (int t = 0; t < 2; t++) {
            int threads = a->threads ? a->threads : default_threads[t];
            if (a->threads && t > 0) break;
            bench_case bc = {*g, m, threads, a->dtype, a->fuse};
            if (a->plan) {
                if (!a->json && !*header_done) {
                    char machine[640];
                    bench_machine(machine, sizeof machine);
                    printf("machine: %s\n", machine);
                    *header_done = 1;
                }
                bench_print_plan(&bc, a->json);
                continue;
            }
            bench_result r;
            memset(&r, 0, sizeof r);
            if (!a->json && !*header_done) {
                bench_print_header();
                *header_done = 1;
            }
            int status = bench_run_case(&bc, a->repeat, &r);
            if (status != CLI_OK) return status;
            bench_print_result(&bc, &r, a->json);
        }
    }
    return CLI_OK;
}

int cli_bench(int argc, char **argv) {
    bench_args a;
    memset(&a, 0, sizeof a);
    int status = parse_args(&a, argc, argv);
    if (status != CLI_OK) return status < 0 ? CLI_OK : status;

    int header_done = 0;
    if (a.shape_text) {
        bench_shape g = a.shape;
        if (g.ndim == 2) {
            /* (N, C) is the same in both layouts */
            g.layout = BN_CHANNELS_FIRST;
            return run_shape(&a, &g, &header_done);
        }
        for (int layout = BN_CHANNELS_FIRST; layout <= BN_CHANNELS_LAST; layout++) {
            if (a.layout >= 0 && layout != a.layout) continue;
            g.layout = (bn_layout)layout;
            status = run_shape(&a, &g, &header_done);
            if (status != CLI_OK) return status;
        }
        return CLI_OK;
    }
    for (size_t k = 0; k < sizeof default_grid / sizeof default_grid[0]; k++) {
        if (a.layout >= 0 && (int)default_grid[k].layout != a.layout) continue;
        status = run_shape(&a, &default_grid[k], &header_done);
        if (status != CLI_OK) return status;
    }
    return CLI_OK;
}
