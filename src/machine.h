/* machine.h - the facts about this machine that the plan (plan.c) uses, and only it: cache sizes
 * as Linux reports them, and what is made of them. A virtual machine may report its host's
 * caches; the rules of plan.c are written to hold up when these numbers are wrong. */
#ifndef BN_MACHINE_H
#define BN_MACHINE_H

#include <stdint.h>

/* The size in bytes of the data cache of the given level (2, 3) that CPU 0 reports in Linux's
 * /sys/devices/system/cpu/cpu0/cache, or 0 when it reports none. (glibc's sysconf can be far off
 * in virtual machines: 384 MiB of L3 for a 32 MiB one has been seen.) */
int64_t bn_cache_size(int level);

/* Bytes a thread may keep in cache between two passes over the same data: half of the L2 (taken
 * as 1 MiB when the system reports none). Read once. */
int64_t bn_cache_budget(void);

/* Output bytes from which stores stream: half the last-level cache, at most
 * BN_STREAM_MAX_THRESHOLD (measured: 48 MiB on a Xeon whose reported L3 is 480 MiB; 16 MiB on an
 * EPYC with 32 MiB of L3, where it takes 12% off a 26 MB training pass). Read once. */
#define BN_STREAM_MAX_THRESHOLD (INT64_C(48) << 20)
int64_t bn_stream_threshold(void);

/* For tests: the cache budget in bytes instead of half the L2 (0: the L2's again). */
void bn_cache_budget_override(int64_t bytes);

#endif
