/* store_trial.c - the store kind of an open case, decided by timing its first calls
 * (store_trial.h). */
#include "store_trial.h"

#include <stdatomic.h>
#include <string.h>

typedef struct {
    bn_trial_case key;
    int used;       /* a case is kept here */
    int calls;      /* calls handed out so far */
    int reports[2]; /* timed calls reported, plain and streaming */
    int64_t ns[2][BN_TRIAL_TIMED]; /* their times, in the order reported */
    int verdict;    /* -1 until decided */
} trial;

static trial trials[BN_TRIAL_CASES];
static atomic_flag lock = ATOMIC_FLAG_INIT; /* held for a few dozen instructions at a time */

static void take(void) {
    while (atomic_flag_test_and_set_explicit(&lock, memory_order_acquire)) {
    }
}
static void give(void) { atomic_flag_clear_explicit(&lock, memory_order_release); }

/* A case's fields, in one order: what identifies it and what its hash is of. */
enum { FIELDS = 8 };
static void fields_of(const bn_trial_case *k, int64_t f[FIELDS]) {
    f[0] = k->n, f[1] = k->c, f[2] = k->s, f[3] = k->layout, f[4] = k->dtype, f[5] = k->reads;
    f[6] = k->threads, f[7] = k->passes;
}

static int same(const bn_trial_case *a, const bn_trial_case *b) {
    int64_t fa[FIELDS], fb[FIELDS];
    fields_of(a, fa), fields_of(b, fb);
    return !memcmp(fa, fb, sizeof fa);
}

/* Where a search for k starts: a hash of its fields (FNV-1a over their values). */
static unsigned start_of(const bn_trial_case *k) {
    int64_t f[FIELDS];
    fields_of(k, f);
    uint64_t h = 1469598103934665603u;
    for (int i = 0; i < FIELDS; i++) h = (h ^ (uint64_t)f[i]) * 1099511628211u;
    return (unsigned)(h % BN_TRIAL_CASES);
}

/* The slot of k, a new one if there is room (create), or NULL: open addressing from start_of,
 * slots never freed. Under the lock. */
static trial *find(const bn_trial_case *k, int create) {
    const unsigned first = start_of(k);
    for (unsigned probe = 0; probe < BN_TRIAL_CASES; probe++) {
        trial *t = &trials[(first + probe) % BN_TRIAL_CASES];
        if (t->used && same(&t->key, k)) return t;
        if (!t->used) {
            if (!create) return NULL;
            memset(t, 0, sizeof *t);
            t->key = *k, t->used = 1, t->verdict = -1;
            return t;
        }
    }
    return NULL;
}

int bn_store_trial_kind(const bn_trial_case *k, int *slot) {
    *slot = 0;
    take();
    trial *t = find(k, 1);
    int stream = 0;
    if (t && t->verdict >= 0) {
        stream = t->verdict;
    } else if (t && t->calls < BN_TRIAL_CALLS) {
        const int j = t->calls++;
        stream = (j / BN_TRIAL_RUN) & 1; /* a run of plain calls, one of streaming, ... */
        if (j % BN_TRIAL_RUN >= BN_TRIAL_RUN / 2) *slot = (int)(t - trials) + 1;
    } /* else: the trial's timed calls are still running elsewhere; plain meanwhile */
    give();
    return stream;
}

/* The median of a kind's times so far (the mean of the middle two of an even count), or 0. */
static int64_t median(const trial *t, int kind) {
    int64_t v[BN_TRIAL_TIMED];
    const int n = t->reports[kind];
    for (int i = 0; i < n; i++) { /* insertion sort: at most BN_TRIAL_TIMED values */
        int j = i;
        for (; j > 0 && v[j - 1] > t->ns[kind][i]; j--) v[j] = v[j - 1];
        v[j] = t->ns[kind][i];
    }
    return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void bn_store_trial_report(int slot, int stream, int64_t ns) {
    if (slot <= 0 || slot > BN_TRIAL_CASES) return;
    take();
    trial *t = &trials[slot - 1];
    const int kind = stream ? 1 : 0;
    if (t->reports[kind] < BN_TRIAL_TIMED) t->ns[kind][t->reports[kind]++] = ns;
    if (t->verdict < 0 && t->reports[0] == BN_TRIAL_TIMED && t->reports[1] == BN_TRIAL_TIMED)
        t->verdict = median(t, 1) * 20 < median(t, 0) * 19; /* 5% faster, or plain */
    give();
}

int bn_store_trial_verdict(const bn_trial_case *k, int64_t *plain_ns, int64_t *streaming_ns) {
    take();
    const trial *t = find(k, 0);
    const int verdict = t ? t->verdict : -1;
    *plain_ns = t ? median(t, 0) : 0;
    *streaming_ns = t ? median(t, 1) : 0;
    give();
    return verdict;
}

void bn_store_trial_reset(void) {
    take();
    memset(trials, 0, sizeof trials);
    give();
}
