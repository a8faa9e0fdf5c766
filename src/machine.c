/* machine.c - cache sizes from /sys, read once, and the budgets plan.c takes from them. */
#include "machine.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

/* The first line of a small text file, or "" when it cannot be read. */
static void read_line(const char *path, char *buf, int size) {
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (!fgets(buf, size, f)) buf[0] = 0;
    fclose(f);
}

int64_t bn_cache_size(int level) {
    for (int index = 0; index < 16; index++) {
        char path[96], text[64];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", index);
        read_line(path, text, sizeof text);
        if (!text[0]) break;
        if (atoi(text) != level) continue;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", index);
        read_line(path, text, sizeof text);
        if (text[0] == 'I') continue; /* an instruction cache */
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
        read_line(path, text, sizeof text);
        char *end;
        long long size = strtoll(text, &end, 10);
        if (size <= 0) return 0;
        if (*end == 'K') size <<= 10;
        if (*end == 'M') size <<= 20;
        return (int64_t)size;
    }
    return 0;
}

static atomic_llong budget_override; /* tests: bytes, or 0 */

void bn_cache_budget_override(int64_t bytes) { atomic_store(&budget_override, bytes > 0 ? bytes : 0); }

int64_t bn_cache_budget(void) {
    static atomic_llong budget; /* 0 until first asked */
    const long long forced = atomic_load(&budget_override);
    if (forced) return (int64_t)forced;
    long long b = atomic_load(&budget);
    if (b == 0) {
        const int64_t l2 = bn_cache_size(2);
        b = (l2 > 0 ? l2 : INT64_C(1) << 20) / 2;
        atomic_store(&budget, b);
    }
    return (int64_t)b;
}

int64_t bn_stream_threshold(void) {
    static atomic_llong threshold; /* 0 until first asked */
    long long t = atomic_load(&threshold);
    if (t == 0) {
        const int64_t llc = bn_cache_size(3);
        t = llc > 0 && llc / 2 < BN_STREAM_MAX_THRESHOLD ? llc / 2 : BN_STREAM_MAX_THRESHOLD;
        atomic_store(&threshold, t);
    }
    return (int64_t)t;
}
