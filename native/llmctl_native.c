/*
 * llmctl's native CPU kernels, a plain Node-API C addon built at install time by node-gyp.
 *
 * Why: tfjs's WASM backend runs one thread with 128-bit SIMD (its threads are off under Node), so matmuls
 * reach 10-20 GFLOP/s and every small op costs a kernel launch. These kernels work directly on the WASM
 * heap (tensor data lives in one ArrayBuffer; callers pass byte offsets), use AVX-512 or AVX2 chosen at
 * run time, and split large work over a small pthread pool. src/backend/native.ts registers them as tfjs
 * kernels; without this addon the WASM kernels run instead.
 *
 * Conventions: every array is float32 row-major; "off" arguments are byte offsets into the heap buffer.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 8
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

static int g_isa = 0; /* 2 = AVX-512, 1 = AVX2+FMA, 0 = portable C */

/* ------------------------------------------------------------------ thread pool
 * The caller runs share 0 itself; workers spin briefly for the next job (kernels come in quick succession
 * during a training step), then sleep on a condition variable. Only one caller uses the pool at a time;
 * a concurrent caller (another worker_thread of the same process) runs its job single-threaded. */
typedef void (*task_fn)(void *ctx, int tid, int nthreads);

static int g_threads = 1;
static int g_started = 0;
static pthread_t g_workers[MAX_THREADS];
static pthread_mutex_t g_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static atomic_uint g_gen;
static atomic_int g_pending;
static task_fn g_fn;
static void *g_ctx;
static int g_job_threads;

/* Set while this thread runs a share of a parallel job: a kernel called from there runs on its own thread. */
static __thread int tl_in_share;

static void *worker_main(void *arg) {
  int tid = (int)(intptr_t)arg;
  tl_in_share = 1;
  unsigned seen = atomic_load(&g_gen);
  for (;;) {
    int spins = 0;
    while (atomic_load_explicit(&g_gen, memory_order_acquire) == seen && spins < 4000) {
      _mm_pause();
      spins++;
    }
    if (atomic_load_explicit(&g_gen, memory_order_acquire) == seen) {
      pthread_mutex_lock(&g_mtx);
      while (atomic_load(&g_gen) == seen) pthread_cond_wait(&g_cv, &g_mtx);
      pthread_mutex_unlock(&g_mtx);
    }
    seen = atomic_load(&g_gen);
    if (tid < g_job_threads) g_fn(g_ctx, tid, g_job_threads);
    atomic_fetch_sub_explicit(&g_pending, 1, memory_order_release);
  }
  return NULL;
}

static void start_workers(int n) {
  for (int i = g_started + 1; i < n; i++) {
    pthread_create(&g_workers[i], NULL, worker_main, (void *)(intptr_t)i);
  }
  if (n - 1 > g_started) g_started = n - 1;
}

/* Run fn over `want` shares (capped by the pool size); returns when all are done. */
static void parallel(task_fn fn, void *ctx, int want) {
  int n = want < g_threads ? want : g_threads;
  if (n <= 1 || pthread_mutex_trylock(&g_pool_lock) != 0) {
    fn(ctx, 0, 1);
    return;
  }
  g_fn = fn;
  g_ctx = ctx;
  g_job_threads = n;
  atomic_store(&g_pending, g_started);
  pthread_mutex_lock(&g_mtx);
  atomic_fetch_add_explicit(&g_gen, 1, memory_order_release);
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mtx);
  tl_in_share = 1;
  fn(ctx, 0, n);
  tl_in_share = 0;
  /* Wait for the workers' last chunks; yield soon, so that a worker descheduled on a busy machine can
   * run on this core. */
  for (int spins = 0; atomic_load_explicit(&g_pending, memory_order_acquire) > 0; spins++) {
    if (spins < 200) _mm_pause();
    else sched_yield();
  }
  pthread_mutex_unlock(&g_pool_lock);
}

/* ------------------------------------------------------------------ GEMM
 * C[M,N] = op(A)[M,K] · op(B)[K,N] (+ beta·C) (+ bias[N]), BLIS-style: B packed into NR-wide panels, A into
 * MR-high panels, a register-blocked micro-kernel. beta is 0 (overwrite; C is not read) or 1 (accumulate). */
#define MR 6
/* The unpacked kernels (few rows): prefetch distance in rows of B within a panel, and how far ahead (in columns)
 * the first row panel pulls a later panel into L2; tuned on a 6x384 model whose weights come from memory. */
#ifndef PF_ROWS
#define PF_ROWS 16
#endif
#ifndef NEXT_PANEL
#define NEXT_PANEL 64
#endif
#ifndef DIRECT_BIG_B
#define DIRECT_BIG_B (256 * 1024) /* floats: a B bigger than L2 is streamed from memory either way, so unpacked pays up to 128 rows */
#endif
#ifndef KC
#define KC 512
#endif
#ifndef MC
#define MC 120
#endif
#ifndef NC
#define NC 768
#endif

typedef void (*ukr_fn)(long kc, const float *A, const float *B, float *C, long ldc, int mr, int nr, float beta, const float *bias);

/* The AVX-512 micro-kernels' ending: rows 0..mr-1 of a 6×32 tile (+ bias, + C when beta is 1) stored under the column masks. */
__attribute__((target("avx512f,fma"), always_inline)) static inline void store_tile_avx512(float *C, long ldc, int mr, __mmask16 m0, __mmask16 m1, float beta,
                                                                                        const float *bias, __m512 rows[MR][2]) {
  __m512 bb0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  __m512 bb1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  for (int r = 0; r < mr; r++) {
    float *cr = C + r * ldc;
    __m512 v0 = _mm512_add_ps(rows[r][0], bb0), v1 = _mm512_add_ps(rows[r][1], bb1);
    if (beta != 0.0f) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    if (m1) _mm512_mask_storeu_ps(cr + 16, m1, v1);
  }
}

__attribute__((target("avx512f,fma"))) static void ukr_avx512(long kc, const float *A, const float *B, float *C, long ldc, int mr, int nr, float beta, const float *bias) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (long k = 0; k < kc; k++) {
    __m512 b0 = _mm512_load_ps(B), b1 = _mm512_load_ps(B + 16), a;
    a = _mm512_set1_ps(A[0]); c00 = _mm512_fmadd_ps(a, b0, c00); c01 = _mm512_fmadd_ps(a, b1, c01);
    a = _mm512_set1_ps(A[1]); c10 = _mm512_fmadd_ps(a, b0, c10); c11 = _mm512_fmadd_ps(a, b1, c11);
    a = _mm512_set1_ps(A[2]); c20 = _mm512_fmadd_ps(a, b0, c20); c21 = _mm512_fmadd_ps(a, b1, c21);
    a = _mm512_set1_ps(A[3]); c30 = _mm512_fmadd_ps(a, b0, c30); c31 = _mm512_fmadd_ps(a, b1, c31);
    a = _mm512_set1_ps(A[4]); c40 = _mm512_fmadd_ps(a, b0, c40); c41 = _mm512_fmadd_ps(a, b1, c41);
    a = _mm512_set1_ps(A[5]); c50 = _mm512_fmadd_ps(a, b0, c50); c51 = _mm512_fmadd_ps(a, b1, c51);
    A += MR;
    B += 32;
  }
  __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
  __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
  __m512 rows[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  store_tile_avx512(C, ldc, mr, m0, m1, beta, bias, rows);
}

__attribute__((target("avx2,fma"))) static void ukr_avx2(long kc, const float *A, const float *B, float *C, long ldc, int mr, int nr, float beta, const float *bias) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (long k = 0; k < kc; k++) {
    __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8), a;
    a = _mm256_broadcast_ss(A + 0); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(A + 1); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(A + 2); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(A + 3); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(A + 4); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(A + 5); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
    A += MR;
    B += 16;
  }
  float tile[MR][16] __attribute__((aligned(32)));
  _mm256_store_ps(tile[0], c00); _mm256_store_ps(tile[0] + 8, c01);
  _mm256_store_ps(tile[1], c10); _mm256_store_ps(tile[1] + 8, c11);
  _mm256_store_ps(tile[2], c20); _mm256_store_ps(tile[2] + 8, c21);
  _mm256_store_ps(tile[3], c30); _mm256_store_ps(tile[3] + 8, c31);
  _mm256_store_ps(tile[4], c40); _mm256_store_ps(tile[4] + 8, c41);
  _mm256_store_ps(tile[5], c50); _mm256_store_ps(tile[5] + 8, c51);
  for (int r = 0; r < mr; r++) {
    float *cr = C + r * ldc;
    for (int j = 0; j < nr; j++) cr[j] = tile[r][j] + (bias ? bias[j] : 0.0f) + (beta != 0.0f ? cr[j] : 0.0f);
  }
}

static void ukr_c(long kc, const float *A, const float *B, float *C, long ldc, int mr, int nr, float beta, const float *bias) {
  float acc[MR][16] = {{0}};
  for (long k = 0; k < kc; k++) {
    for (int r = 0; r < MR; r++)
      for (int j = 0; j < 16; j++) acc[r][j] += A[r] * B[j];
    A += MR;
    B += 16;
  }
  for (int r = 0; r < mr; r++) {
    float *cr = C + r * ldc;
    for (int j = 0; j < nr; j++) cr[j] = acc[r][j] + (bias ? bias[j] : 0.0f) + (beta != 0.0f ? cr[j] : 0.0f);
  }
}

/* The same micro-kernel reading A and B in place (row-major, no transposes): for products with a few dozen
 * rows, packing B costs as much as the arithmetic (every weight matrix is repacked on each decode step). Rows
 * past mr read row mr-1 again and columns past nr are masked, so nothing outside the operands is touched;
 * the sums run in the same k order with the same fused multiply-adds, so the result is bit-identical. */
