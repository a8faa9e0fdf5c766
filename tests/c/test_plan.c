/* test_plan.c - the plan's decisions as functions of the machine it is given: the caches an AMD
 * EPYC reports (1 MiB L2, 32 MiB L3) and those an Intel Xeon guest reports (2 MiB L2, its host's
 * "300 MiB" L3), on the bench grid. No decision may depend on the L3, which a virtual machine can
 * report wrongly; the L2 sets the cache budget and where backward and channels-first training
 * start to stream. */
#include "check.h"
#include "testutil.h"

#include "kernels.h"
#include "machine.h"
#include "plan.h"
#include "store_trial.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB (INT64_C(1) << 20)
static const bn_machine epyc = {.l2 = MIB, .l3 = 32 * MIB};
static const bn_machine xeon = {.l2 = 2 * MIB, .l3 = 300 * MIB};

static bn_plan plan_of(int64_t n, int64_t c, int64_t s, bn_layout layout, int reads,
                       bn_machine m, int threads) {
    const bn_desc d = tu_desc(n, c, s, BN_FLOAT32, layout);
    bn_plan p;
    CHECK(bn_plan_for(&p, &d, reads, m, threads) == BN_OK);
    return p;
}

/* The decisions of two plans, compared field by field. */
static int same_decisions(const bn_plan *a, const bn_plan *b) {
    return a->k == b->k && a->stream == b->stream && a->overlap == b->overlap &&
           a->run == b->run && a->chunk == b->chunk && a->prefetch == b->prefetch &&
           a->budget == b->budget &&
           a->stream_threshold == b->stream_threshold &&
           !memcmp(&a->tiles, &b->tiles, sizeof a->tiles) &&
           !memcmp(&a->pieces, &b->pieces, sizeof a->pieces);
}

static const int64_t grid[][3] = {{20, 2, 1},   {256, 1024, 1},  {32, 64, 3136},
                                  {32, 512, 49}, {8, 256, 16384}, {2, 1024, 1}};

/* Whatever L3 a machine reports, every decision is the same. */
BN_SUITE(suite_plan_ignores_the_l3) {
    const int64_t l3s[] = {0, 512 * 1024, 32 * MIB, 300 * MIB, INT64_C(1) << 40};
    for (size_t g = 0; g < sizeof grid / sizeof grid[0]; g++)
        for (int lay = 0; lay < 2; lay++)
            for (int reads = 0; reads <= 2; reads++)
                for (int threads = 1; threads <= 2; threads++)
                    for (int l2 = 0; l2 < 2; l2++) {
                        const int64_t l2_bytes = l2 ? 2 * MIB : MIB;
                        const bn_plan base = plan_of(grid[g][0], grid[g][1], grid[g][2],
                                                     (bn_layout)lay, reads,
                                                     (bn_machine){l2_bytes, 0, 0}, threads);
                        for (size_t q = 0; q < sizeof l3s / sizeof l3s[0]; q++) {
                            const bn_plan p = plan_of(grid[g][0], grid[g][1], grid[g][2],
                                                      (bn_layout)lay, reads,
                                                      (bn_machine){l2_bytes, l3s[q], 0}, threads);
                            CHECK_MSG(same_decisions(&base, &p),
                                      "shape %zu layout %d reads %d: an L3 of %lld changed the plan",
                                      g, lay, reads, (long long)l3s[q]);
                        }
                    }
}

