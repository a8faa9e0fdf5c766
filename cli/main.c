/* main.c - the bnorm command: dispatch to a subcommand, the top-level help and version, the
 * removal of a half-written output on a fatal signal, and a failed write of stdout made an
 * error. (How subcommands report errors is errors.c.) */
#define _POSIX_C_SOURCE 200809L

#include "bnorm.h"
#include "cli.h"
#include "output.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: bnorm <command> [options]\n"
    "       bnorm --help | --version\n";

static const char help[] =
    "bnorm - batch normalization with PyTorch's semantics\n"
    "\n"
    "commands:\n"
    "  demo       normalize a random 20x2 batch and check it against a float64 reference\n"
    "  normalize  batch-normalize an (N, C, ...) array stored in a .npy file\n"
    "  bench      time the forward and backward passes against the memory roofline\n"
    "  fit        population statistics of .npy files of any size, to a safetensors file\n"
    "  apply      eval-mode normalization of a .npy file with statistics from a safetensors file\n"
    "\n"
    "options:\n"
    "  -h, --help     show this help\n"
    "  -V, --version  show the version\n"
    "\n"
    "Run 'bnorm <command> --help' for a command's options.\n"
    "Exit status: 0 on success, 1 on a runtime error, 2 on a usage error.\n";

static int run(int argc, char **argv) {
    if (argc < 2) return cli_usage_error(NULL, usage, "no command given");
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        fputs(help, stdout);
        return CLI_OK;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("bnorm %s\n", bn_version_string());
        return CLI_OK;
    }
    if (strcmp(cmd, "demo") == 0) return cli_demo(argc - 1, argv + 1);
    if (strcmp(cmd, "normalize") == 0) return cli_normalize(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0) return cli_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "fit") == 0) return cli_fit(argc - 1, argv + 1);
    if (strcmp(cmd, "apply") == 0) return cli_apply(argc - 1, argv + 1);
    if (cmd[0] == '-') return cli_usage_error(NULL, usage, "unknown option '%s'", cmd);
    return cli_usage_error(NULL, usage, "unknown command '%s'", cmd);
}

/* Interrupted while writing an output: remove the temporary file, then die of the signal.
 * (SIGKILL leaves it; the next write of that output mentions it: cli_note_stale_temporary.) */
static void on_signal(int sig) {
    bn_remove_output_temporary();
    signal(sig, SIG_DFL);
    raise(sig);
}

int main(int argc, char **argv) {
    static const int fatal[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (size_t k = 0; k < sizeof fatal / sizeof fatal[0]; k++) {
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        /* a signal the caller ignores (nohup, background jobs) stays ignored */
        if (sigaction(fatal[k], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(fatal[k], &sa, NULL);
    }
    int status = run(argc, argv);
    /* a full disk or a closed pipe on stdout is a failure too */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "bnorm: standard output: %s\n", strerror(errno));
        if (status == CLI_OK) status = CLI_RUNTIME_ERROR;
    }
    return status;
}
