/* random.c - the command's random numbers (demo's batch, bench's data): splitmix64, a tiny
 * generator with a 64-bit state that gives the same stream on every machine. */
#include "cli.h"

uint64_t cli_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

double cli_uniform(uint64_t *state) { return (double)(cli_splitmix64(state) >> 11) * 0x1p-53; }