__attribute__((target("avx512f,fma"))) static void ukr_avx512_direct(long kc, const float *A, long lda, const float *B, long ldb, float *C, long ldc, int mr, int nr,
                                                                     float beta, const float *bias, const float *next) {
  const float *a0 = A, *a1 = A + (mr > 1 ? 1 : 0) * lda, *a2 = A + (mr > 2 ? 2 : mr - 1) * lda, *a3 = A + (mr > 3 ? 3 : mr - 1) * lda;
  const float *a4 = A + (mr > 4 ? 4 : mr - 1) * lda, *a5 = A + (mr > 5 ? 5 : mr - 1) * lda;
  __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
  __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (long k = 0; k < kc; k++) {
    if (k + PF_ROWS < kc) {
      _mm_prefetch((const char *)(B + (k + PF_ROWS) * ldb), _MM_HINT_T0);
      _mm_prefetch((const char *)(B + (k + PF_ROWS) * ldb + 16), _MM_HINT_T0);
    }
    if (next) {
      _mm_prefetch((const char *)(next + k * ldb), _MM_HINT_T1);
      _mm_prefetch((const char *)(next + k * ldb + 16), _MM_HINT_T1);
    }
    __m512 b0 = _mm512_maskz_loadu_ps(m0, B + k * ldb), b1 = _mm512_maskz_loadu_ps(m1, B + k * ldb + 16), a;
    a = _mm512_set1_ps(a0[k]); c00 = _mm512_fmadd_ps(a, b0, c00); c01 = _mm512_fmadd_ps(a, b1, c01);
    a = _mm512_set1_ps(a1[k]); c10 = _mm512_fmadd_ps(a, b0, c10); c11 = _mm512_fmadd_ps(a, b1, c11);
    a = _mm512_set1_ps(a2[k]); c20 = _mm512_fmadd_ps(a, b0, c20); c21 = _mm512_fmadd_ps(a, b1, c21);
    a = _mm512_set1_ps(a3[k]); c30 = _mm512_fmadd_ps(a, b0, c30); c31 = _mm512_fmadd_ps(a, b1, c31);
    a = _mm512_set1_ps(a4[k]); c40 = _mm512_fmadd_ps(a, b0, c40); c41 = _mm512_fmadd_ps(a, b1, c41);
    a = _mm512_set1_ps(a5[k]); c50 = _mm512_fmadd_ps(a, b0, c50); c51 = _mm512_fmadd_ps(a, b1, c51);
  }
  __m512 rows[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  store_tile_avx512(C, ldc, mr, m0, m1, beta, bias, rows);
}

/* One row (decoding a single sequence): the direct kernel's arithmetic for mr = 1, without five redundant rows
 * of multiply-adds; four column panels per pass keep four independent sums in flight per k. */
__attribute__((target("avx512f,fma"))) static void ukr_avx512_row(long kc, const float *A, const float *B, long ldb, float *C, long N, float beta,
                                                                  const float *bias) {
  long j = 0;
  for (; j + 64 <= N; j += 64) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    const float *b = B + j;
    const int pf = j + 128 <= N; /* pull the panel after next into L2 while this one is summed */
    for (long k = 0; k < kc; k++, b += ldb) {
      if (pf) {
        _mm_prefetch((const char *)(b + 64), _MM_HINT_T1);
        _mm_prefetch((const char *)(b + 80), _MM_HINT_T1);
        _mm_prefetch((const char *)(b + 96), _MM_HINT_T1);
        _mm_prefetch((const char *)(b + 112), _MM_HINT_T1);
      }
      __m512 a = _mm512_set1_ps(A[k]);
      c0 = _mm512_fmadd_ps(a, _mm512_loadu_ps(b), c0);
      c1 = _mm512_fmadd_ps(a, _mm512_loadu_ps(b + 16), c1);
      c2 = _mm512_fmadd_ps(a, _mm512_loadu_ps(b + 32), c2);
      c3 = _mm512_fmadd_ps(a, _mm512_loadu_ps(b + 48), c3);
    }
    __m512 acc[4] = {c0, c1, c2, c3};
    for (int q = 0; q < 4; q++) {
      __m512 v = _mm512_add_ps(acc[q], bias ? _mm512_loadu_ps(bias + j + 16 * q) : _mm512_setzero_ps());
      if (beta != 0.0f) v = _mm512_add_ps(v, _mm512_loadu_ps(C + j + 16 * q));
      _mm512_storeu_ps(C + j + 16 * q, v);
    }
  }
  for (; j < N; j += 16) {
    __mmask16 m = N - j >= 16 ? 0xFFFF : (__mmask16)((1u << (N - j)) - 1);
    __m512 c0 = _mm512_setzero_ps();
    const float *b = B + j;
    for (long k = 0; k < kc; k++, b += ldb) c0 = _mm512_fmadd_ps(_mm512_set1_ps(A[k]), _mm512_maskz_loadu_ps(m, b), c0);
    __m512 v = _mm512_add_ps(c0, bias ? _mm512_maskz_loadu_ps(m, bias + j) : _mm512_setzero_ps());
    if (beta != 0.0f) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, C + j));
    _mm512_mask_storeu_ps(C + j, m, v);
  }
}

static int nr_of_isa(void) { return g_isa == 2 ? 32 : 16; }
static ukr_fn ukr_of_isa(void) { return g_isa == 2 ? ukr_avx512 : g_isa == 1 ? ukr_avx2 : ukr_c; }

/* Element (i, j) of op(X) where X is stored row-major with leading dimension ld. */
#define AT(X, trans, ld, i, j) ((trans) ? (X)[(long)(j) * (ld) + (i)] : (X)[(long)(i) * (ld) + (j)])

static void pack_a(int ta, const float *A, long lda, long i0, long k0, long mc, long kc, float *Ap) {
  for (long ir = 0; ir < mc; ir += MR) {
    int mr = mc - ir < MR ? (int)(mc - ir) : MR;
    float *dst = Ap + ir * kc;
    if (!ta) {
      for (int r = 0; r < MR; r++) {
        if (r < mr) {
          const float *src = A + (i0 + ir + r) * lda + k0;
          for (long k = 0; k < kc; k++) dst[k * MR + r] = src[k];
        } else {
          for (long k = 0; k < kc; k++) dst[k * MR + r] = 0.0f;
        }
      }
    } else {
      for (long k = 0; k < kc; k++) {
        const float *src = A + (k0 + k) * lda + i0 + ir;
        for (int r = 0; r < MR; r++) dst[k * MR + r] = r < mr ? src[r] : 0.0f;
      }
    }
  }
}

static void pack_b(int tb, const float *B, long ldb, long k0, long j0, long kc, long nc, int NR, float *Bp) {
  if (!tb) {
    /* Row by row: each row of B is read once, front to back (a panel at a time would walk B with a stride
     * of ldb, which the prefetchers cannot follow once the weights come from memory). */
    for (long k = 0; k < kc; k++) {
      const float *src = B + (k0 + k) * ldb + j0;
      for (long jr = 0; jr < nc; jr += NR) {
        int nr = nc - jr < NR ? (int)(nc - jr) : NR;
        float *d = Bp + jr * kc + k * NR;
        if (nr == NR) memcpy(d, src + jr, sizeof(float) * NR);
        else {
          for (int j = 0; j < nr; j++) d[j] = src[jr + j];
          for (int j = nr; j < NR; j++) d[j] = 0.0f;
        }
      }
    }
    return;
  }
  for (long jr = 0; jr < nc; jr += NR) {
    int nr = nc - jr < NR ? (int)(nc - jr) : NR;
    float *dst = Bp + jr * kc;
    for (int j = 0; j < NR; j++) {
      if (j < nr) {
        const float *src = B + (j0 + jr + j) * ldb + k0;
        for (long k = 0; k < kc; k++) dst[k * NR + j] = src[k];
      } else {
        for (long k = 0; k < kc; k++) dst[k * NR + j] = 0.0f;
      }
    }
  }
}

static __thread float *tl_ap, *tl_bp;

static void ensure_pack_buffers(void) {
  if (!tl_ap) {
    if (posix_memalign((void **)&tl_ap, 64, sizeof(float) * MC * KC) != 0) abort();
    if (posix_memalign((void **)&tl_bp, 64, sizeof(float) * (NC + 32) * KC) != 0) abort();
  }
}

/* Few rows (decoding a token, a bias gradient): no packing, stream B once per row.
 * Every element is computed with exactly the micro-kernels' arithmetic: per KC block of k, a sequential
 * sum from 0 in k order (fused multiply-adds when the ISA kernels run, separate ones for ukr_c), then
 * + bias (first block) and + C. So a row's result never depends on how many rows share the call or on how
 * the threads cut M (a tail chunk of <= 4 rows lands here): scoring a sequence alone or in a batch gives
 * the same bits. */
static __thread float *tl_small;
static __thread long tl_small_n;

static float *small_acc(long n) {
  if (n > tl_small_n) {
    free(tl_small);
    if (posix_memalign((void **)&tl_small, 64, sizeof(float) * n) != 0) abort();
    tl_small_n = n;
  }
  return tl_small;
}

#define MADD(fused, a, b, acc) ((fused) ? fmaf((a), (b), (acc)) : (acc) + (a) * (b))