/* The grid's decisions on both machines. Stores stream only where this build and CPU can. */
BN_SUITE(suite_plan_on_epyc_and_xeon) {
    const int can = bn_kernels_can_stream();
    const bn_machine machines[2] = {epyc, xeon};
    for (int q = 0; q < 2; q++) {
        const bn_machine m = machines[q];
        const char *name = q ? "xeon" : "epyc";
        for (int threads = 1; threads <= 2; threads++) {
            /* 32x64x56x56 NCHW, 25.7 MB: every pass streams; a channel is 401 KB, x and dy of
             * one 803 KB: training overlaps on both, backward only where two of them fit in the
             * L2 (the Xeon's 2 MiB, not the EPYC's 1 MiB) */
            const bn_plan train = plan_of(32, 64, 3136, BN_CHANNELS_FIRST, 1, m, threads);
            const bn_plan back = plan_of(32, 64, 3136, BN_CHANNELS_FIRST, 2, m, threads);
            const bn_plan eval = plan_of(32, 64, 3136, BN_CHANNELS_FIRST, 0, m, threads);
            CHECK_MSG(train.stream == can && back.stream == can && eval.stream == can, "%s", name);
            CHECK_MSG(train.budget == m.l2 / 2 && train.overlap, "%s", name);
            CHECK_MSG(back.overlap == (q == 1), "%s backward overlap %d", name, back.overlap);
            CHECK(train.run == (threads == 1 ? 64 : 32));
            /* channels-first training streams from 4 L2s of output, eval from 16 MiB */
            CHECK(train.stream_threshold == 4 * m.l2 && eval.stream_threshold == 16 * MIB);
            const bn_plan nhwc = plan_of(32, 64, 3136, BN_CHANNELS_LAST, 1, m, threads);
            CHECK(nhwc.stream == can && nhwc.chunk == 0 && nhwc.stream_threshold == 16 * MIB);
            /* backward streams from 4 L2s in both layouts, channels-last training from 16 MiB:
             * 6.4 MB is 4 L2s of the EPYC's, less than 4 of the Xeon's */
            const int four = can && 8 * 64 * 3136 * 4 >= 4 * m.l2;
            const bn_plan nhwc_back = plan_of(8, 64, 3136, BN_CHANNELS_LAST, 2, m, threads);
            const bn_plan nhwc_train = plan_of(8, 64, 3136, BN_CHANNELS_LAST, 1, m, threads);
            const bn_plan nchw_train = plan_of(8, 64, 3136, BN_CHANNELS_FIRST, 1, m, threads);
            CHECK(nhwc_back.stream_threshold == 4 * m.l2 && nhwc_back.stream == four);
            CHECK(!nhwc_train.stream && nchw_train.stream == four);
            /* 32x512x7x7, 3.2 MB: no pass streams */
            for (int reads = 0; reads <= 2; reads++)
                CHECK(!plan_of(32, 512, 49, BN_CHANNELS_FIRST, reads, m, threads).stream);
            /* channels-last chunks: a thread's share of the channels whose rows of every array
             * fit in a quarter of the L2. 256x1024 training (2 MiB) is not chunked on either;
             * 64x256 (128 KiB of x and y) is one chunk on one thread, and on two not (a share
             * of 128 channels reads 512 bytes of each row); 64x1024 on two threads gives each
             * its 512 channels in training (256 KiB) and in backward (384 KiB) on the Xeon,
             * in training only on the EPYC */
            const bn_plan nc = plan_of(256, 1024, 1, BN_CHANNELS_LAST, 1, m, threads);
            CHECK_MSG(nc.chunk == 0, "%s: chunk %lld", name, (long long)nc.chunk);
            CHECK(plan_of(256, 1024, 1, BN_CHANNELS_LAST, 2, m, threads).chunk == 0);
            CHECK(plan_of(64, 256, 1, BN_CHANNELS_LAST, 1, m, threads).chunk ==
                  (threads == 1 ? 256 : 0));
            if (threads == 2) {
                CHECK(plan_of(64, 1024, 1, BN_CHANNELS_LAST, 1, m, threads).chunk == 512);
                CHECK(plan_of(64, 1024, 1, BN_CHANNELS_LAST, 2, m, threads).chunk == (q ? 512 : 0));
            }
            /* channels-last statistics ask for rows ahead where they read more than 4 L2s: not
             * for 256x1024 (1 MiB) on either, for NHWC 32x64x56x56 (25.7 MB) on both, for
             * NHWC 8x64x56x56 (6.4 MB) on the EPYC only; backward reads dy and x */
            CHECK_MSG(!nc.prefetch && nhwc.prefetch, "%s", name);
            CHECK_MSG(nhwc_train.prefetch == (q == 0), "%s", name);
            CHECK(nhwc_back.prefetch && !plan_of(256, 1024, 1, BN_CHANNELS_LAST, 2, m, threads).prefetch);
            CHECK(!plan_of(8, 64, 3136, BN_CHANNELS_LAST, 0, m, threads).prefetch);
            /* 8x256x128x128, 134 MB: streams in every pass */
            for (int reads = 0; reads <= 2; reads++)
                CHECK(plan_of(8, 256, 16384, BN_CHANNELS_FIRST, reads, m, threads).stream == can);
        }
    }
    /* a machine that reports no L2 is planned as one with 1 MiB */
    const bn_plan unknown = plan_of(32, 64, 3136, BN_CHANNELS_FIRST, 2, (bn_machine){0, 0, 0}, 1);
    const bn_plan known = plan_of(32, 64, 3136, BN_CHANNELS_FIRST, 2, epyc, 1);
    CHECK(same_decisions(&unknown, &known));
}

