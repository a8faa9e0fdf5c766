/*
 * bnorm_mpi.h - synchronized batch normalization over the ranks of an MPI communicator
 * (libbnorm_mpi; link with -lbnorm_mpi -lbnorm, or load libbnorm_mpi.so, which loads the
 * libbnorm.so beside it: one copy of the library per process).
 *
 * A batch is split between the ranks along N: rank r holds n_r samples (any n_r >= 0, unequal
 * and empty shards included) of the same C channels and spatial size. Each call is collective:
 * every rank of comm must make it, with its own shard, in the same order as the other ranks.
 *
 *   forward:  each rank's per-channel moments (bn_compute_moments) are gathered on every rank
 *             and merged in rank order (bn_merge_moments), never by a reduction of unspecified
 *             order, so every rank holds the same bits of the batch's mean and variance; each
 *             rank normalizes its shard with them and updates its running statistics, which
 *             stay bit-for-bit the same on all ranks when they start the same.
 *   backward: each rank's sums of dy and dy * xhat (bn_backward_sums) are gathered and added in
 *             rank order, the counts too; each rank computes its shard's dx from them.
 *
 * Errors are decided together: every rank checks its arguments and computes its part, then the
 * ranks exchange their statuses (one small all-reduce) before any data moves or anything is
 * written. If any rank failed, every rank returns the status of the first failing rank (in rank
 * order) and writes nothing; a batch of one value per channel is BN_ERR_COUNT on every rank.
 * What the exchanges and the running statistics depend on must be the same on every rank, and
 * is checked in the same all-reduce: a different C is BN_ERR_SHAPE, a different dtype
 * BN_ERR_UNSUPPORTED, a different eps, momentum (unless cumulative) or cumulative flag
 * BN_ERR_ARGUMENT, on every rank. The layout may differ between ranks (what moves are
 * per-channel moments and sums). No rank is left waiting. The one exception: a scratch
 * allocation of the local normalization (channels-last with many channels) that fails after
 * the exchange returns BN_ERR_NO_MEMORY on that rank alone.
 *
 * MPI must be initialized. A failed MPI call follows the communicator's error handler (by
 * default MPI aborts the job); with MPI_ERRORS_RETURN it is returned as BN_ERR_IO. Threads: the
 * calls are collective operations on comm, so MPI's rules apply (several threads may call only
 * with MPI_THREAD_MULTIPLE, and not on the same communicator at once); the local work uses the
 * library's threads as bnorm.h says.
 *
 * The *_f variants take the communicator as a Fortran handle (MPI_Comm_c2f; mpi4py's
 * comm.py2f()), for bindings that cannot hold an MPI_Comm.
 *
 * EXAMPLE (mpicc example.c libbnorm_mpi.a libbnorm.a -fopenmp -lm; mpirun -np 3 ./a.out)
 *
 *   #include <bnorm_mpi.h>
 *   #include <stdio.h>
 *
 *   int main(int argc, char **argv) {
 *       MPI_Init(&argc, &argv);
 *       int rank;
 *       MPI_Comm_rank(MPI_COMM_WORLD, &rank);
 *       enum { C = 2, S = 4, M = 2 * C * S };
 *       int64_t dims[3] = {rank % 3, C, S};           // shards of 0, 1 or 2 samples
 *       float x[M], y[M], dy[M], dx[M], dweight[C], dbias[C];
 *       float running_mean[C] = {0, 0}, running_var[C] = {1, 1};
 *       int64_t num_batches_tracked = 0;
 *       double save_mean[C], save_invstd[C];
 *       for (int i = 0; i < M; i++) { x[i] = (float)(rank + i % 5); dy[i] = (float)(i % 3) - 1; }
 *
 *       bn_desc desc;
 *       bn_options opt = BN_OPTIONS_DEFAULT;
 *       bn_status st = bn_desc_from_dims(&desc, 3, dims, BN_FLOAT32, BN_CHANNELS_FIRST);
 *       if (st == BN_OK)   // collective: every rank, with its own shard
 *           st = bn_mpi_forward_train(y, save_mean, save_invstd, running_mean, running_var,
 *                                     &num_batches_tracked, x, NULL, NULL, &desc, &opt,
 *                                     MPI_COMM_WORLD);
 *       if (st == BN_OK)
 *           st = bn_mpi_backward_train(dx, dweight, dbias, dy, x, save_mean, save_invstd, NULL,
 *                                      &desc, MPI_COMM_WORLD);
 *       if (st != BN_OK) fprintf(stderr, "rank %d: %s\n", rank, bn_status_string(st));
 *       else printf("rank %d: running_mean[0] = %.9g\n", rank, running_mean[0]); // same on all
 *       MPI_Finalize();
 *       return st == BN_OK ? 0 : 1;
 *   }
 */
