/* MPI_Alltoallv baseline for transport_bench's M x N mesh: ranks 0..M-1 play
 * attention nodes, ranks M..M+N-1 expert nodes. Dispatch is one Alltoallv in
 * which every attention rank sends S bytes to every expert rank; combine is
 * the reverse. Pairs that are not attention<->expert get zero counts, so the
 * wire traffic is exactly what transport_bench's nodes exchange.
 *
 *   mpirun -np M+N [transport flags] mpi_alltoallv_baseline M N SIZES REPS
 *
 * Rank 0 prints one line per attention rank in the same format the
 * transport_bench nodes use, so the coordinator aggregates both identically:
 *   RESULT tput K BYTES ITERS SECS
 *   RESULT lat K BYTES P50_US P99_US
 * and DONE at the end. Run K covers size K % #sizes, repetition K / #sizes. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keep in step with transport_bench.cpp: same iteration counts and warm-up. */
static size_t clampz(size_t v, size_t lo, size_t hi) { return v < lo ? lo : v > hi ? hi : v; }
static size_t throughput_iters(size_t bytes) { return clampz(((size_t)128 << 20) / bytes, 64, 20000); }
static size_t latency_iters(size_t bytes) { return clampz(((size_t)16 << 20) / bytes, 50, 2000); }
enum { kLatencyWarmup = 5, kWindow = 8 };

static int cmp_double(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

typedef struct {
  int nranks;
  int* scount; /* dispatch: this rank -> others */
  int* rcount;
  int* displ;  /* slot j of every buffer belongs to rank j; counts pick which slots move */
  int* ack_scount;
  int* ack_rcount;
  char* sbuf;
  char* rbuf;   /* kWindow receive areas, one per dispatch in flight */
  size_t area;  /* bytes in one area: nranks slots of the largest size */
} Exchange;

/* Dispatch direction: attention -> expert with `bytes`; combine is the same
 * call with send and receive counts swapped. */
static void setup_counts(Exchange* x, int rank, int m, size_t bytes) {
  const int attention = rank < m;
  for (int j = 0; j < x->nranks; ++j) {
    const int peer = (j < m) != attention;
    x->scount[j] = attention && peer ? (int)bytes : 0;
    x->rcount[j] = !attention && peer ? (int)bytes : 0;
    /* The throughput phase ends with a 1-byte combine, like the nodes' ack. */
    x->ack_scount[j] = !attention && peer ? 1 : 0;
    x->ack_rcount[j] = attention && peer ? 1 : 0;
    x->displ[j] = (int)(j * bytes);
  }
}

static void dispatch(Exchange* x) {
  MPI_Alltoallv(x->sbuf, x->scount, x->displ, MPI_BYTE, x->rbuf, x->rcount, x->displ, MPI_BYTE, MPI_COMM_WORLD);
}
static void combine(Exchange* x) {
  MPI_Alltoallv(x->sbuf, x->rcount, x->displ, MPI_BYTE, x->rbuf, x->scount, x->displ, MPI_BYTE, MPI_COMM_WORLD);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, nranks;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  if (argc < 5 || atoi(argv[1]) + atoi(argv[2]) != nranks || atoi(argv[1]) < 1 || atoi(argv[2]) < 1) {
    if (rank == 0) printf("ERROR usage: mpirun -np M+N %s M N SIZES REPS (got %d ranks)\n", argv[0], nranks);
    MPI_Finalize();
    return 2;
  }
  const int m = atoi(argv[1]);
  const int reps = atoi(argv[4]) > 0 ? atoi(argv[4]) : 1;
  size_t sizes[64];
  int nsizes = 0;
  size_t max_bytes = 1;
  for (char* s = strtok(argv[3], ","); s && nsizes < 64; s = strtok(NULL, ",")) {
    sizes[nsizes] = strtoull(s, NULL, 10);
    if (sizes[nsizes] > max_bytes) max_bytes = sizes[nsizes];
    ++nsizes;
  }

  Exchange x;
  x.nranks = nranks;
  x.scount = calloc(nranks, sizeof(int));
  x.rcount = calloc(nranks, sizeof(int));
  x.displ = calloc(nranks, sizeof(int));
  x.ack_scount = calloc(nranks, sizeof(int));
  x.ack_rcount = calloc(nranks, sizeof(int));
  x.area = max_bytes * nranks;
  x.sbuf = malloc(x.area);
  x.rbuf = malloc(x.area * kWindow);
  memset(x.sbuf, rank < m ? 0x5a : 0xa5, x.area);
  memset(x.rbuf, 0, x.area * kWindow);
  MPI_Request window[kWindow];
  double* us = malloc(sizeof(double) * (latency_iters(1) + kLatencyWarmup));
  double* all = malloc(sizeof(double) * 3 * nranks);

  /* The nodes connect before they time anything; MPI connects on first use,
   * so one exchange per size takes wire-up and registration out of the timing. */
  for (int i = 0; i < nsizes; ++i) {
    setup_counts(&x, rank, m, sizes[i]);
    dispatch(&x);
    combine(&x);
  }

  for (int k = 0; k < reps * nsizes; ++k) {
    const size_t bytes = sizes[k % nsizes];
    setup_counts(&x, rank, m, bytes);
    double mine[3] = {0, 0, 0}; /* tput seconds, rtt p50, rtt p99 */

    /* Like the nodes' kWindow sends in flight per pair: up to kWindow
     * dispatches outstanding, each receiving into its own area. */
    const size_t iters = throughput_iters(bytes);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (size_t it = 0; it < iters; ++it) {
      MPI_Request* slot = &window[it % kWindow];
      if (it >= kWindow) MPI_Wait(slot, MPI_STATUS_IGNORE);
      MPI_Ialltoallv(x.sbuf, x.scount, x.displ, MPI_BYTE, x.rbuf + (it % kWindow) * x.area, x.rcount, x.displ,
                     MPI_BYTE, MPI_COMM_WORLD, slot);
    }
    MPI_Waitall(iters < kWindow ? (int)iters : kWindow, window, MPI_STATUSES_IGNORE);
    MPI_Alltoallv(x.sbuf, x.ack_scount, x.displ, MPI_BYTE, x.rbuf, x.ack_rcount, x.displ, MPI_BYTE, MPI_COMM_WORLD);
    mine[0] = MPI_Wtime() - t0;

    const size_t n = latency_iters(bytes) + kLatencyWarmup;
    size_t kept = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    for (size_t it = 0; it < n; ++it) {
      t0 = MPI_Wtime();
      dispatch(&x);
      combine(&x);
      if (it >= kLatencyWarmup) us[kept++] = (MPI_Wtime() - t0) * 1e6;
    }
    qsort(us, kept, sizeof(double), cmp_double);
    mine[1] = us[kept / 2];
    mine[2] = us[kept * 99 / 100];

    MPI_Gather(mine, 3, MPI_DOUBLE, all, 3, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (rank == 0) {
      for (int a = 0; a < m; ++a) {
        printf("RESULT tput %d %zu %zu %.9f\n", k, bytes, iters, all[3 * a]);
        printf("RESULT lat %d %zu %.2f %.2f\n", k, bytes, all[3 * a + 1], all[3 * a + 2]);
      }
      fflush(stdout);
    }
  }
  if (rank == 0) {
    printf("DONE\n");
    fflush(stdout);
  }
  free(all);
  free(us);
  free(x.rbuf);
  free(x.sbuf);
  free(x.ack_rcount);
  free(x.ack_scount);
  free(x.displ);
  free(x.rcount);
  free(x.scount);
  MPI_Finalize();
  return 0;
}