/* Channels-last tiles: the parts of the rows fixed by the shape; each tile as wide as leaves
 * one for each thread, from BN_TILE_CHANNELS (or all the channels) to BN_TILE_CHANNELS_MAX
 * channels, in multiples of 16. */
BN_SUITE(suite_plan_tiles) {
    const bn_tiles one = bn_tiles_of(256, 1024, 1, BN_ROWS);
    const bn_tiles two = bn_tiles_of(256, 1024, 2, BN_ROWS);
    CHECK(one.parts == 1 && one.chunks == 1 && one.width == 1024);
    CHECK(two.parts == 1 && two.chunks == 2 && two.width == 512);
    const bn_tiles three = bn_tiles_of(256, 1024, 3, BN_ROWS);
    CHECK(three.chunks == 3 && three.width == 352);
    /* many parts: one chunk; few channels or many threads: BN_TILE_CHANNELS wide */
    const bn_tiles nhwc = bn_tiles_of(100352, 64, 2, BN_ROWS);
    CHECK(nhwc.parts > 2 && nhwc.chunks == 1 && nhwc.width == BN_TILE_CHANNELS);
    CHECK(bn_tiles_of(256, 1024, 8, BN_ROWS).width == BN_TILE_CHANNELS);
    CHECK(bn_tiles_of(256, 1000, 2, BN_ROWS).width == 512);
    CHECK(bn_tiles_of(256, 1000, 2, BN_ROWS).chunks == 2);
    /* at most BN_TILE_CHANNELS_MAX wide */
    const bn_tiles wide = bn_tiles_of(64, 4096, 1, BN_ROWS);
    CHECK(wide.width == BN_TILE_CHANNELS_MAX && wide.chunks == 4);
    /* the parts do not depend on the threads */
    for (int t = 1; t <= 4; t++) {
        const bn_tiles a = bn_tiles_of(5000, 300, t, BN_ROWS);
        const bn_tiles b = bn_tiles_of(5000, 300, 1, BN_ROWS);
        CHECK(a.parts == b.parts && a.per == b.per);
    }
    /* the gradient sums' parts: multiples of BN_GRAD_ROWS rows, whatever the threads; two
     * threads take a part each of (256, 1024) */
    const bn_tiles grad = bn_tiles_of(256, 1024, 2, BN_GRAD_ROWS);
    CHECK(grad.parts == 2 && grad.per == 128 && grad.chunks == 1 && grad.width == 1024);
    CHECK(bn_tiles_of(256, 1024, 1, BN_GRAD_ROWS).parts == 2);
    CHECK(bn_tiles_of(100, 1024, 2, BN_GRAD_ROWS).parts == 1);
    CHECK(bn_tiles_of(100352, 64, 2, BN_GRAD_ROWS).per % BN_GRAD_ROWS == 0);
    /* no rows or no channels: no tiles to walk, and no division by zero */
    CHECK(bn_tiles_of(0, 16, 2, BN_ROWS).parts == 0 && bn_tiles_of(16, 0, 2, BN_ROWS).chunks == 0);
}

