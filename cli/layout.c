/* layout.c - the dims of an array in a file, (N, C, ...) or with --channels-last (N, ..., C),
 * in the library's logical order (N, C, ...), which it takes whatever the layout. */
#include "cli.h"

void cli_logical_dims(int64_t *dims, int ndim, const int64_t *file_dims, int channels_last) {
    for (int k = 0; k < ndim; k++)
        dims[k] = !channels_last || k == 0 ? file_dims[k]
                  : k == 1                ? file_dims[ndim - 1]
                                          : file_dims[k - 1];
}
