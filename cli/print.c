/* print.c - printing a float32 matrix as PyTorch prints a 2-d tensor (precision 4, the default
 * print options): one width for every element, fixed or scientific notation chosen from the
 * spread of the nonzero finite magnitudes, integer-valued tensors as "3.". */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef enum { FMT_FIXED, FMT_SCI, FMT_INT } fmt_mode;

static int format_value(char *buf, size_t len, double v, fmt_mode mode) {
    switch (mode) {
    case FMT_SCI: return snprintf(buf, len, "%.4e", v);
    case FMT_INT: return snprintf(buf, len, isfinite(v) ? "%.0f." : "%.0f", v);
    default: return snprintf(buf, len, "%.4f", v);
    }
}

void cli_print_tensor(const float *x, int rows, int cols) {
    int64_t count = (int64_t)rows * cols;
    double lo = INFINITY, hi = 0;
    int integral = 1, any = 0;
    for (int64_t i = 0; i < count; i++) { /* torch looks only at nonzero finite values */
        double v = x[i];
        if (!isfinite(v) || v == 0) continue;
        any = 1;
        lo = fmin(lo, fabs(v));
        hi = fmax(hi, fabs(v));
        if (v != ceil(v)) integral = 0;
    }
    fmt_mode mode = FMT_FIXED;
    if (any) {
        int wide = hi / lo > 1000.0 || hi > 1e8;
        mode = integral ? (wide ? FMT_SCI : FMT_INT)
                        : (wide || lo < 1e-4 ? FMT_SCI : FMT_FIXED);
    }
    int width = 1;
    char buf[64];
    for (int64_t i = 0; i < count; i++) {
        double v = x[i];
        if (!isfinite(v) || v == 0) continue;
        int n = format_value(buf, sizeof buf, v, mode);
        if (n > width) width = n;
    }
    fputs("tensor([", stdout);
    for (int r = 0; r < rows; r++) {
        fputs(r ? "        [" : "[", stdout);
        for (int c = 0; c < cols; c++) {
            format_value(buf, sizeof buf, x[(int64_t)r * cols + c], mode);
            printf("%*s%s", width, buf, c + 1 < cols ? ", " : "");
        }
        fputs(r + 1 < rows ? "],\n" : "]", stdout);
    }
    fputs("])\n", stdout);
}