/* The printed plan names the caches it was given and why its stores stream or not. */
BN_SUITE(suite_plan_describes_its_reasons) {
    const bn_plan p = plan_of(32, 64, 3136, BN_CHANNELS_FIRST, 1, xeon, 2);
    char text[512];
    bn_plan_describe(&p, text, sizeof text);
    CHECK_MSG(strstr(text, "l2=2097152 l3=314572800") && strstr(text, "4 x L2") &&
                  strstr(text, "output 25690112 bytes, from 8388608") &&
                  strstr(text, "overlap=yes") && strstr(text, "threads=2"),
              "%s", text);
    const bn_plan nhwc = plan_of(32, 64, 3136, BN_CHANNELS_LAST, 1, xeon, 2);
    bn_plan_describe(&nhwc, text, sizeof text);
    CHECK_MSG(strstr(text, "prefetch=yes (its reads are more than 4 L2s; the second pass walks "
                                "each thread's rows from the end)"), "%s", text);
    const bn_plan nc = plan_of(256, 1024, 1, BN_CHANNELS_LAST, 1, xeon, 2);
    bn_plan_describe(&nc, text, sizeof text);
    CHECK_MSG(strstr(text, "prefetch=no (its reads fit in 4 L2s: in some cache)"), "%s", text);
    char small[16];
    bn_plan_describe(&p, small, sizeof small); /* cut to size, still a string */
    CHECK(strlen(small) == sizeof small - 1);
}

/* Where a thread's share of the inputs and the output is more than its L2 and the output is below
 * the size rules' threshold, the store kind is open: the machine's verdict decides it
 * (streaming_pays), and only there; elsewhere the size rules alone decide. 32x512x7x7 (3.2 MB an
 * array) is open on both machines, on one thread and on two, in every pass; (256, 1024) (1 MiB
 * an array) on one Xeon thread is not in eval (x and y just fit) and is in backward. */
BN_SUITE(suite_plan_streams_where_open) {
    const int can = bn_kernels_can_stream();
    CHECK(bn_share_exceeds_l2(3 * MIB + MIB / 5, 0, 2, 2 * MIB));
    CHECK(bn_share_exceeds_l2(3 * MIB + MIB / 5, 0, 1, 2 * MIB));
    CHECK(bn_share_exceeds_l2(3 * MIB + MIB / 5, 2, 2, 2 * MIB));
    CHECK(!bn_share_exceeds_l2(MIB, 0, 1, 2 * MIB));
    CHECK(bn_share_exceeds_l2(MIB, 2, 1, 2 * MIB));
    CHECK(!bn_share_exceeds_l2(MIB, 1, 2, 2 * MIB));
    CHECK(!bn_share_exceeds_l2(0, 1, 1, 2 * MIB));
    for (int pays = 0; pays < 2; pays++) {
        const bn_machine xeon_m = {.l2 = 2 * MIB, .l3 = 300 * MIB, .streaming_pays = pays};
        const bn_machine epyc_m = {.l2 = MIB, .l3 = 32 * MIB, .streaming_pays = pays};
        for (int reads = 0; reads <= 2; reads++)
            for (int threads = 1; threads <= 2; threads++) {
                const bn_plan x = plan_of(32, 512, 49, BN_CHANNELS_FIRST, reads, xeon_m, threads);
                const bn_plan e = plan_of(32, 512, 49, BN_CHANNELS_FIRST, reads, epyc_m, threads);
                CHECK_MSG(x.stream == (pays && can) && x.stream_open == can && !x.trial,
                          "reads %d threads %d pays %d: stream %d", reads, threads, pays,
                          x.stream);
                CHECK(e.stream == (pays && can) && e.stream_open == can);
                CHECK(x.machine.streaming_pays == pays);
                /* the size rules first: 25.7 MB streams whatever the verdict */
                const bn_plan big = plan_of(32, 64, 3136, BN_CHANNELS_LAST, reads, xeon_m, threads);
                CHECK(big.stream == can && !big.stream_open);
            }
        const bn_plan fits = plan_of(256, 1024, 1, BN_CHANNELS_LAST, 0, xeon_m, 1);
        CHECK(!fits.stream && !fits.stream_open);
        CHECK(plan_of(256, 1024, 1, BN_CHANNELS_LAST, 2, xeon_m, 1).stream == (pays && can));
        char text[1024];
        const bn_plan two = plan_of(32, 512, 49, BN_CHANNELS_FIRST, 0, xeon_m, 2);
        bn_plan_describe(&two, text, sizeof text);
        if (can) /* a build or CPU without streaming stores has nothing open */
            CHECK_MSG(strstr(text, pays ? "the machine given says streaming pays"
                                        : "the machine given says plain stores"),
                      "%s", text);
    }
}

