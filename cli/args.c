/* args.c - reading the command line strictly: options with values, and numbers that must be
 * numbers through and through. */
#include "cli.h"

#include <errno.h>
#include <math.h>
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
