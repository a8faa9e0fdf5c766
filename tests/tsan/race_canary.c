/* race_canary.c - a deliberate data race in an OpenMP loop. `make tsan` runs it first, with the
 * same runtime, tool and options as the tests, and requires ThreadSanitizer to report it: proof
 * that the setup that finds the library clean would find a race. */
#include <stdio.h>

int main(void) {
    long sum = 0;
#pragma omp parallel for num_threads(4)
    for (int i = 0; i < 100000; i++) sum += i; /* unsynchronized: the race */
    printf("%ld\n", sum);
    return 0;
}