/* A case's trial: its first BN_TRIAL_CALLS calls take runs of BN_TRIAL_RUN plain, then
 * streaming, then plain ... stores, the second half of each run timed; decided when both kinds
 * have BN_TRIAL_TIMED times, streaming only where its median is 5% below plain's; later calls
 * take the verdict, untimed. Cases of their own (n = -1, -2, ...: no call's), so the library's
 * calls in other suites do not meet them. */
BN_SUITE(suite_store_trial_decides_from_timed_calls) {
    const bn_trial_case fast = {-1, 3, 5, 0, 0, 1, 2, 3}, slow = {-2, 3, 5, 0, 0, 1, 2, 3};
    int64_t plain_ns, streaming_ns;
    CHECK(bn_store_trial_verdict(&fast, &plain_ns, &streaming_ns) == -1);
    CHECK(plain_ns == 0 && streaming_ns == 0);
    /* the times reported, in order, per kind: fast's streaming median 55 against 100 (an
     * outlier each way), slow's 96 against 100: not 5% */
    int64_t fast_ns[2][BN_TRIAL_TIMED], slow_ns[2][BN_TRIAL_TIMED];
    for (int i = 0; i < BN_TRIAL_TIMED; i++) {
        fast_ns[0][i] = i == 2 ? 400 : i == 1 ? 90 : 100;
        fast_ns[1][i] = i == 2 ? 1 : i == 3 ? 300 : 55;
        slow_ns[0][i] = 100, slow_ns[1][i] = 96;
    }
    int reported[2] = {0, 0};
    for (int j = 0; j < BN_TRIAL_CALLS; j++) {
        int slot_f, slot_s;
        const int kind = (j / BN_TRIAL_RUN) & 1, timed = j % BN_TRIAL_RUN >= BN_TRIAL_RUN / 2;
        CHECK_MSG(bn_store_trial_kind(&fast, &slot_f) == kind, "call %d", j);
        CHECK_MSG(bn_store_trial_kind(&slow, &slot_s) == kind, "call %d", j);
        CHECK_MSG(timed ? slot_f > 0 && slot_s > 0 && slot_f != slot_s : !slot_f && !slot_s,
                  "call %d: slots %d %d", j, slot_f, slot_s);
        if (!timed) continue;
        bn_store_trial_report(slot_f, kind, fast_ns[kind][reported[kind]]);
        bn_store_trial_report(slot_s, kind, slow_ns[kind][reported[kind]]);
        reported[kind]++;
        if (j < BN_TRIAL_CALLS - 1) /* not decided until the last one */
            CHECK(bn_store_trial_verdict(&fast, &plain_ns, &streaming_ns) == -1);
    }
    CHECK(bn_store_trial_verdict(&fast, &plain_ns, &streaming_ns) == 1);
    CHECK_MSG(plain_ns == 100 && streaming_ns == 55, "%lld %lld", (long long)plain_ns,
              (long long)streaming_ns);
    CHECK(bn_store_trial_verdict(&slow, &plain_ns, &streaming_ns) == 0);
    CHECK(plain_ns == 100 && streaming_ns == 96);
    for (int j = 0; j < 3; j++) {
        int slot;
        CHECK(bn_store_trial_kind(&fast, &slot) == 1 && slot == 0);
        CHECK(bn_store_trial_kind(&slow, &slot) == 0 && slot == 0);
    }
    bn_store_trial_report(0, 1, 1); /* no slot: nothing */
    CHECK(bn_store_trial_verdict(&fast, &plain_ns, &streaming_ns) == 1 && streaming_ns == 55);
    /* a trial whose timed calls have not reported: plain and untimed for the calls past it */
    const bn_trial_case pending = {-3, 3, 5, 0, 0, 1, 2, 3};
    for (int j = 0; j < BN_TRIAL_CALLS; j++) {
        int slot;
        (void)bn_store_trial_kind(&pending, &slot);
    }
    int slot;
    CHECK(bn_store_trial_kind(&pending, &slot) == 0 && slot == 0);
    CHECK(bn_store_trial_verdict(&pending, &plain_ns, &streaming_ns) == -1);
}

