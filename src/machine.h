/* machine.h - the facts about a machine that the plan (plan.c) uses, and only it: the data caches
 * as Linux reports them. A virtual machine may report its host's caches (a Xeon guest has shown a
 * 300 MiB L3, its host's, shared with other tenants), so the plan's rules take the private L2
 * alone; the L3 is read only to be reported. */
#ifndef BN_MACHINE_H
#define BN_MACHINE_H

#include <stdint.h>

/* The caches of one core, in bytes: 0 where the system reports none; and whether streaming
 * stores pay where the plan's size rules leave the store kind open (plan.h): 1 or 0 (tests give
 * either), or -1: each such case's own first calls decide it (store_trial.h). */
typedef struct {
    int64_t l2, l3;
    int streaming_pays;
} bn_machine;

/* This machine's: the caches from /sys, read once; streaming_pays -1. */
bn_machine bn_machine_this(void);

/* The size in bytes of the data cache of the given level (2, 3) that CPU 0 reports in Linux's
 * /sys/devices/system/cpu/cpu0/cache, or 0 when it reports none. (glibc's sysconf can be far off
 * in virtual machines: 384 MiB of L3 for a 32 MiB one has been seen.) */
int64_t bn_cache_size(int level);

/* For tests: the cache budget of every plan in bytes instead of half the L2 (0: the L2's
 * again), and what it is now (0: none set). */
void bn_cache_budget_override(int64_t bytes);
int64_t bn_cache_budget_forced(void);

#endif