static inline __attribute__((always_inline)) void gemm_small_m_body(int fused, int ta, int tb, long M, long N, long K, const float *A, long lda, const float *B, long ldb, float *C, long ldc, float beta, const float *bias) {
  float *acc = tb ? NULL : small_acc(N);
  for (long m = 0; m < M; m++) {
    float *c = C + m * ldc;
    if (K == 0) {
      for (long n = 0; n < N; n++) c[n] = (bias ? bias[n] : 0.0f) + (beta != 0.0f ? c[n] : 0.0f);
      continue;
    }
    for (long k0 = 0; k0 < K; k0 += KC) {
      const long k1 = K - k0 < KC ? K : k0 + KC;
      const int first = k0 == 0;
      const float *bb = first ? bias : NULL;
      const int addc = !first || beta != 0.0f;
      if (!tb) {
        for (long n = 0; n < N; n++) acc[n] = 0.0f;
        long k = k0;
        /* four k at a time, still in k order: fewer passes over acc */
        for (; k + 4 <= k1; k += 4) {
          const float a0 = AT(A, ta, lda, m, k), a1 = AT(A, ta, lda, m, k + 1), a2 = AT(A, ta, lda, m, k + 2), a3 = AT(A, ta, lda, m, k + 3);
          const float *b0 = B + k * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
          for (long n = 0; n < N; n++) acc[n] = MADD(fused, a3, b3[n], MADD(fused, a2, b2[n], MADD(fused, a1, b1[n], MADD(fused, a0, b0[n], acc[n]))));
        }
        for (; k < k1; k++) {
          const float a = AT(A, ta, lda, m, k);
          const float *b = B + k * ldb;
          for (long n = 0; n < N; n++) acc[n] = MADD(fused, a, b[n], acc[n]);
        }
        for (long n = 0; n < N; n++) c[n] = acc[n] + (bb ? bb[n] : 0.0f) + (addc ? c[n] : 0.0f);
      } else {
        float arow[k1 - k0];
        for (long k = k0; k < k1; k++) arow[k - k0] = AT(A, ta, lda, m, k);
        const long kn = k1 - k0;
        long n = 0;
        /* eight columns at a time: eight independent sums (each still in k order) instead of one latency-bound chain */
        for (; n + 8 <= N; n += 8) {
          const float *b = B + n * ldb + k0;
          float s[8] = {0};
          for (long k = 0; k < kn; k++) {
            const float a = arow[k];
            for (int q = 0; q < 8; q++) s[q] = MADD(fused, a, b[q * ldb + k], s[q]);
          }
          for (int q = 0; q < 8; q++) c[n + q] = s[q] + (bb ? bb[n + q] : 0.0f) + (addc ? c[n + q] : 0.0f);
        }
        for (; n < N; n++) {
          const float *b = B + n * ldb + k0;
          float s = 0.0f;
          for (long k = 0; k < kn; k++) s = MADD(fused, arow[k], b[k], s);
          c[n] = s + (bb ? bb[n] : 0.0f) + (addc ? c[n] : 0.0f);
        }
      }
    }
  }
}

/* With FMA (ukr_avx2 / ukr_avx512 run) and without (ukr_c; compiled for the baseline ISA, so no contraction). */
CLONES static void gemm_small_m_fused(int ta, int tb, long M, long N, long K, const float *A, long lda, const float *B, long ldb, float *C, long ldc, float beta, const float *bias) {
  gemm_small_m_body(1, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, beta, bias);
}
static void gemm_small_m_plain(int ta, int tb, long M, long N, long K, const float *A, long lda, const float *B, long ldb, float *C, long ldc, float beta, const float *bias) {
  gemm_small_m_body(0, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, beta, bias);
}
static void gemm_small_m(int ta, int tb, long M, long N, long K, const float *A, long lda, const float *B, long ldb, float *C, long ldc, float beta, const float *bias) {
  (g_isa > 0 ? gemm_small_m_fused : gemm_small_m_plain)(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, beta, bias);
}

static void gemm_st(int ta, int tb, long M, long N, long K, const float *A, long lda, const float *B, long ldb, float *C, long ldc, float beta, const float *bias) {
  if (M <= 0 || N <= 0) return;
  /* A few dozen rows (decode steps), or up to 128 rows of a B bigger than L2: no packing. The kernel prefetches
   * (its 32-column panels are strided walks through B that the hardware prefetchers do not follow). */
  if (g_isa == 2 && !ta && !tb && K > 0 && (M <= 48 || (M <= 128 && K * N >= DIRECT_BIG_B))) {
    for (long pc = 0; pc < K; pc += KC) {
      long kc = K - pc < KC ? K - pc : KC;
      int first = pc == 0;
      if (M == 1) {
        ukr_avx512_row(kc, A + pc, B + pc * ldb, ldb, C, N, first ? beta : 1.0f, first ? bias : NULL);
        continue;
      }
      for (long jr = 0; jr < N; jr += 32)
        for (long ir = 0; ir < M; ir += MR)
          ukr_avx512_direct(kc, A + ir * lda + pc, lda, B + pc * ldb + jr, ldb, C + ir * ldc + jr, ldc, M - ir < MR ? (int)(M - ir) : MR,
                            N - jr < 32 ? (int)(N - jr) : 32, first ? beta : 1.0f, first && bias ? bias + jr : NULL,
                            ir == 0 && jr + NEXT_PANEL + 32 <= N ? B + pc * ldb + jr + NEXT_PANEL : NULL); /* the first row panel pulls a later column panel into L2 */
    }
    return;
  }
  if ((M <= 4 && K <= 16384) || K == 0) {
    gemm_small_m(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, beta, bias);
    return;
  }
  ensure_pack_buffers();
  const int NR = nr_of_isa();
  const ukr_fn ukr = ukr_of_isa();
  for (long jc = 0; jc < N; jc += NC) {
    long nc = N - jc < NC ? N - jc : NC;
    for (long pc = 0; pc < K; pc += KC) {
      long kc = K - pc < KC ? K - pc : KC;
      int first = pc == 0;
      pack_b(tb, B, ldb, pc, jc, kc, nc, NR, tl_bp);
      for (long ic = 0; ic < M; ic += MC) {
        long mc = M - ic < MC ? M - ic : MC;
        pack_a(ta, A, lda, ic, pc, mc, kc, tl_ap);
        for (long jr = 0; jr < nc; jr += NR) {
          int nr = nc - jr < NR ? (int)(nc - jr) : NR;
          for (long ir = 0; ir < mc; ir += MR) {
            int mr = mc - ir < MR ? (int)(mc - ir) : MR;
            ukr(kc, tl_ap + ir * kc, tl_bp + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc, mr, nr, first ? beta : 1.0f,
                first && bias ? bias + jc + jr : NULL);
          }
        }
      }
    }
  }
}

typedef struct {
  int ta, tb;
  long batch, M, N, K, lda, ldb, ldc, sa, sb, sc;
  const float *A, *B, *bias;
  float *C;
  float beta;
  /* Work is cut into chunks that threads take in turn (an atomic counter), so a thread that the OS
   * deschedules on a busy machine delays one chunk, not half the job. */
  atomic_long next;
  long chunks, chunk_n, chunk_m;
} gemm_job;

static void gemm_chunk(gemm_job *j, long c) {
  if (j->chunk_n == 0 && j->chunk_m == 0) { /* one batch entry per chunk */
    gemm_st(j->ta, j->tb, j->M, j->N, j->K, j->A + c * j->sa, j->lda, j->B + c * j->sb, j->ldb, j->C + c * j->sc, j->ldc, j->beta, j->bias);
    return;
  }
  long per = j->chunk_n ? (j->N + j->chunk_n - 1) / j->chunk_n : (j->M + j->chunk_m - 1) / j->chunk_m;
  long b = c / per, i = c % per;
  const float *A = j->A + b * j->sa, *B = j->B + b * j->sb;
  float *C = j->C + b * j->sc;
  if (j->chunk_n) {
    long lo = i * j->chunk_n, hi = lo + j->chunk_n < j->N ? lo + j->chunk_n : j->N;
    gemm_st(j->ta, j->tb, j->M, hi - lo, j->K, A, j->lda, j->tb ? B + lo * j->ldb : B + lo, j->ldb, C + lo, j->ldc, j->beta, j->bias ? j->bias + lo : NULL);
  } else {
    long lo = i * j->chunk_m, hi = lo + j->chunk_m < j->M ? lo + j->chunk_m : j->M;
    gemm_st(j->ta, j->tb, hi - lo, j->N, j->K, j->ta ? A + lo : A + lo * j->lda, j->lda, B, j->ldb, C + lo * j->ldc, j->ldc, j->beta, j->bias);
  }
}

static void gemm_task(void *p, int tid, int nt) {
  (void)tid;
  (void)nt;
  gemm_job *j = (gemm_job *)p;
  for (long c; (c = atomic_fetch_add(&j->next, 1)) < j->chunks;) gemm_chunk(j, c);
}

static void gemm_mt(gemm_job *j) {
  double flops = 2.0 * j->batch * j->M * j->N * j->K;
  int nr = nr_of_isa();
  atomic_init(&j->next, 0);
  j->chunk_n = j->chunk_m = 0;
  if (flops < 8e6 || g_threads == 1) { /* below ~8 MFLOP (a 16-row decode step) waking a second thread costs more than it saves */
    j->chunks = j->batch;
    for (long c = 0; c < j->batch; c++) gemm_chunk(j, c);
    return;
  }
  long want = 4L * g_threads; /* chunks per job: enough to balance, few enough to pack little twice */
  if (j->batch >= want) {
    j->chunks = j->batch;
  } else if (j->N >= j->M && j->N >= 2 * nr) {
    long per = (want + j->batch - 1) / j->batch, cols = (j->N + per - 1) / per;
    j->chunk_n = (cols + nr - 1) / nr * nr;
    j->chunks = j->batch * ((j->N + j->chunk_n - 1) / j->chunk_n);
  } else if (j->M >= 2 * MR) {
    long per = (want + j->batch - 1) / j->batch, rows = (j->M + per - 1) / per;
    j->chunk_m = (rows + MR - 1) / MR * MR;
    j->chunks = j->batch * ((j->M + j->chunk_m - 1) / j->chunk_m);
  } else {
    j->chunks = j->batch;
  }
  parallel(gemm_task, j, g_threads);
}

/* ------------------------------------------------------------------ elementwise and row kernels */

CLONES static void layernorm_fwd(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd, long rows, long D, float eps) {
  for (long r = 0; r < rows; r++) {
    const float *xr = x + r * D;
    float *yr = y + r * D;
    float s = 0.0f;
    for (long i = 0; i < D; i++) s += xr[i];
    float mu = s / D, v = 0.0f;
    for (long i = 0; i < D; i++) v += (xr[i] - mu) * (xr[i] - mu);
    float rs = 1.0f / sqrtf(v / D + eps);
    for (long i = 0; i < D; i++) yr[i] = (xr[i] - mu) * rs * w[i] + b[i];
    mean[r] = mu;
    rstd[r] = rs;
  }
}

/* dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·w; dw = Σ dy·x̂; db = Σ dy (over rows). */
CLONES static void layernorm_bwd(const float *dy, const float *x, const float *w, const float *mean, const float *rstd, float *dx, float *dw, float *db, long rows, long D) {
  for (long i = 0; i < D; i++) dw[i] = db[i] = 0.0f;
  for (long r = 0; r < rows; r++) {
    const float *xr = x + r * D, *gr = dy + r * D;
    float *dxr = dx + r * D;
    float mu = mean[r], rs = rstd[r], sg = 0.0f, sgx = 0.0f;
    for (long i = 0; i < D; i++) {
      float xh = (xr[i] - mu) * rs, g = gr[i] * w[i];
      sg += g;
      sgx += g * xh;
      dw[i] += gr[i] * xh;
      db[i] += gr[i];
    }
    sg /= D;
    sgx /= D;
    for (long i = 0; i < D; i++) {
      float xh = (xr[i] - mu) * rs;
      dxr[i] = rs * (gr[i] * w[i] - sg - xh * sgx);
    }
  }
}

CLONES static void rmsnorm_fwd(const float *x, const float *w, float *y, float *rstd, long rows, long D, float eps) {
  for (long r = 0; r < rows; r++) {
    const float *xr = x + r * D;
    float *yr = y + r * D;
    float s = 0.0f;
    for (long i = 0; i < D; i++) s += xr[i] * xr[i];
    float rs = 1.0f / sqrtf(s / D + eps);
    for (long i = 0; i < D; i++) yr[i] = xr[i] * rs * w[i];
    rstd[r] = rs;
  }
}

CLONES static void rmsnorm_bwd(const float *dy, const float *x, const float *w, const float *rstd, float *dx, float *dw, long rows, long D) {
  for (long i = 0; i < D; i++) dw[i] = 0.0f;
  for (long r = 0; r < rows; r++) {
    const float *xr = x + r * D, *gr = dy + r * D;
    float *dxr = dx + r * D;
    float rs = rstd[r], sgx = 0.0f;
    for (long i = 0; i < D; i++) {
      float xh = xr[i] * rs;
      sgx += gr[i] * w[i] * xh;
      dw[i] += gr[i] * xh;
    }
    sgx /= D;
    for (long i = 0; i < D; i++) dxr[i] = rs * (gr[i] * w[i] - xr[i] * rs * sgx);
  }
}

/* exp(x) for float32, Cephes' polynomial after Cody-Waite range reduction (max error ~2 ulp), written so
 * the compiler vectorizes it: libm's expf is a scalar call per element, which made GELU, SwiGLU and
 * softmax cost more than the matmuls around them. Inputs are clamped to [-87, 88] (exp(-87) ≈ 1.6e-38). */
static inline float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  /* round to nearest by the 1.5·2^23 trick (no call to rintf, so the loop vectorizes) */
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

/* GELU, tanh approximation, as x·sigmoid(2z) with z = √(2/π)(x + 0.044715x³) (the same function). */
#define GELU_C 0.7978845608028654f
CLONES static void gelu_fwd(const float *x, float *y, long n) {
  for (long i = 0; i < n; i++) {
    float v = x[i], z2 = 2.0f * GELU_C * (v + 0.044715f * v * v * v);
    y[i] = v / (1.0f + fast_expf(-z2));
  }
}

CLONES static void gelu_bwd(const float *dy, const float *x, float *dx, long n) {
  for (long i = 0; i < n; i++) {
    float v = x[i], z2 = 2.0f * GELU_C * (v + 0.044715f * v * v * v);
    float s = 1.0f / (1.0f + fast_expf(-z2));
    float dz2 = 2.0f * GELU_C * (1.0f + 3.0f * 0.044715f * v * v);
    dx[i] = dy[i] * (s + v * s * (1.0f - s) * dz2);
  }
}

/* SwiGLU: y = silu(g)·u. */
CLONES static void swiglu_fwd(const float *g, const float *u, float *y, long n) {
  for (long i = 0; i < n; i++) {
    float s = 1.0f / (1.0f + fast_expf(-g[i]));
    y[i] = g[i] * s * u[i];
  }
}

CLONES static void swiglu_bwd(const float *dy, const float *g, const float *u, float *dg, float *du, long n) {
  for (long i = 0; i < n; i++) {
    float s = 1.0f / (1.0f + fast_expf(-g[i])), silu = g[i] * s;
    du[i] = dy[i] * silu;
    dg[i] = dy[i] * u[i] * (s + silu * (1.0f - s));
  }
}

/* AdamW on one tensor: writes new p, m, v (decoupled decay, bias corrections bc1/bc2 given). */
CLONES static void adamw(const float *p, const float *g, const float *m, const float *v, float *po, float *mo, float *vo, long n, float lr, float b1,
                         float b2, float omb1, float omb2, float eps, float keep, float bc1, float bc2, float gscale) {
  for (long i = 0; i < n; i++) {
    float gi = g[i] * gscale;
    float mi = b1 * m[i] + omb1 * gi;
    float vi = b2 * v[i] + omb2 * (gi * gi);
    mo[i] = mi;
    vo[i] = vi;
    po[i] = p[i] * keep - ((mi / bc1) / (sqrtf(vi / bc2) + eps)) * lr;
  }
}

CLONES static double sum_squares(const float *x, long n) {
  double s = 0.0;
  float acc = 0.0f;
  for (long i = 0; i < n; i++) {
    acc += x[i] * x[i];
    if ((i & 4095) == 4095) {
      s += acc;
      acc = 0.0f;
    }
  }
  return s + acc;
}

CLONES static void softmax_rows(float *s, long rows, long cols, long ld, const long *valid) {
  for (long r = 0; r < rows; r++) {
    float *row = s + r * ld;
    long n = valid ? valid[r] : cols;
    float mx = -INFINITY;
    for (long i = 0; i < n; i++) mx = row[i] > mx ? row[i] : mx;
    float sum = 0.0f;
    for (long i = 0; i < n; i++) {
      row[i] = fast_expf(row[i] - mx);
      sum += row[i];
    }
    float inv = 1.0f / sum;
    for (long i = 0; i < n; i++) row[i] *= inv;
    for (long i = n; i < cols; i++) row[i] = 0.0f;
  }
}

/* dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale, in place in dP. */
CLONES static void softmax_bwd_rows(const float *P, float *dP, long rows, long cols, float scale) {
  for (long r = 0; r < rows; r++) {
    const float *p = P + r * cols;
    float *d = dP + r * cols;
    float dot = 0.0f;
    for (long i = 0; i < cols; i++) dot += p[i] * d[i];
    for (long i = 0; i < cols; i++) d[i] = p[i] * (d[i] - dot) * scale;
  }
}

/* out[n] = Σ_rows x[row, n]: a bias gradient. */
CLONES static void colsum(const float *x, float *out, long rows, long N) {
  for (long n = 0; n < N; n++) out[n] = 0.0f;
  for (long r = 0; r < rows; r++) {
    const float *xr = x + r * N;
    for (long n = 0; n < N; n++) out[n] += xr[n];
  }
}

/* Rotary embedding, "rotate half" layout (Hugging Face Llama), on x [B, T, heads, hd] at positions
 * pos0 + t; inverse = 1 rotates back (the gradient of a rotation is its transpose). cos/sin come from a
 * per-thread table that grows with the positions seen. */
static __thread float *tl_rope_cos, *tl_rope_sin;
static __thread long tl_rope_pos, tl_rope_hd;
static __thread double tl_rope_theta;

static void rope_table(long npos, long hd, double theta) {
  if (tl_rope_hd == hd && tl_rope_theta == theta && tl_rope_pos >= npos) return;
  long half = hd / 2, cap = npos > 2 * tl_rope_pos ? npos : 2 * tl_rope_pos;
  free(tl_rope_cos);
  free(tl_rope_sin);
  tl_rope_cos = (float *)malloc(sizeof(float) * cap * half);
  tl_rope_sin = (float *)malloc(sizeof(float) * cap * half);
  for (long t = 0; t < cap; t++)
    for (long i = 0; i < half; i++) {
      double angle = (double)t * pow(theta, (-2.0 * i) / hd);
      tl_rope_cos[t * half + i] = (float)cos(angle);
      tl_rope_sin[t * half + i] = (float)sin(angle);
    }
  tl_rope_pos = cap;
  tl_rope_hd = hd;
  tl_rope_theta = theta;
}

CLONES static void rope_apply(const float *x, float *y, long B, long T, long nh, long hd, long pos0, int inverse) {
  long half = hd / 2;
  float sgn = inverse ? -1.0f : 1.0f;
  for (long b = 0; b < B; b++)
    for (long t = 0; t < T; t++) {
      const float *c = tl_rope_cos + (pos0 + t) * half, *s = tl_rope_sin + (pos0 + t) * half;
      for (long h = 0; h < nh; h++) {
        const float *xr = x + ((b * T + t) * nh + h) * hd;
        float *yr = y + ((b * T + t) * nh + h) * hd;
        for (long i = 0; i < half; i++) {
          float x1 = xr[i], x2 = xr[i + half], si = sgn * s[i];
          yr[i] = x1 * c[i] - x2 * si;
          yr[i + half] = x2 * c[i] + x1 * si;
        }
      }
    }
}

/* ------------------------------------------------------------------ attention
 * Causal scaled-dot-product attention with grouped-query heads (query head h reads kv head h / rep) and
 * strided layouts, so q/k/v can stay in the [B, T, heads, hd] layout of the projections (no transposes)
 * and k/v can be a preallocated cache. Query t sits at absolute position pos0 + t and sees keys 0..pos0+t.
 * P (the probabilities, [B, H, T, S]) is written for the backward pass. */