/* One case's whole trial, streaming reported twice as fast: whether it was decided. */
static int run_trial(const bn_trial_case *k) {
    for (int j = 0; j < BN_TRIAL_CALLS; j++) {
        int slot;
        const int kind = bn_store_trial_kind(k, &slot);
        bn_store_trial_report(slot, kind, kind ? 50 : 100);
    }
    int64_t plain_ns, streaming_ns;
    return bn_store_trial_verdict(k, &plain_ns, &streaming_ns) == 1;
}

/* The process keeps BN_TRIAL_CASES cases; past them, calls take plain stores, untimed, and the
 * cases it keeps are still found (open addressing wraps around). */
BN_SUITE(suite_store_trial_keeps_a_bounded_table) {
    bn_store_trial_reset();
    int decided = 0;
    for (int i = 0; i < BN_TRIAL_CASES; i++) {
        const bn_trial_case k = {-100 - i, 7, 9, 1, 0, 2, i % 3, 3};
        decided += run_trial(&k);
    }
    CHECK(decided == BN_TRIAL_CASES);
    for (int i = 0; i < 5; i++) {
        const bn_trial_case k = {-10000 - i, 7, 9, 1, 0, 2, 1, 3};
        CHECK(!run_trial(&k));
        int slot;
        CHECK(bn_store_trial_kind(&k, &slot) == 0 && slot == 0);
    }
    for (int i = 0; i < BN_TRIAL_CASES; i++) {
        const bn_trial_case k = {-100 - i, 7, 9, 1, 0, 2, i % 3, 3};
        int slot;
        CHECK(bn_store_trial_kind(&k, &slot) == 1 && slot == 0);
    }
    bn_store_trial_reset(); /* the suites after this one find room */
    const bn_trial_case k = {-10000, 7, 9, 1, 0, 2, 1, 3};
    CHECK(run_trial(&k));
    bn_store_trial_reset();
}

/* An open case for the trial's suites: a (rows, 256) float32 channels-last eval whose x is 0.8
 * of a thread's L2, on one thread (x and y are more than the L2); `extra` rows make a shape no
 * other suite times. x is filled, y and ref are buffers for two outputs. */
typedef struct {
    bn_desc d;
    size_t count;
    float *x, *y, *ref;
    float rm[256], rv[256];
} open_eval;

static int open_eval_make(open_eval *e, int64_t extra) {
    const bn_machine m = bn_machine_this();
    const int64_t rows = (m.l2 > 0 ? m.l2 : MIB) / 5 * 4 / 1024 + extra;
    e->d = tu_desc(rows, 256, 1, BN_FLOAT32, BN_CHANNELS_LAST);
    e->count = (size_t)rows * 256;
    e->x = malloc(e->count * sizeof(float));
    e->y = malloc(e->count * sizeof(float));
    e->ref = malloc(e->count * sizeof(float));
    if (!e->x || !e->y || !e->ref) return 0;
    for (size_t i = 0; i < e->count; i++) e->x[i] = (float)((int)(i % 1013) - 500) / 37.0f;
    for (int c = 0; c < 256; c++) e->rm[c] = (float)c / 100.0f, e->rv[c] = 0.5f + (float)c / 64.0f;
    return 1;
}

