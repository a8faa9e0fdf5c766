/* check.h - the C tests' tiny harness: suites register themselves, checks count passes and
 * failures, main() prints "N passed, N failed" and exits non-zero on any failure. */
#ifndef BN_CHECK_H
#define BN_CHECK_H

#include <stdio.h>
#include <stdint.h>

typedef void (*check_suite_fn)(void);
void check_register(const char *name, check_suite_fn fn);
/* Records one check; prints the failure with its place. Returns cond so callers can bail out. */
int check_report(int cond, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A suite: BN_SUITE(name) { ...checks... } in any test file; main() runs them all by name. */
#define BN_SUITE(name)                                                                    \
    static void name(void);                                                               \
    __attribute__((constructor)) static void name##_register(void) {                     \
        check_register(#name, name);                                                      \
    }                                                                                     \
    static void name(void)

#define CHECK(cond) check_report(!!(cond), __FILE__, __LINE__, "%s", #cond)
#define CHECK_MSG(cond, ...) check_report(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_STATUS(expr, want)                                                          \
    do {                                                                                  \
        int check_got_ = (int)(expr);                                                     \
        check_report(check_got_ == (int)(want), __FILE__, __LINE__,                       \
                     "%s: status %d, want %s (%d)", #expr, check_got_, #want, (int)(want)); \
    } while (0)
#define CHECK_CLOSE(a, b, tol)                                                            \
    do {                                                                                  \
        double check_a_ = (double)(a), check_b_ = (double)(b);                            \
        double check_d_ = check_a_ - check_b_;                                            \
        check_report(check_d_ <= (tol) && -check_d_ <= (tol), __FILE__, __LINE__,         \
                     "%s = %.17g, %s = %.17g, tolerance %g", #a, check_a_, #b, check_b_,   \
                     (double)(tol));                                                      \
    } while (0)

#endif