#ifndef BNORM_MPI_H
#define BNORM_MPI_H

#include "bnorm.h"

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * moments: in (c), this rank's moments; out (c), the moments of all ranks merged in rank order
 * (the same bits on every rank). c must be the same on every rank.
 * @return BN_OK; BN_ERR_NULL_POINTER, BN_ERR_SHAPE (c < 0, or c differs between ranks),
 *         BN_ERR_ARGUMENT (a negative count), BN_ERR_TOO_LARGE, BN_ERR_NO_MEMORY, on every rank
 *         when on any; nothing is written on failure.
 */
BN_API bn_status bn_mpi_merge_moments(bn_moments *moments, int64_t c, MPI_Comm comm);

/*
 * The training forward pass of bn_forward_train over the batch made of every rank's x
 * (arguments as there, for this rank's shard; C, dtype and opt the same on every rank).
 * save_mean and save_invstd get the batch's statistics on every rank; running_var takes the
 * unbiased variance of the whole batch.
 * @return BN_OK; the status of the first failing rank, on every rank (see the top).
 */
BN_API bn_status bn_mpi_forward_train(void *y, double *save_mean, double *save_invstd,
                                      void *running_mean, void *running_var,
                                      int64_t *num_batches_tracked, const void *x,
                                      const void *weight, const void *bias, const bn_desc *desc,
                                      const bn_options *opt, MPI_Comm comm);

/*
 * The training backward pass of bn_mpi_forward_train (arguments as bn_backward_train; C and
 * dtype the same on every rank):
 *   dx:      out, this rank's shard of the batch's gradient; NULL to skip
 *   dweight, dbias: out (C), this rank's share: sum over its shard of dy * xhat and of dy. The
 *            sum over ranks is the batch's (as torch's SyncBatchNorm leaves them for the
 *            data-parallel all-reduce of the gradients). NULL to skip.
 * @return BN_OK; the status of the first failing rank, on every rank.
 */
BN_API bn_status bn_mpi_backward_train(void *dx, void *dweight, void *dbias, const void *dy,
                                       const void *x, const double *save_mean,
                                       const double *save_invstd, const void *weight,
                                       const bn_desc *desc, MPI_Comm comm);

/* The same calls with a Fortran communicator handle. */
BN_API bn_status bn_mpi_merge_moments_f(bn_moments *moments, int64_t c, MPI_Fint comm);
BN_API bn_status bn_mpi_forward_train_f(void *y, double *save_mean, double *save_invstd,
                                        void *running_mean, void *running_var,
                                        int64_t *num_batches_tracked, const void *x,
                                        const void *weight, const void *bias, const bn_desc *desc,
                                        const bn_options *opt, MPI_Fint comm);
BN_API bn_status bn_mpi_backward_train_f(void *dx, void *dweight, void *dbias, const void *dy,
                                         const void *x, const double *save_mean,
                                         const double *save_invstd, const void *weight,
                                         const bn_desc *desc, MPI_Fint comm);

#ifdef __cplusplus
}
#endif

#endif /* BNORM_MPI_H */
