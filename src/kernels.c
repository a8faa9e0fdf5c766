/* kernels.c - which instruction set's kernels run (kernels_isa.c is compiled once per set), and
 * the one dispatch on dtype and store kind. */
#include "kernel_types.h"

#include <stdatomic.h>
#include <string.h>
#ifdef BN_HAVE_STREAM
#include <cpuid.h>
#endif

/* Tests: how often the float statistics were summed again about a better pivot, and how often
 * they fell back to the exact path (rare paths only: nothing is counted on the common one). */
static atomic_llong pivot_again, pivot_exact;
void bn_note_pivot_again(void) { atomic_fetch_add(&pivot_again, 1); }
void bn_note_pivot_exact(void) { atomic_fetch_add(&pivot_exact, 1); }
void bn_pivot_counts(int64_t *again, int64_t *exact) {
    *again = (int64_t)atomic_load(&pivot_again);
    *exact = (int64_t)atomic_load(&pivot_exact);
}

/* One instruction set's tables, indexed by epilogue (BN_EPILOGUE_NONE, _RELU, _ADD_RELU) and
 * bn_dtype: plain stores, then streaming ones (NULL where there are none). */
enum { DTYPES = 4, EPILOGUES = 3 };
typedef struct {
    const char *name;
    const bn_kernels *plain[EPILOGUES][DTYPES], *stream[EPILOGUES][DTYPES];
} isa_tables;

#define PLAIN_OF(t, isa) bn_kernels_##t##_##isa, bn_kernels_##t##_relu_##isa, \
    bn_kernels_##t##_add_relu_##isa
#define STREAM_OF(t, isa) bn_kernels_##t##_stream_##isa, bn_kernels_##t##_relu_stream_##isa, \
    bn_kernels_##t##_add_relu_stream_##isa
#define BY_TYPE(kind, isa) \
    {&bn_kernels_f32_##kind##isa, &bn_kernels_f64_##kind##isa, &bn_kernels_bf16_##kind##isa, \
     &bn_kernels_f16_##kind##isa}
#ifdef BN_HAVE_STREAM
#define ISA_TABLES(isa) \
    extern const bn_kernels PLAIN_OF(f32, isa), PLAIN_OF(f64, isa), PLAIN_OF(bf16, isa), \
        PLAIN_OF(f16, isa), STREAM_OF(f32, isa), STREAM_OF(f64, isa), STREAM_OF(bf16, isa), \
        STREAM_OF(f16, isa);
ISA_TABLES(avx2)
ISA_TABLES(base)
#define TABLES(name, isa) \
    {name, \
     {BY_TYPE(, isa), BY_TYPE(relu_, isa), BY_TYPE(add_relu_, isa)}, \
     {BY_TYPE(stream_, isa), BY_TYPE(relu_stream_, isa), BY_TYPE(add_relu_stream_, isa)}}
/* best first. BN_NO_AVX512 leaves that set out: the sanitizer builds on a CPU without it, which
 * would compile its kernels (a third of the build) never to run them (Makefile: SAN_SETS). */
#ifndef BN_NO_AVX512
ISA_TABLES(avx512)
#endif
static const isa_tables sets[] = {
#ifndef BN_NO_AVX512
    TABLES("avx512f", avx512),
#endif
    TABLES("avx2", avx2), TABLES("x86-64", base)};
#else
extern const bn_kernels PLAIN_OF(f32, base), PLAIN_OF(f64, base), PLAIN_OF(bf16, base),
    PLAIN_OF(f16, base);
static const isa_tables sets[] = {
    {"portable", {BY_TYPE(, base), BY_TYPE(relu_, base), BY_TYPE(add_relu_, base)}, {{0}}}};
#endif
enum { SET_COUNT = sizeof sets / sizeof sets[0] };

#ifdef BN_HAVE_STREAM
/* F16C (CPUID leaf 1, ECX bit 29), which the AVX2 set is built with: every AVX2 CPU known has it,
 * but __builtin_cpu_supports does not name it in every compiler (clang 14). */
static int has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1u);
}
#endif

/* Whether this CPU runs set i. */
static int cpu_has(int i) {
#ifdef BN_HAVE_STREAM
    if (!strcmp(sets[i].name, "avx512f")) return __builtin_cpu_supports("avx512f");
    if (!strcmp(sets[i].name, "avx2")) return __builtin_cpu_supports("avx2") && has_f16c();
    return 1;
#else
    return i == SET_COUNT - 1; /* the baseline only */
#endif
}

static atomic_int forced_set = -1; /* tests: a set chosen by name, or -1 */

static const isa_tables *current(void) {
    static atomic_int best = -1; /* found once */
    const int f = atomic_load(&forced_set);
    if (f >= 0) return &sets[f];
    int b = atomic_load(&best);
    if (b < 0) {
        for (b = 0; !cpu_has(b); b++) continue;
        atomic_store(&best, b);
    }
    return &sets[b];
}

const char *bn_kernels_isa(void) { return current()->name; }

int bn_kernel_force_isa(const char *name) {
    if (!name) {
        atomic_store(&forced_set, -1);
        return 1;
    }
    for (int i = 0; i < SET_COUNT; i++)
        if (!strcmp(name, sets[i].name) && cpu_has(i)) {
            atomic_store(&forced_set, i);
            return 1;
        }
    return 0;
}

static atomic_int plain_stores_only; /* tests compare both kinds of store */
static atomic_llong stream_tables;   /* tests: how many times a streaming table was handed out */

void bn_kernel_force_plain_stores(int on) { atomic_store(&plain_stores_only, on != 0); }

int64_t bn_kernel_stream_count(void) { return (int64_t)atomic_load(&stream_tables); }

int bn_kernels_can_stream(void) {
    return current()->stream[0][BN_FLOAT32] != NULL && !atomic_load(&plain_stores_only);
}

const bn_kernels *bn_kernels_for_epilogue(bn_dtype dtype, int stream, int epilogue) {
    if ((unsigned)dtype >= DTYPES || (unsigned)epilogue >= EPILOGUES) return NULL;
    stream = stream && bn_kernels_can_stream();
    if (stream) atomic_fetch_add(&stream_tables, 1);
    const isa_tables *t = current();
    return stream ? t->stream[epilogue][dtype] : t->plain[epilogue][dtype];
}

const bn_kernels *bn_kernels_for(bn_dtype dtype, int stream) {
    return bn_kernels_for_epilogue(dtype, stream, BN_EPILOGUE_NONE);
}
