/* args.c - reading the command line strictly: the subcommands' argument loop, options with
 * values, and numbers that must be numbers through and through. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_take_value(int argc, char **argv, int *i, const char *short_name, const char *long_name,
                   const char **value, const char *command, const char *usage) {
    const char *arg = argv[*i], *found;
    size_t long_len = strlen(long_name);
    if (strncmp(arg, long_name, long_len) == 0 && arg[long_len] == '=') {
        found = arg + long_len + 1;
    } else if (strcmp(arg, long_name) == 0 || (short_name && strcmp(arg, short_name) == 0)) {
        if (*i + 1 >= argc) {
            cli_usage_error(command, usage, "%s needs a value", arg);
            return -1;
        }
        found = argv[++*i];
    } else {
        return 0;
    }
    if (*value) {
        cli_usage_error(command, usage, "%s given more than once", long_name);
        return -1;
    }
    *value = found;
    return 1;
}

int cli_parse_args(int argc, char **argv, const char *command, const char *usage,
                   const char *help, const cli_flag *flags, const cli_option *options,
                   const char **files, int max_files, int *nfiles) {
    int options_done = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (arg[0] == '\0') return cli_usage_error(command, usage, "an input file name is empty");
        if (options_done || arg[0] != '-' || arg[1] == '\0') {
            if (*nfiles == max_files)
                return cli_usage_error(command, usage, "unexpected argument '%s'", arg);
            files[(*nfiles)++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            options_done = 1;
            continue;
        }
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(help, stdout);
            return -1;
        }
        int r = 0;
        for (const cli_flag *f = flags; f && f->name && !r; f++)
            if (strcmp(arg, f->name) == 0) *f->set = 1, r = 1;
        for (const cli_option *o = options; o && o->long_name && !r; o++) {
            r = cli_take_value(argc, argv, &i, o->short_name, o->long_name, o->value, command, usage);
            if (r == 1 && o->file && (*o->value)[0] == '\0')
                return cli_usage_error(command, usage, "%s: the file name is empty", o->long_name);
        }
        if (r < 0) return CLI_USAGE_ERROR;
        if (r == 0) return cli_usage_error(command, usage, "unknown option '%s'", arg);
    }
    return CLI_OK;
}

int cli_parse_double(const char *text, double *out) {
    if (!text || text[0] == '\0' || strchr(" \t\n\v\f\r", text[0])) return 0;
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (*end != '\0' || errno == ERANGE || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

int cli_parse_u64(const char *text, uint64_t *out) {
    if (!text || text[0] < '0' || text[0] > '9') return 0;
    for (const char *p = text; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (*end != '\0' || errno == ERANGE || v != (uint64_t)v) return 0;
    *out = (uint64_t)v;
    return 1;
}