static bn_status open_eval_call(open_eval *e, float *out) {
    return bn_forward_eval(out, e->x, e->rm, e->rv, NULL, NULL, &e->d, 1e-5);
}

static void open_eval_free(open_eval *e) { free(e->x), free(e->y), free(e->ref); }

/* A call of a case decided for streaming takes the streaming kernels once (bn_plan_for takes
 * them from the verdict; bn_plan_try_stores does not take them again), and gives the bits of a
 * plain call. The case is decided through the trial's own API, with streaming reported twice
 * as fast, so that the verdict does not depend on this machine. */
BN_SUITE(suite_store_trial_decided_call_takes_kernels_once) {
    const int threads = bn_get_num_threads();
    bn_set_num_threads(1);
    open_eval e;
    CHECK(open_eval_make(&e, 5));
    bn_kernel_force_plain_stores(1);
    CHECK_STATUS(open_eval_call(&e, e.ref), BN_OK);
    bn_kernel_force_plain_stores(0);
    const bn_trial_case k = {e.d.n, e.d.c, e.d.s, (int)e.d.layout, (int)e.d.dtype, 0, 1, 2};
    CHECK(run_trial(&k));
    const int can = bn_kernels_can_stream();
    for (int call = 0; call < 3; call++) {
        const int64_t before = bn_kernel_stream_count();
        CHECK_STATUS(open_eval_call(&e, e.y), BN_OK);
        const int64_t taken = bn_kernel_stream_count() - before;
        CHECK_MSG(taken == can, "call %d: %lld streaming tables", call, (long long)taken);
        CHECK(!memcmp(e.y, e.ref, e.count * sizeof(float)));
    }
    bn_set_num_threads(threads);
    open_eval_free(&e);
}

/* This machine's calls of an open case decide it, with the same bits from every call. Its plan
 * names the trial, undecided and then decided. */
BN_SUITE(suite_store_trial_on_this_machine) {
    const bn_machine m = bn_machine_this();
    CHECK(m.streaming_pays == -1);
    const int threads = bn_get_num_threads();
    bn_set_num_threads(1);
    open_eval e;
    CHECK(open_eval_make(&e, 3));
    bn_plan p;
    CHECK(bn_plan_for(&p, &e.d, 0, m, 1) == BN_OK);
    CHECK(p.stream_open == bn_kernels_can_stream() && !p.stream);
    char text[1024];
    bn_plan_describe(&p, text, sizeof text);
    if (p.stream_open)
        CHECK_MSG(strstr(text, "time both kinds of store (not decided yet"), "%s", text);
    for (int call = 0; call < BN_TRIAL_CALLS + 2; call++) {
        CHECK_STATUS(open_eval_call(&e, call ? e.y : e.ref), BN_OK);
        if (call) CHECK(!memcmp(e.y, e.ref, e.count * sizeof(float)));
    }
    const bn_trial_case k = {e.d.n, e.d.c, e.d.s, (int)e.d.layout, (int)e.d.dtype, 0, 1, 2};
    int64_t plain_ns, streaming_ns;
    const int verdict = bn_store_trial_verdict(&k, &plain_ns, &streaming_ns);
    if (bn_kernels_can_stream()) {
        CHECK_MSG(verdict >= 0 && plain_ns > 0 && streaming_ns > 0 &&
                      verdict == (streaming_ns * 20 < plain_ns * 19),
                  "verdict %d: plain %lld ns, streaming %lld ns", verdict, (long long)plain_ns,
                  (long long)streaming_ns);
        CHECK(bn_plan_for(&p, &e.d, 0, m, 1) == BN_OK && p.stream == verdict);
        bn_plan_describe(&p, text, sizeof text);
        CHECK_MSG(strstr(text, "calls timed both"), "%s", text);
    } else {
        CHECK(verdict == -1);
    }
    bn_set_num_threads(threads);
    open_eval_free(&e);
}
