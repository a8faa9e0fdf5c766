/* main.c - runs the registered suites in name order (all, those a filter names, or a shard of
 * them); "N passed, N failed"; exit 1 on failure. */
#include "check.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_SUITES = 128 };
static struct { const char *name; check_suite_fn fn; } suites[MAX_SUITES];
static int n_suites;
static int n_passed, n_failed;
static const char *current_suite = "";

void check_register(const char *name, check_suite_fn fn) {
    if (n_suites == MAX_SUITES) {
        fprintf(stderr, "check: more than %d suites\n", MAX_SUITES);
        exit(2);
    }
    suites[n_suites].name = name;
    suites[n_suites].fn = fn;
    n_suites++;
}

int check_report(int cond, const char *file, int line, const char *fmt, ...) {
    if (cond) {
        n_passed++;
        return 1;
    }
    n_failed++;
    fprintf(stderr, "FAIL %s %s:%d: ", current_suite, file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const char *const *)a)[0], ((const char *const *)b)[0]);
}

/* test_bnorm [--shard K/N] [FILTER]: the suites whose names contain FILTER; with --shard, of
 * those the K-th of every N in name order (K from 0), so that N processes side by side (valgrind
 * runs one thread at a time) run each suite once between them. */
int main(int argc, char **argv) {
    long shard = 0, shards = 1;
    int arg = 1;
    if (argc > 2 && strcmp(argv[1], "--shard") == 0) {
        char *end;
        shard = strtol(argv[2], &end, 10);
        if (*end == '/') shards = strtol(end + 1, &end, 10);
        if (*end || shards < 1 || shard < 0 || shard >= shards) {
            fprintf(stderr, "test_bnorm: --shard K/N with 0 <= K < N, not \"%s\"\n", argv[2]);
            return 2;
        }
        arg = 3;
    }
    const char *filter = argc > arg ? argv[arg] : NULL;
    qsort(suites, (size_t)n_suites, sizeof suites[0], by_name);
    long matched = 0;
    for (int i = 0; i < n_suites; i++) {
        if (filter && !strstr(suites[i].name, filter)) continue;
        if (matched++ % shards != shard) continue;
        current_suite = suites[i].name;
        int before = n_failed;
        suites[i].fn();
        printf("%-28s %s\n", suites[i].name, n_failed == before ? "ok" : "FAILED");
    }
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed || n_passed == 0 ? 1 : 0;
}