typedef struct {
  atomic_long next; /* next (batch, head) unit to take */
  long B, H, KVH, T, S, hd, pos0;
  float scale;
  const float *q, *k, *v;
  long qb, qh, qt, kb, kh, kt, vb, vh, vt; /* element strides: batch, head, row */
  float *y;
  long yb, yh, yt;
  float *P;
  /* backward */
  const float *dy;
  float *dq, *dk, *dv;
} attn_job;

static __thread float *tl_scratch;
static __thread long tl_scratch_n;
static __thread long *tl_valid;
static __thread long tl_valid_n;

static float *scratch(long n) {
  if (tl_scratch_n < n) {
    free(tl_scratch);
    if (posix_memalign((void **)&tl_scratch, 64, sizeof(float) * n) != 0) abort();
    tl_scratch_n = n;
  }
  return tl_scratch;
}

static long *valid_counts(long T, long S, long pos0) {
  if (tl_valid_n < T) {
    free(tl_valid);
    tl_valid = (long *)malloc(sizeof(long) * T);
    tl_valid_n = T;
  }
  for (long t = 0; t < T; t++) tl_valid[t] = pos0 + t + 1 < S ? pos0 + t + 1 : S;
  return tl_valid;
}

/* Strided [rows, hd] matrix (row stride rs) as a gemm operand: gemm takes a leading dimension, so any
 * row stride works directly. */
static void attn_fwd_task(void *p, int tid, int nt) {
  attn_job *j = (attn_job *)p;
  long rep = j->H / j->KVH;
  (void)tid;
  (void)nt;
  long *valid = valid_counts(j->T, j->S, j->pos0);
  for (long bh; (bh = atomic_fetch_add(&j->next, 1)) < j->B * j->H;) {
    long b = bh / j->H, h = bh % j->H, g = h / rep;
    const float *q = j->q + b * j->qb + h * j->qh;
    const float *k = j->k + b * j->kb + g * j->kh;
    const float *v = j->v + b * j->vb + g * j->vh;
    float *y = j->y + b * j->yb + h * j->yh;
    float *P = j->P ? j->P + bh * j->T * j->S : scratch(j->T * j->S);
    gemm_st(0, 1, j->T, j->S, j->hd, q, j->qt, k, j->kt, P, j->S, 0.0f, NULL); /* q · kᵀ */
    for (long t = 0; t < j->T; t++) {
      float *row = P + t * j->S;
      for (long s = 0; s < valid[t]; s++) row[s] *= j->scale;
    }
    softmax_rows(P, j->T, j->S, j->S, valid);
    gemm_st(0, 0, j->T, j->hd, j->S, P, j->S, v, j->vt, y, j->yt, 0.0f, NULL); /* P · v */
  }
}

static void attn_bwd_task(void *p, int tid, int nt) {
  attn_job *j = (attn_job *)p;
  long rep = j->H / j->KVH, T = j->T, S = j->S, hd = j->hd;
  (void)tid;
  (void)nt;
  float *dP = scratch(T * S);
  /* One unit per (batch, kv head): the rep query heads that read a kv head accumulate into its dk, dv. */
  for (long bg; (bg = atomic_fetch_add(&j->next, 1)) < j->B * j->KVH;) {
    long b = bg / j->KVH, g = bg % j->KVH;
    const float *k = j->k + b * j->kb + g * j->kh, *v = j->v + b * j->vb + g * j->vh;
    float *dk = j->dk + b * j->kb + g * j->kh, *dv = j->dv + b * j->vb + g * j->vh;
    for (long r = 0; r < rep; r++) {
      long h = g * rep + r;
      const float *P = j->P + (b * j->H + h) * T * S;
      const float *q = j->q + b * j->qb + h * j->qh, *dy = j->dy + b * j->yb + h * j->yh;
      float *dq = j->dq + b * j->qb + h * j->qh;
      float beta = r == 0 ? 0.0f : 1.0f;
      gemm_st(1, 0, S, hd, T, P, S, dy, j->yt, dv, j->vt, beta, NULL); /* dv += Pᵀ · dy */
      gemm_st(0, 1, T, S, hd, dy, j->yt, v, j->vt, dP, S, 0.0f, NULL); /* dP = dy · vᵀ */
      softmax_bwd_rows(P, dP, T, S, j->scale);
      gemm_st(0, 0, T, hd, S, dP, S, k, j->kt, dq, j->qt, 0.0f, NULL); /* dq = dS · k */
      gemm_st(1, 0, S, hd, T, dP, S, q, j->qt, dk, j->kt, beta, NULL); /* dk += dSᵀ · q */
    }
  }
}

/* ------------------------------------------------------------------ paged attention (serve)
 * The tokens of a serving step belong to many sequences, each at its own positions, with keys/values in a
 * block pool that lives outside the heap (src/serve/paged-attention.ts: one Float32Array per layer, rows of
 * KVH·hd floats). Token i sits at position pos[i]; the pool slots of its sequence's positions 0..pos[i] are
 * slots[base[i] + 0..pos[i]]. Every token's new k/v are written first, then each (token, head) attends over
 * its own sequence: a prompt chunk reads its earlier rows from the pool like a decode token does. */
typedef struct {
  const int32_t *pos, *base, *slots;
  float *kpool, *vpool;
} paged_tables;

typedef struct {
  atomic_long next; /* next (token, head) unit to take */
  long N, H, KVH, hd;
  float scale;
  const float *q; /* [N, H·hd], RoPE applied */
  float *y;       /* [N, H·hd] */
  const paged_tables *pt;
} paged_job;

/* One (token, head) of paged attention: scores over the sequence's rows, softmax, weighted sum of values.
 * The AVX-512 version keeps the query in registers and works through the keys four at a time (four
 * independent sums, then one reduction each); the portable one is the same arithmetic in plain C. */
__attribute__((target("avx512f,fma"))) static void paged_attend_avx512(const float *q, const float *kp, const float *vp, const int32_t *slots, long ctx,
                                                                      long kvd, long hd, float scale, float *s, float *y) {
  const long nv = hd / 16, tail = hd % 16;
  const __mmask16 tm = (__mmask16)((1u << tail) - 1);
  __m512 qv[8];
  for (long j = 0; j < nv && j < 8; j++) qv[j] = _mm512_loadu_ps(q + 16 * j);
  float mx = -INFINITY;
  long c = 0;
  if (nv <= 8 && tail == 0) {
    for (; c + 4 <= ctx; c += 4) {
      const float *k0 = kp + (long)slots[c] * kvd, *k1 = kp + (long)slots[c + 1] * kvd, *k2 = kp + (long)slots[c + 2] * kvd, *k3 = kp + (long)slots[c + 3] * kvd;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (long j = 0; j < nv; j++) {
        a0 = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(k0 + 16 * j), a0);
        a1 = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(k1 + 16 * j), a1);
        a2 = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(k2 + 16 * j), a2);
        a3 = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(k3 + 16 * j), a3);
      }
      s[c] = _mm512_reduce_add_ps(a0) * scale;
      s[c + 1] = _mm512_reduce_add_ps(a1) * scale;
      s[c + 2] = _mm512_reduce_add_ps(a2) * scale;
      s[c + 3] = _mm512_reduce_add_ps(a3) * scale;
    }
  }
  for (; c < ctx; c++) {
    const float *k = kp + (long)slots[c] * kvd;
    __m512 a = _mm512_setzero_ps();
    long d = 0;
    for (; d + 16 <= hd; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), a);
    if (d < hd) a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, q + d), _mm512_maskz_loadu_ps(tm, k + d), a);
    s[c] = _mm512_reduce_add_ps(a) * scale;
  }
  for (c = 0; c < ctx; c++) mx = s[c] > mx ? s[c] : mx;
  float sum = 0.0f;
  for (c = 0; c < ctx; c++) {
    s[c] = fast_expf(s[c] - mx);
    sum += s[c];
  }
  const float inv = 1.0f / sum;
  if (nv <= 8 && tail == 0) {
    __m512 acc[8];
    for (long j = 0; j < nv; j++) acc[j] = _mm512_setzero_ps();
    for (c = 0; c < ctx; c++) {
      const float *v = vp + (long)slots[c] * kvd;
      const __m512 w = _mm512_set1_ps(s[c] * inv);
      for (long j = 0; j < nv; j++) acc[j] = _mm512_fmadd_ps(w, _mm512_loadu_ps(v + 16 * j), acc[j]);
    }
    for (long j = 0; j < nv; j++) _mm512_storeu_ps(y + 16 * j, acc[j]);
    return;
  }
  for (long d = 0; d < hd; d++) y[d] = 0.0f;
  for (c = 0; c < ctx; c++) {
    const float *v = vp + (long)slots[c] * kvd;
    const float w = s[c] * inv;
    for (long d = 0; d < hd; d++) y[d] += w * v[d];
  }
}

CLONES static void paged_attend_plain(const float *q, const float *kp, const float *vp, const int32_t *slots, long ctx, long kvd, long hd, float scale,
                                      float *s, float *y) {
  float mx = -INFINITY;
  for (long c = 0; c < ctx; c++) {
    const float *k = kp + (long)slots[c] * kvd;
    float part[8] = {0}, dot = 0.0f;
    long d = 0;
    for (; d + 8 <= hd; d += 8)
      for (int l = 0; l < 8; l++) part[l] += q[d + l] * k[d + l];
    for (; d < hd; d++) dot += q[d] * k[d];
    s[c] = (dot + ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]))) * scale;
    mx = s[c] > mx ? s[c] : mx;
  }
  float sum = 0.0f;
  for (long c = 0; c < ctx; c++) {
    s[c] = fast_expf(s[c] - mx);
    sum += s[c];
  }
  float inv = 1.0f / sum;
  for (long d = 0; d < hd; d++) y[d] = 0.0f;
  for (long c = 0; c < ctx; c++) {
    const float *v = vp + (long)slots[c] * kvd;
    float w = s[c] * inv;
    for (long d = 0; d < hd; d++) y[d] += w * v[d];
  }
}

