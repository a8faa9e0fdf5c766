/* test_plan.c - the plan's decisions as functions of the machine it is given: the caches an AMD
 * EPYC reports (1 MiB L2, 32 MiB L3) and those an Intel Xeon guest reports (2 MiB L2, its host's
 * "300 MiB" L3), on the bench grid. No decision may depend on the L3, which a virtual machine can
 * report wrongly; the L2 sets the cache budget and where backward and channels-first training
 * start to stream. */
#include "check.h"
#include "testutil.h"

#include "calibrate.h"
#include "kernels.h"
#include "machine.h"
#include "plan.h"

#include <stdio.h>
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
    const bn_tiles one = bn_tiles_of(256, 1024, 1), two = bn_tiles_of(256, 1024, 2);
    CHECK(one.parts == 1 && one.chunks == 1 && one.width == 1024);
    CHECK(two.parts == 1 && two.chunks == 2 && two.width == 512);
    const bn_tiles three = bn_tiles_of(256, 1024, 3);
    CHECK(three.chunks == 3 && three.width == 352);
    /* many parts: one chunk; few channels or many threads: BN_TILE_CHANNELS wide */
    const bn_tiles nhwc = bn_tiles_of(100352, 64, 2);
    CHECK(nhwc.parts > 2 && nhwc.chunks == 1 && nhwc.width == BN_TILE_CHANNELS);
    CHECK(bn_tiles_of(256, 1024, 8).width == BN_TILE_CHANNELS);
    CHECK(bn_tiles_of(256, 1000, 2).width == 512 && bn_tiles_of(256, 1000, 2).chunks == 2);
    /* at most BN_TILE_CHANNELS_MAX wide */
    const bn_tiles wide = bn_tiles_of(64, 4096, 1);
    CHECK(wide.width == BN_TILE_CHANNELS_MAX && wide.chunks == 4);
    /* the parts do not depend on the threads */
    for (int t = 1; t <= 4; t++) {
        const bn_tiles a = bn_tiles_of(5000, 300, t);
        CHECK(a.parts == bn_tiles_of(5000, 300, 1).parts && a.per == bn_tiles_of(5000, 300, 1).per);
    }
    /* no rows or no channels: no tiles to walk, and no division by zero */
    CHECK(bn_tiles_of(0, 16, 2).parts == 0 && bn_tiles_of(16, 0, 2).chunks == 0);
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

/* Where a thread's inputs fit its L2 but not beside its output, stores stream when the machine
 * measured that faster (streaming_pays), and only there; elsewhere the size rules alone decide.
 * 32x512x7x7 (3.2 MB an array): on two threads of the Xeon each thread's x is 1.6 MB of its
 * 2 MiB (dy and x of backward, 3.2 MB, are not); on one thread x is the whole 3.2 MB, and on
 * the EPYC's 1 MiB it does not fit either way.
 * (256, 1024) (1 MiB an array) on one Xeon thread: x and y just fit (no), dy and x do but not
 * beside dx (backward: yes). */
BN_SUITE(suite_plan_streams_where_measured) {
    const int can = bn_kernels_can_stream();
    CHECK(bn_inputs_fit_l2_alone(3 * MIB + MIB / 5, 0, 2, 2 * MIB));
    CHECK(!bn_inputs_fit_l2_alone(3 * MIB + MIB / 5, 0, 1, 2 * MIB));
    CHECK(!bn_inputs_fit_l2_alone(MIB, 0, 1, 2 * MIB));
    CHECK(bn_inputs_fit_l2_alone(MIB, 2, 1, 2 * MIB));
    CHECK(!bn_inputs_fit_l2_alone(0, 1, 1, 2 * MIB) && !bn_inputs_fit_l2_alone(MIB, 0, 0, 0));
    for (int pays = 0; pays < 2; pays++) {
        const bn_machine xeon_m = {.l2 = 2 * MIB, .l3 = 300 * MIB, .streaming_pays = pays};
        const bn_machine epyc_m = {.l2 = MIB, .l3 = 32 * MIB, .streaming_pays = pays};
        for (int reads = 0; reads <= 2; reads++) {
            const bn_plan two = plan_of(32, 512, 49, BN_CHANNELS_FIRST, reads, xeon_m, 2);
            /* backward's dy and x are 3.2 MB a thread: beyond the L2 either way */
            CHECK_MSG(two.stream == (reads < 2 && pays && can) &&
                          two.stream_measured == (reads < 2 && can),
                      "reads %d pays %d: stream %d", reads, pays, two.stream);
            CHECK(two.machine.streaming_pays == pays);
            const bn_plan one = plan_of(32, 512, 49, BN_CHANNELS_FIRST, reads, xeon_m, 1);
            CHECK(!one.stream && !one.stream_measured);
            CHECK(!plan_of(32, 512, 49, BN_CHANNELS_FIRST, reads, epyc_m, 2).stream);
            /* the size rules first: 25.7 MB streams whatever was measured */
            CHECK(plan_of(32, 64, 3136, BN_CHANNELS_LAST, reads, xeon_m, 2).stream == can);
        }
        CHECK(!plan_of(256, 1024, 1, BN_CHANNELS_LAST, 0, xeon_m, 1).stream);
        CHECK(plan_of(256, 1024, 1, BN_CHANNELS_LAST, 2, xeon_m, 1).stream == (pays && can));
        char text[1024];
        const bn_plan two = plan_of(32, 512, 49, BN_CHANNELS_FIRST, 0, xeon_m, 2);
        bn_plan_describe(&two, text, sizeof text);
        if (can) /* a build or CPU without streaming stores never measures */
            CHECK_MSG(strstr(text, pays ? "streaming stores were measured faster"
                                        : "streaming stores were measured no faster"),
                      "%s", text);
    }
}

/* This machine's plan measures whether streaming pays the first time it needs to know, once:
 * afterwards the verdict and its timings stay. Where there are no streaming stores there is
 * nothing to measure. */
BN_SUITE(suite_plan_measures_streaming_once) {
    const bn_machine m = bn_machine_this();
    CHECK(m.streaming_pays == -1);
    const int64_t l2 = m.l2 > 0 ? m.l2 : MIB;
    /* a (rows, 256) float32 eval whose x fits a thread's L2, and not beside y, on one thread */
    const int64_t rows = l2 / 5 * 4 / 1024;
    const bn_desc d = tu_desc(rows, 256, 1, BN_FLOAT32, BN_CHANNELS_LAST);
    bn_plan p;
    CHECK(bn_plan_for(&p, &d, 0, m, 1) == BN_OK);
    CHECK(p.stream_measured == bn_kernels_can_stream());
    const int verdict = bn_streaming_measured_faster(l2);
    CHECK(verdict == 0 || verdict == 1);
    CHECK(p.machine.streaming_pays == (bn_kernels_can_stream() ? verdict : -1));
    CHECK(p.stream == (verdict && bn_kernels_can_stream()));
    CHECK(bn_streaming_measured_faster(l2) == verdict);
    int64_t plain_ns, streaming_ns, took_ns;
    bn_streaming_measurement(&plain_ns, &streaming_ns, &took_ns);
    if (bn_kernels_can_stream())
        CHECK_MSG(plain_ns > 0 && streaming_ns > 0 && took_ns >= 2 * (plain_ns + streaming_ns) &&
                      verdict == (streaming_ns * 10 < plain_ns * 9),
                  "plain %lld ns, streaming %lld ns, verdict %d", (long long)plain_ns,
                  (long long)streaming_ns, verdict);
    else
        CHECK(verdict == 0);
}
