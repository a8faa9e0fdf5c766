/* errors.c - how every subcommand reports a failure: "bnorm: <file>: <problem>" on stderr with
 * exit status 1, a usage error with the command's synopsis and exit status 2, and a note about
 * a temporary file that an interrupted run left next to an output. */
#include "cli.h"
#include "output.h"

#include <stdarg.h>
#include <stdio.h>

int cli_fail(const char *file, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bnorm: %s: ", file);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_RUNTIME_ERROR;
}

int cli_usage_error(const char *command, const char *usage_lines, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("bnorm: ", stderr);
    if (command) fprintf(stderr, "%s: ", command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fputs(usage_lines, stderr);
    fprintf(stderr, "Run 'bnorm %s%s--help' for more.\n", command ? command : "",
            command ? " " : "");
    return CLI_USAGE_ERROR;
}

void cli_note_stale_temporary(const char *out) {
    char stale[4200];
    if (bn_find_stale_temporary(out, stale, sizeof stale))
        fprintf(stderr, "bnorm: %s: note: %s looks left over from an interrupted run (if no other "
                        "bnorm is writing this output now, remove it)\n", out, stale);
}