static void paged_task(void *p, int tid, int nt) {
  paged_job *j = (paged_job *)p;
  const paged_tables *pt = j->pt;
  long rep = j->H / j->KVH, kvd = j->KVH * j->hd, d = j->H * j->hd;
  (void)tid;
  (void)nt;
  for (long u; (u = atomic_fetch_add(&j->next, 1)) < j->N * j->H;) {
    long i = u / j->H, h = u % j->H, g = h / rep, ctx = (long)pt->pos[i] + 1;
    (g_isa == 2 ? paged_attend_avx512 : paged_attend_plain)(j->q + i * d + h * j->hd, pt->kpool + g * j->hd, pt->vpool + g * j->hd, pt->slots + pt->base[i], ctx, kvd, j->hd, j->scale,
                 scratch(ctx), j->y + i * d + h * j->hd);
  }
}

/* Rows of x [N, nh·hd] rotated in place, each at its own position, with a table from rope_table (passed in:
 * the table is per thread, and worker threads run this too). */
CLONES static void rope_rows(float *x, long N, long nh, long hd, const int32_t *pos, const float *cos_t, const float *sin_t) {
  long half = hd / 2;
  for (long i = 0; i < N; i++) {
    const float *c = cos_t + (long)pos[i] * half, *s = sin_t + (long)pos[i] * half;
    for (long h = 0; h < nh; h++) {
      float *xr = x + (i * nh + h) * hd;
      for (long t = 0; t < half; t++) {
        float x1 = xr[t], x2 = xr[t + half];
        xr[t] = x1 * c[t] - x2 * s[t];
        xr[t + half] = x2 * c[t] + x1 * s[t];
      }
    }
  }
}

/* Store rows r0..r1 of k/v [N, KVH·hd] in their pool slots. */
static void paged_store(const float *k, const float *v, long r0, long r1, long kvd, const paged_tables *pt) {
  for (long i = r0; i < r1; i++) {
    long slot = pt->slots[pt->base[i] + pt->pos[i]];
    memcpy(pt->kpool + slot * kvd, k + i * kvd, sizeof(float) * kvd);
    memcpy(pt->vpool + slot * kvd, v + i * kvd, sizeof(float) * kvd);
  }
}

/* Attention of all N tokens over their sequences (every token's k/v already stored). */
static void paged_attend_all(const float *q, float *y, long N, long H, long KVH, long hd, const paged_tables *pt) {
  paged_job j;
  atomic_init(&j.next, 0);
  j.N = N; j.H = H; j.KVH = KVH; j.hd = hd;
  j.scale = 1.0f / sqrtf((float)hd);
  j.q = q;
  j.y = y;
  j.pt = pt;
  double flops = 0;
  for (long i = 0; i < N; i++) flops += 4.0 * H * hd * (pt->pos[i] + 1);
  parallel(paged_task, &j, flops < 2e6 ? 1 : (int)(N * H)); /* a decode step of 16 short sequences: waking a thread costs more */
}

static long max_pos(const int32_t *pos, long N) {
  long m = 0;
  for (long i = 0; i < N; i++) m = pos[i] > m ? pos[i] : m;
  return m;
}

/* RoPE (llama) at each token's position, store k/v in the pool, attend. q and k are scratch (rotated in place). */
static void paged_attention(float *q, float *k, const float *v, float *y, long N, long H, long KVH, long hd, int llama, double theta,
                            const paged_tables *pt) {
  if (llama) {
    rope_table(max_pos(pt->pos, N) + 1, hd, theta);
    rope_rows(q, N, H, hd, pt->pos, tl_rope_cos, tl_rope_sin);
    rope_rows(k, N, KVH, hd, pt->pos, tl_rope_cos, tl_rope_sin);
  }
  paged_store(k, v, 0, N, KVH * hd, pt);
  paged_attend_all(q, y, N, H, KVH, hd, pt);
}

/* ------------------------------------------------------------------ one whole block, inference only
 * Decoding runs ~20 small kernels per layer; on one token each is a few microseconds of work and as much
 * again of tfjs bookkeeping. With a KV cache (no gradient can flow) the model runs each block as this one
 * call: the same arithmetic as the per-op path (norm, projections, RoPE, cache write, attention, output
 * projection, residual, norm, MLP, residual), from the same kernels above. */
typedef struct {
  const float *ln1w, *ln1b, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo, *ln2w, *ln2b, *wg, *bg, *wu, *bu, *wd, *bd;
  float *kc, *vc;
} block_weights;

static __thread float *tl_block;
static __thread long tl_block_n;

/* The block in two row-wise halves around the attention, so that a step of many rows (a batched decode step,
 * a prompt) can run on the pool's threads, each on its own range of rows: before = norm, q/k/v projections,
 * RoPE and the cache writes; after = output projection, residual, norm, MLP, residual. Every row's arithmetic
 * is the same however the rows are split (the GEMM is batch-invariant), so threads change no bit. */
typedef struct {
  atomic_long next;
  long chunk; /* rows per share */
  const float *x;
  float *out;
  const block_weights *w;
  long N, T, d, H, KVH, hd, inner, cap, pos0;
  float eps;
  int llama;
  const int32_t *pos;         /* each row's position (RoPE, cache row) */
  const float *rcos, *rsin;   /* RoPE table */
  const paged_tables *pt;     /* paged cache, or NULL: w->kc / w->vc [B, cap, KVH·hd] */
  float *h, *q, *att, *k, *v, *m1, *m2, *mean, *rstd; /* scratch over all N rows */
} block_job;

/* C[M,N] = A[M,K]·B[K,N] (+ beta·C + bias), row-major: on the pool's threads when the product is big enough, except
 * inside a row share (parallel() does not nest). */
static void gemm_nn(long M, long N, long K, const float *A, long lda, const float *B, long ldb, float *C, long ldc, float beta, const float *bias) {
  if (tl_in_share) {
    gemm_st(0, 0, M, N, K, A, lda, B, ldb, C, ldc, beta, bias);
    return;
  }
  gemm_job g;
  g.ta = g.tb = 0;
  g.batch = 1;
  g.M = M; g.N = N; g.K = K;
  g.lda = lda; g.ldb = ldb; g.ldc = ldc;
  g.sa = g.sb = g.sc = 0;
  g.A = A; g.B = B; g.C = C;
  g.bias = bias;
  g.beta = beta;
  gemm_mt(&g);
}

static void block_before(block_job *j, long r0, long r1) {
  long n = r1 - r0, d = j->d, kvd = j->KVH * j->hd;
  const block_weights *w = j->w;
  float *h = j->h + r0 * d, *q = j->q + r0 * d, *k = j->k + r0 * kvd, *v = j->v + r0 * kvd;
  if (j->llama) rmsnorm_fwd(j->x + r0 * d, w->ln1w, h, j->rstd + r0, n, d, j->eps);
  else layernorm_fwd(j->x + r0 * d, w->ln1w, w->ln1b, h, j->mean + r0, j->rstd + r0, n, d, j->eps);
  gemm_nn(n, d, d, h, d, w->wq, d, q, d, 0.0f, w->bq);
  gemm_nn(n, kvd, d, h, d, w->wk, kvd, k, kvd, 0.0f, w->bk);
  gemm_nn(n, kvd, d, h, d, w->wv, kvd, v, kvd, 0.0f, w->bv);
  if (j->llama) {
    rope_rows(q, n, j->H, j->hd, j->pos + r0, j->rcos, j->rsin);
    rope_rows(k, n, j->KVH, j->hd, j->pos + r0, j->rcos, j->rsin);
  }
  if (j->pt) {
    paged_store(j->k, j->v, r0, r1, kvd, j->pt);
  } else {
    for (long r = r0; r < r1; r++) {
      long row = (r / j->T) * j->cap + j->pos[r];
      memcpy(w->kc + row * kvd, j->k + r * kvd, sizeof(float) * kvd);
      memcpy(w->vc + row * kvd, j->v + r * kvd, sizeof(float) * kvd);
    }
  }
}

static void block_after(block_job *j, long r0, long r1) {
  long n = r1 - r0, d = j->d, inner = j->inner;
  const block_weights *w = j->w;
  float *out = j->out + r0 * d, *h = j->h + r0 * d, *m1 = j->m1 + r0 * inner, *m2 = j->m2 + r0 * inner;
  memcpy(out, j->x + r0 * d, sizeof(float) * n * d);
  gemm_nn(n, d, d, j->att + r0 * d, d, w->wo, d, out, d, 1.0f, w->bo); /* out = x + att·Wo + bo */
  if (j->llama) {
    rmsnorm_fwd(out, w->ln2w, h, j->rstd + r0, n, d, j->eps);
    gemm_nn(n, inner, d, h, d, w->wg, inner, m1, inner, 0.0f, w->bg);
    gemm_nn(n, inner, d, h, d, w->wu, inner, m2, inner, 0.0f, w->bu);
    swiglu_fwd(m1, m2, m1, n * inner);
  } else {
    layernorm_fwd(out, w->ln2w, w->ln2b, h, j->mean + r0, j->rstd + r0, n, d, j->eps);
    gemm_nn(n, inner, d, h, d, w->wu, inner, m2, inner, 0.0f, w->bu);
    gelu_fwd(m2, m1, n * inner);
  }
  gemm_nn(n, d, inner, m1, inner, w->wd, d, out, d, 1.0f, w->bd); /* out += mlp · Wd + bd */
}

static void block_rows_task(void *p, void (*half)(block_job *, long, long)) {
  block_job *j = (block_job *)p;
  for (long c; (c = atomic_fetch_add(&j->next, 1)) * j->chunk < j->N;) {
    long r0 = c * j->chunk, r1 = r0 + j->chunk < j->N ? r0 + j->chunk : j->N;
    half(j, r0, r1);
  }
}
static void block_before_task(void *p, int tid, int nt) { (void)tid; (void)nt; block_rows_task(p, block_before); }
static void block_after_task(void *p, int tid, int nt) { (void)tid; (void)nt; block_rows_task(p, block_after); }

