/* fuzz_files.h - what the fuzz targets that go through files share: one input file and one
 * output file per process, rewritten for each input and removed at exit (in /dev/shm when it is
 * writable, so that fsync stays in memory), and an abort that names the broken invariant.
 * Included by one .c file per target, after _POSIX_C_SOURCE is defined. */
#ifndef BN_FUZZ_FILES_H
#define BN_FUZZ_FILES_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char path[64], out_path[80];
static const char *fuzz_target = "fuzz";

static void remove_files(void) {
    unlink(path);
    unlink(out_path);
}

/* From LLVMFuzzerInitialize: target names the fuzz target in file names and messages. */
static void fuzz_files_init(const char *target) {
    fuzz_target = target;
    const char *tmp = getenv("TMPDIR");
    if (!tmp) tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof path, "%.40s/bnorm_%.12s.%ld", tmp, target, (long)getpid());
    snprintf(out_path, sizeof out_path, "%s.out", path);
    atexit(remove_files);
}

static void die(const char *what) {
    fprintf(stderr, "%s: invariant broken: %s\n", fuzz_target, what);
    abort();
}

#endif
