/* machine.c - the caches /sys reports, read once (machine.h). */
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

int64_t bn_cache_budget_forced(void) { return (int64_t)atomic_load(&budget_override); }

bn_machine bn_machine_this(void) {
    static atomic_llong l2 = -1, l3 = -1; /* -1 until first read */
    long long a = atomic_load(&l2), b = atomic_load(&l3);
    if (a < 0 || b < 0) {
        a = bn_cache_size(2), b = bn_cache_size(3);
        atomic_store(&l2, a);
        atomic_store(&l3, b);
    }
    return (bn_machine){.l2 = (int64_t)a, .l3 = (int64_t)b, .streaming_pays = -1};
}