static void block_fwd(const float *x, float *out, const block_weights *w, long B, long T, long d, long H, long KVH, long hd, long inner, long cap,
                      long pos0, float eps, double theta, int llama, const paged_tables *pt) {
  long N = B * T, kvd = KVH * hd;
  long need = N * (3 * d + 2 * kvd + 2 * inner + 2) + N; /* + the contiguous cache's positions */
  if (tl_block_n < need) {
    free(tl_block);
    if (posix_memalign((void **)&tl_block, 64, sizeof(float) * need) != 0) abort();
    tl_block_n = need;
  }
  block_job j;
  j.h = tl_block; j.q = j.h + N * d; j.att = j.q + N * d; j.k = j.att + N * d; j.v = j.k + N * kvd;
  j.m1 = j.v + N * kvd; j.m2 = j.m1 + N * inner; j.mean = j.m2 + N * inner; j.rstd = j.mean + N;
  int32_t *cpos = (int32_t *)(j.rstd + N);
  j.x = x; j.out = out; j.w = w; j.N = N; j.T = T; j.d = d; j.H = H; j.KVH = KVH; j.hd = hd; j.inner = inner; j.cap = cap; j.pos0 = pos0;
  j.eps = eps; j.llama = llama; j.pt = pt;
  if (pt) {
    j.pos = pt->pos;
  } else {
    for (long r = 0; r < N; r++) cpos[r] = (int32_t)(pos0 + r % T);
    j.pos = cpos;
  }
  if (llama) rope_table(max_pos(j.pos, N) + 1, hd, theta);
  j.rcos = tl_rope_cos;
  j.rsin = tl_rope_sin;
  /* Many rows (a prompt): each thread takes a range of rows. Fewer (decode steps): one share, and each product
   * big enough to pay for a wake-up is split by columns instead, so that each thread streams half the weights. */
  int shares = N >= 64 ? (int)(N < g_threads ? N : g_threads) : 1;
  j.chunk = (N + shares - 1) / shares;
  atomic_init(&j.next, 0);
  parallel(block_before_task, &j, shares);
  if (pt) {
    paged_attend_all(j.q, j.att, N, H, KVH, hd, pt);
  } else {
    attn_job aj;
    atomic_init(&aj.next, 0);
    aj.B = B; aj.H = H; aj.KVH = KVH; aj.T = T; aj.S = pos0 + T; aj.hd = hd; aj.pos0 = pos0;
    aj.scale = 1.0f / sqrtf((float)hd);
    aj.q = j.q; aj.qb = T * d; aj.qh = hd; aj.qt = d;
    aj.k = w->kc; aj.kb = cap * kvd; aj.kh = hd; aj.kt = kvd;
    aj.v = w->vc; aj.vb = cap * kvd; aj.vh = hd; aj.vt = kvd;
    aj.y = j.att; aj.yb = T * d; aj.yh = hd; aj.yt = d;
    aj.P = NULL;
    parallel(attn_fwd_task, &aj, 4.0 * B * H * T * aj.S * hd < 2e5 ? 1 : (int)(B * H));
  }
  atomic_init(&j.next, 0);
  parallel(block_after_task, &j, shares);
}

/* ------------------------------------------------------------------ Node-API glue */

#define CHECK(call)                                                       \
  do {                                                                    \
    if ((call) != napi_ok) {                                              \
      napi_throw_error(env, NULL, "llmctl_native: bad arguments to " #call); \
      return NULL;                                                        \
    }                                                                     \
  } while (0)

typedef struct {
  napi_env env;
  napi_value *argv;
  size_t argc;
  char *heap;
  int ok;
} args_t;

static int get_args(napi_env env, napi_callback_info info, napi_value *argv, size_t want, args_t *a) {
  size_t argc = want;
  a->env = env;
  a->argv = argv;
  a->ok = 1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_error(env, NULL, "llmctl_native: too few arguments");
    return 0;
  }
  void *data;
  size_t len;
  if (napi_get_arraybuffer_info(env, argv[0], &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "llmctl_native: first argument must be the heap ArrayBuffer");
    return 0;
  }
  a->heap = (char *)data;
  return 1;
}

static double num(args_t *a, int i) {
  double d = 0;
  if (napi_get_value_double(a->env, a->argv[i], &d) != napi_ok) a->ok = 0;
  return d;
}
static long lng(args_t *a, int i) { return (long)num(a, i); }
static float *fp(args_t *a, int i) {
  double off = num(a, i);
  return off < 0 ? NULL : (float *)(a->heap + (long)off);
}

#define ARGS(n)                               \
  napi_value argv[n];                         \
  args_t a;                                   \
  if (!get_args(env, info, argv, n, &a)) return NULL;
#define DONE                                                              \
  if (!a.ok) napi_throw_type_error(env, NULL, "llmctl_native: numeric argument expected"); \
  return NULL;

/* gemm(heap, A, B, C, bias, batch, M, N, K, transA, transB, strideA, strideB, strideC, beta) */
static napi_value js_gemm(napi_env env, napi_callback_info info) {
  ARGS(15)
  gemm_job j;
  j.A = fp(&a, 1);
  j.B = fp(&a, 2);
  j.C = fp(&a, 3);
  j.bias = fp(&a, 4);
  j.batch = lng(&a, 5);
  j.M = lng(&a, 6);
  j.N = lng(&a, 7);
  j.K = lng(&a, 8);
  j.ta = (int)lng(&a, 9);
  j.tb = (int)lng(&a, 10);
  j.sa = lng(&a, 11);
  j.sb = lng(&a, 12);
  j.sc = lng(&a, 13);
  j.beta = (float)num(&a, 14);
  j.lda = j.ta ? j.M : j.K;
  j.ldb = j.tb ? j.K : j.N;
  j.ldc = j.N;
  if (a.ok) gemm_mt(&j);
  DONE
}

/* layernorm(heap, x, w, b, y, mean, rstd, rows, D, eps) */
static napi_value js_layernorm(napi_env env, napi_callback_info info) {
  ARGS(10)
  if (a.ok) layernorm_fwd(fp(&a, 1), fp(&a, 2), fp(&a, 3), fp(&a, 4), fp(&a, 5), fp(&a, 6), lng(&a, 7), lng(&a, 8), (float)num(&a, 9));
  DONE
}

/* layernormGrad(heap, dy, x, w, mean, rstd, dx, dw, db, rows, D) */
static napi_value js_layernorm_grad(napi_env env, napi_callback_info info) {
  ARGS(11)
  if (a.ok) layernorm_bwd(fp(&a, 1), fp(&a, 2), fp(&a, 3), fp(&a, 4), fp(&a, 5), fp(&a, 6), fp(&a, 7), fp(&a, 8), lng(&a, 9), lng(&a, 10));
  DONE
}

/* rmsnorm(heap, x, w, y, rstd, rows, D, eps) */
static napi_value js_rmsnorm(napi_env env, napi_callback_info info) {
  ARGS(8)
  if (a.ok) rmsnorm_fwd(fp(&a, 1), fp(&a, 2), fp(&a, 3), fp(&a, 4), lng(&a, 5), lng(&a, 6), (float)num(&a, 7));
  DONE
}

/* rmsnormGrad(heap, dy, x, w, rstd, dx, dw, rows, D) */
static napi_value js_rmsnorm_grad(napi_env env, napi_callback_info info) {
  ARGS(9)
  if (a.ok) rmsnorm_bwd(fp(&a, 1), fp(&a, 2), fp(&a, 3), fp(&a, 4), fp(&a, 5), fp(&a, 6), lng(&a, 7), lng(&a, 8));
  DONE
}

/* gelu(heap, x, y, n) / geluGrad(heap, dy, x, dx, n) */
static napi_value js_gelu(napi_env env, napi_callback_info info) {
  ARGS(4)
  if (a.ok) gelu_fwd(fp(&a, 1), fp(&a, 2), lng(&a, 3));
  DONE
}
static napi_value js_gelu_grad(napi_env env, napi_callback_info info) {
  ARGS(5)
  if (a.ok) gelu_bwd(fp(&a, 1), fp(&a, 2), fp(&a, 3), lng(&a, 4));
  DONE
}

/* swiglu(heap, g, u, y, n) / swigluGrad(heap, dy, g, u, dg, du, n) */
static napi_value js_swiglu(napi_env env, napi_callback_info info) {
  ARGS(5)
  if (a.ok) swiglu_fwd(fp(&a, 1), fp(&a, 2), fp(&a, 3), lng(&a, 4));
  DONE
}
static napi_value js_swiglu_grad(napi_env env, napi_callback_info info) {
  ARGS(7)
  if (a.ok) swiglu_bwd(fp(&a, 1), fp(&a, 2), fp(&a, 3), fp(&a, 4), fp(&a, 5), lng(&a, 6));
  DONE
}

/* adamw(heap, p, g, m, v, pOut, mOut, vOut, n, lr, beta1, beta2, eps, decay, bc1, bc2, gscale) */
static napi_value js_adamw(napi_env env, napi_callback_info info) {
  ARGS(17)
  if (a.ok)
    adamw(fp(&a, 1), fp(&a, 2), fp(&a, 3), fp(&a, 4), fp(&a, 5), fp(&a, 6), fp(&a, 7), lng(&a, 8), (float)num(&a, 9), (float)num(&a, 10),
          (float)num(&a, 11), (float)(1.0 - num(&a, 10)), (float)(1.0 - num(&a, 11)), (float)num(&a, 12), (float)(1.0 - num(&a, 9) * num(&a, 13)), (float)num(&a, 14), (float)num(&a, 15), (float)num(&a, 16));
  DONE
}

/* sumSquares(heap, x, n) → number */
static napi_value js_sum_squares(napi_env env, napi_callback_info info) {
  ARGS(3)
  double s = a.ok ? sum_squares(fp(&a, 1), lng(&a, 2)) : 0;
  napi_value out;
  CHECK(napi_create_double(env, s, &out));
  return out;
}

/* copy(heap, src, dst, n): float copy inside the heap (KV cache writes). */
static napi_value js_copy(napi_env env, napi_callback_info info) {
  ARGS(4)
  if (a.ok) memmove(fp(&a, 2), fp(&a, 1), sizeof(float) * lng(&a, 3));
  DONE
}

/* colsum(heap, x, out, rows, N) */
static napi_value js_colsum(napi_env env, napi_callback_info info) {
  ARGS(5)
  if (a.ok) colsum(fp(&a, 1), fp(&a, 2), lng(&a, 3), lng(&a, 4));
  DONE
}

/* rope(heap, x, y, B, T, heads, hd, pos0, theta, inverse) */
static napi_value js_rope(napi_env env, napi_callback_info info) {
  ARGS(10)
  long T = lng(&a, 4), pos0 = lng(&a, 7), hd = lng(&a, 6);
  if (a.ok) {
    rope_table(pos0 + T, hd, num(&a, 8));
    rope_apply(fp(&a, 1), fp(&a, 2), lng(&a, 3), T, lng(&a, 5), hd, pos0, (int)lng(&a, 9));
  }
  DONE
}

static void read_attn(args_t *a, attn_job *j) {
  /* heap, q, k, v, y, P, B, H, KVH, T, S, hd, pos0, scale, qb, qh, qt, kb, kh, kt, vb, vh, vt, yb, yh, yt */
  j->q = fp(a, 1);
  j->k = fp(a, 2);
  j->v = fp(a, 3);
  j->y = fp(a, 4);
  j->P = fp(a, 5);
  j->B = lng(a, 6);
  j->H = lng(a, 7);
  j->KVH = lng(a, 8);
  j->T = lng(a, 9);
  j->S = lng(a, 10);
  j->hd = lng(a, 11);
  j->pos0 = lng(a, 12);
  j->scale = (float)num(a, 13);
  j->qb = lng(a, 14); j->qh = lng(a, 15); j->qt = lng(a, 16);
  j->kb = lng(a, 17); j->kh = lng(a, 18); j->kt = lng(a, 19);
  j->vb = lng(a, 20); j->vh = lng(a, 21); j->vt = lng(a, 22);
  j->yb = lng(a, 23); j->yh = lng(a, 24); j->yt = lng(a, 25);
}

static napi_value js_attention(napi_env env, napi_callback_info info) {
  ARGS(26)
  attn_job j;
  read_attn(&a, &j);
  atomic_init(&j.next, 0);
  if (a.ok) {
    double flops = 4.0 * j.B * j.H * j.T * j.S * j.hd;
    parallel(attn_fwd_task, &j, flops < 2e5 ? 1 : (int)(j.B * j.H));
  }
  DONE
}

/* attentionGrad(<attention's 26 arguments, y ignored>, dy, dq, dk, dv): dq/dk/dv use q/k/v's strides. */
static napi_value js_attention_grad(napi_env env, napi_callback_info info) {
  ARGS(30)
  attn_job j;
  read_attn(&a, &j);
  j.dy = fp(&a, 26);
  j.dq = fp(&a, 27);
  j.dk = fp(&a, 28);
  j.dv = fp(&a, 29);
  atomic_init(&j.next, 0);
  if (a.ok) parallel(attn_bwd_task, &j, (int)(j.B * j.KVH));
  DONE
}

/* The 18 weight offsets of a block call (BLOCK_WEIGHTS in src/backend/native.ts), from argument `first` on. */
static void read_block_weights(args_t *a, int first, block_weights *w) {
  const float **slots[] = {&w->ln1w, &w->ln1b, &w->wq, &w->bq, &w->wk, &w->bk, &w->wv, &w->bv, &w->wo, &w->bo, &w->ln2w, &w->ln2b, &w->wg, &w->bg, &w->wu, &w->bu, &w->wd, &w->bd};
  for (int i = 0; i < 18; i++) *slots[i] = fp(a, first + i);
}

/* block(heap, x, out, 18 weight offsets (−1 = none), kcache, vcache, B, T, d, H, KVH, hd, inner, cap, pos0, eps, theta, llama) */
static napi_value js_block(napi_env env, napi_callback_info info) {
  ARGS(35)
  block_weights w;
  read_block_weights(&a, 3, &w);
  w.kc = fp(&a, 21);
  w.vc = fp(&a, 22);
  if (a.ok)
    block_fwd(fp(&a, 1), fp(&a, 2), &w, lng(&a, 23), lng(&a, 24), lng(&a, 25), lng(&a, 26), lng(&a, 27), lng(&a, 28), lng(&a, 29), lng(&a, 30),
              lng(&a, 31), (float)num(&a, 32), num(&a, 33), (int)lng(&a, 34), NULL);
  DONE
}

/* The pool and the tables are typed arrays of their own (not in the heap): Float32Array pools, Int32Array tables. */
static void *typed(args_t *a, int i, napi_typedarray_type want) {
  napi_typedarray_type type;
  size_t len, off;
  void *data = NULL;
  napi_value ab;
  if (napi_get_typedarray_info(a->env, a->argv[i], &type, &len, &data, &ab, &off) != napi_ok || type != want) a->ok = 0;
  return data;
}

static void read_tables(args_t *a, int i, paged_tables *pt) {
  pt->kpool = (float *)typed(a, i, napi_float32_array);
  pt->vpool = (float *)typed(a, i + 1, napi_float32_array);
  pt->pos = (const int32_t *)typed(a, i + 2, napi_int32_array);
  pt->base = (const int32_t *)typed(a, i + 3, napi_int32_array);
  pt->slots = (const int32_t *)typed(a, i + 4, napi_int32_array);
}

/* pagedBlock(heap, x, out, <18 weights>, kpool, vpool, pos, base, slots, N, d, H, KVH, hd, inner, eps, theta, llama):
 * one block over a step's N tokens with the paged KV cache (see paged_attention). */
static napi_value js_paged_block(napi_env env, napi_callback_info info) {
  ARGS(35)
  block_weights w;
  read_block_weights(&a, 3, &w);
  w.kc = w.vc = NULL;
  paged_tables pt;
  read_tables(&a, 21, &pt);
  if (a.ok)
    block_fwd(fp(&a, 1), fp(&a, 2), &w, 1, lng(&a, 26), lng(&a, 27), lng(&a, 28), lng(&a, 29), lng(&a, 30), lng(&a, 31), 0, 0,
              (float)num(&a, 32), num(&a, 33), (int)lng(&a, 34), &pt);
  DONE
}

/* pagedAttention(heap, q, k, v, y, kpool, vpool, pos, base, slots, N, H, KVH, hd, theta, llama): q [N, H·hd] and k, v
 * [N, KVH·hd] straight from the projections (RoPE not yet applied) → y [N, H·hd]. The per-op path (LoRA adapters). */
static napi_value js_paged_attention(napi_env env, napi_callback_info info) {
  ARGS(16)
  paged_tables pt;
  read_tables(&a, 5, &pt);
  long N = lng(&a, 10), H = lng(&a, 11), KVH = lng(&a, 12), hd = lng(&a, 13);
  if (a.ok) {
    /* q and k are immutable tensors: rotate copies. */
    float *qk = (float *)malloc(sizeof(float) * N * (H + KVH) * hd);
    if (!qk) abort();
    memcpy(qk, fp(&a, 1), sizeof(float) * N * H * hd);
    memcpy(qk + N * H * hd, fp(&a, 2), sizeof(float) * N * KVH * hd);
    paged_attention(qk, qk + N * H * hd, fp(&a, 3), fp(&a, 4), N, H, KVH, hd, (int)lng(&a, 15), num(&a, 14), &pt);
    free(qk);
  }
  DONE
}

static napi_value js_set_threads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t n = 1;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc >= 1) CHECK(napi_get_value_int32(env, argv[0], &n));
  if (n < 1) n = 1;
  if (n > MAX_THREADS) n = MAX_THREADS;
  pthread_mutex_lock(&g_pool_lock);
  start_workers(n);
  g_threads = n;
  pthread_mutex_unlock(&g_pool_lock);
  return NULL;
}

static napi_value js_info(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out, isa, threads;
  CHECK(napi_create_object(env, &out));
  CHECK(napi_create_string_utf8(env, g_isa == 2 ? "avx512" : g_isa == 1 ? "avx2" : "c", NAPI_AUTO_LENGTH, &isa));
  CHECK(napi_create_int32(env, g_threads, &threads));
  CHECK(napi_set_named_property(env, out, "isa", isa));
  CHECK(napi_set_named_property(env, out, "threads", threads));
  return out;
}

/* forceIsa(level): tests run every micro-kernel on a machine that has the widest one. */
static napi_value js_force_isa(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t n = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc >= 1) CHECK(napi_get_value_int32(env, argv[0], &n));
  __builtin_cpu_init();
  int best = __builtin_cpu_supports("avx512f") ? 2 : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1 : 0;
  g_isa = n < best ? n : best;
  return NULL;
}

NAPI_MODULE_INIT() {
  static int once = 0;
  if (!once) {
    once = 1;
    __builtin_cpu_init();
    g_isa = __builtin_cpu_supports("avx512f") ? 2 : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1 : 0;
  }
  struct {
    const char *name;
    napi_callback fn;
  } fns[] = {
      {"gemm", js_gemm},           {"layernorm", js_layernorm}, {"layernormGrad", js_layernorm_grad}, {"rmsnorm", js_rmsnorm},
      {"rmsnormGrad", js_rmsnorm_grad}, {"gelu", js_gelu},     {"geluGrad", js_gelu_grad},           {"swiglu", js_swiglu},
      {"swigluGrad", js_swiglu_grad}, {"adamw", js_adamw},     {"sumSquares", js_sum_squares},       {"copy", js_copy},
      {"attention", js_attention}, {"attentionGrad", js_attention_grad}, {"setThreads", js_set_threads}, {"info", js_info},
      {"forceIsa", js_force_isa}, {"colsum", js_colsum}, {"block", js_block}, {"rope", js_rope},
      {"pagedBlock", js_paged_block}, {"pagedAttention", js_paged_attention},
  };
  for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
    napi_value f;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, fns[i].name, f) != napi_ok) return NULL;
  }
  return exports;
}
