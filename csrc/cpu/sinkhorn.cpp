// Log-domain Sinkhorn on the CPU (torch-free, OpenMP). Spec: ops/reference.py::sinkhorn_ref.
//
// Why it is fast: most iterations run as scaling iterations on a stabilised kernel
// (Schmitzer 2016, "Stabilized sparse scaling algorithms for entropy regularized transport"):
//   K_ij = exp((f_i + g_j - C_ij) / eps)   (absorbed potentials f, g; stored transposed, K^T)
//   u = a / (K v),  v = b / (K^T u)        (f = f + eps log u, g = g + eps log v)
// and one pass over K^T does a whole iteration: for each column j, v_j = b_j / <K^T_j, u> (the g
// update) and then acc += v_j K^T_j (the row sums K v for the NEXT f update), while the row K^T_j
// sits in L1. No exp at all (the convergence test, every check_every iterations, is an exp pass
// computed as the reference computes it).
// When a scaling leaves [e^-15, e^15] (or a sum underflows, which happens at small eps), the
// scalings are absorbed and the iteration runs in the log domain instead: a row-wise LSE pass over
// C / eps (f update) and a column-wise LSE pass over its transposed copy (g update) whose
// exponentials ARE the new kernel (K^T_ji = e^{x_i - m} b_j / s), with a vectorised polynomial exp.
// Kernel entries below e^-70 are stored as 0: with scalings within e^+-15 no product reaches the
// denormal range (slow on x86) and a flushed entry stands for a plan entry below e^-40.
#include "sinkhorn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace medshift {
namespace {

constexpr float kLogRange = 15.f;  // absorb when |log u| or |log v| exceeds this
constexpr float kFlush = 3.975449735908647e-31f;  // e^-70: smaller kernel entries are stored as 0
const float kHi = std::exp(kLogRange);
const float kLo = std::exp(-kLogRange);

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Cephes-style expf: range reduction by ln2 in two parts, degree-6 polynomial, 2^n by exponent
// bits. Plain arithmetic so that GCC vectorises it inside `omp simd` loops (AVX-512: 16 lanes).
inline float fexp(float x) {
  // Clamp at -87 (e^-87 = 1.6e-38): the result is then never a denormal, whose handling costs
  // ~100 cycles per element on x86 (min result 2^-126 * e^0.336 > FLT_MIN).
  x = x < -87.f ? -87.f : x;
  x = x > 88.37626f ? 88.37626f : x;
  // n = round(x / ln2) by the 1.5 * 2^23 trick (pure arithmetic, so it vectorises)
  float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

// max_j (x_j - c_j)
inline float max_diff(const float* __restrict x, const float* __restrict c, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j] - c[j]);
  return m;
}

// sum_j exp(x_j - c_j - m)
inline float sum_exp(const float* __restrict x, const float* __restrict c, float m, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += fexp((x[j] - c[j]) - m);
  return s;
}

// Same, storing the exponentials in e.
inline float sum_exp_store(const float* __restrict x, const float* __restrict c, float m,
                           float* __restrict e, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) {
    float v = fexp((x[j] - c[j]) - m);
    e[j] = v;
    s += v;
  }
  return s;
}

inline float dot(const float* __restrict x, const float* __restrict y, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += x[j] * y[j];
  return s;
}

inline void axpy(float* __restrict acc, float w, const float* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) acc[j] += w * x[j];
}

template <class T>
std::unique_ptr<T[]> buffer(int64_t n) {  // uninitialised: no page-touching zero fill
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// One problem of the batch and its workspace.
struct Problem {
  int64_t N = 0, M = 0;
  float eps = 1.f;
  const float* la = nullptr;  // (N) log a
  const float* lb = nullptr;  // (M) log b
  float* f = nullptr;         // (N) potentials (absorbed part when `kernel`)
  float* g = nullptr;         // (M)
  float* Ce = nullptr;        // (N, M) C / eps (the caller's log_plan buffer)
  std::unique_ptr<float[]> CeT, KT, a, b, u, v, unext, tmp, accp;
  int nthreads = 1;           // threads used inside this problem (1 when batch-parallel)
  bool kernel = false;        // KT, u, v valid
  bool unext_ok = false;      // unext holds a valid kernel-mode f update
  float err = std::numeric_limits<float>::infinity();
  int log_iters = 0, absorptions = 0;
};

void setup(Problem& P, const float* cost, int nthreads) {
  const int64_t N = P.N, M = P.M;
  P.nthreads = nthreads;
  P.CeT = buffer<float>(M * N);
  P.KT = buffer<float>(M * N);
  P.a = buffer<float>(N);
  P.b = buffer<float>(M);
  P.u = buffer<float>(N);
  P.v = buffer<float>(M);
  P.unext = buffer<float>(N);
  P.tmp = buffer<float>(std::max(N, M));
  P.accp = buffer<float>(static_cast<int64_t>(nthreads) * N);
  const float eps = P.eps;
  float* Ce = P.Ce;
  float* CeT = P.CeT.get();
  const bool par = nthreads > 1;
  // C / eps (a true division, as the reference), then a blocked transpose for column passes.
#pragma omp parallel for schedule(static) num_threads(nthreads) if (par)
  for (int64_t i = 0; i < N; ++i) {
    const float* c = cost + i * M;
    float* o = Ce + i * M;
#pragma omp simd
    for (int64_t j = 0; j < M; ++j) o[j] = c[j] / eps;
  }
  constexpr int64_t B = 32;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (par)
  for (int64_t jb = 0; jb < M; jb += B)
    for (int64_t ib = 0; ib < N; ib += B)
      for (int64_t j = jb; j < std::min(jb + B, M); ++j)
        for (int64_t i = ib; i < std::min(ib + B, N); ++i) CeT[j * N + i] = Ce[i * M + j];
  for (int64_t i = 0; i < N; ++i) P.a[i] = std::exp(P.la[i]);
  for (int64_t j = 0; j < M; ++j) P.b[j] = std::exp(P.lb[j]);
}

// f_i = eps (log a_i - LSE_j(g_j / eps - C_ij / eps)), exactly as the reference.
void f_log(Problem& P) {
  const int64_t N = P.N, M = P.M;
  const float eps = P.eps;
  float* ge = P.tmp.get();
  for (int64_t j = 0; j < M; ++j) ge[j] = P.g[j] / eps;
#pragma omp parallel for schedule(static) num_threads(P.nthreads) if (P.nthreads > 1)
  for (int64_t i = 0; i < N; ++i) {
    const float* c = P.Ce + i * M;
    float m = max_diff(ge, c, M);
    float s = sum_exp(ge, c, m, M);
    P.f[i] = eps * (P.la[i] - (m + std::log(s)));
  }
  for (int64_t i = 0; i < N; ++i) P.u[i] = 1.f;
}

inline int num_threads_here() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Shared results of the row reduction (one per parallel region).
struct RowReduce {
  int bad = 0;
};

// Called by every thread of the region (orphaned worksharing): reduce the per-thread row sums
// acc_i = sum_j K_ij v_j into the next kernel-mode f update unext_i = a_i / acc_i (and whether it
// stays in range).
void finish_rows(Problem& P, RowReduce& out) {
  const int64_t N = P.N;
  const int nt = num_threads_here();
  const float* acc0 = P.accp.get();
  int bad = 0;
#pragma omp for schedule(static) nowait
  for (int64_t i = 0; i < N; ++i) {
    float s = acc0[i];
    for (int t = 1; t < nt; ++t) s += acc0[t * N + i];
    const float a = P.a[i];
    const float un = a == 0.f ? 1.f : a / s;
    bad |= !(un >= kLo && un <= kHi);  // also catches s == 0 and NaN
    P.unext[i] = un;
  }
#pragma omp atomic
  out.bad |= bad;
}

// g_j = eps (log b_j - LSE_i(f_i / eps - C_ij / eps)) over the rows of C^T / eps; the
// exponentials, scaled by b_j / s, are the new kernel (v = 1); accumulates its row sums.
void g_log_build(Problem& P) {
  const int64_t N = P.N, M = P.M;
  const float eps = P.eps;
  float* fe = P.tmp.get();  // (the caller has absorbed u into f: u == 1 here)
  for (int64_t i = 0; i < N; ++i) fe[i] = P.f[i] / eps;
  RowReduce red;
#pragma omp parallel num_threads(P.nthreads) if (P.nthreads > 1)
  {
    float* acc = P.accp.get() + thread_id() * N;
    std::fill(acc, acc + N, 0.f);
#pragma omp for schedule(static)
    for (int64_t j = 0; j < M; ++j) {
      const float* c = P.CeT.get() + j * N;
      float* k = P.KT.get() + j * N;
      const float m = max_diff(fe, c, N);
      const float s = sum_exp_store(fe, c, m, k, N);
      P.g[j] = eps * (P.lb[j] - (m + std::log(s)));
      const float sc = P.b[j] / s;
      const float thr = kFlush / sc;  // compare before scaling: no denormal products
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) {
        const float kv = k[i] < thr ? 0.f : k[i] * sc;
        k[i] = kv;
        acc[i] += kv;
      }
      P.v[j] = 1.f;
    }  // (implicit barrier: every acc is complete)
    finish_rows(P, red);
  }
  P.kernel = true;
  P.unext_ok = !red.bad;
}

// One kernel-mode iteration: u = unext (f update), then one pass over K^T: v_j = b_j / <K^T_j, u>
// and acc += v_j K^T_j. Returns false when some v_j left the range (u is then the new u).
bool kernel_iter(Problem& P) {
  const int64_t N = P.N, M = P.M;
  std::swap(P.u, P.unext);
  const float* u = P.u.get();
  int bad_any = 0;
  RowReduce red;
#pragma omp parallel num_threads(P.nthreads) if (P.nthreads > 1)
  {
    float* acc = P.accp.get() + thread_id() * N;
    std::fill(acc, acc + N, 0.f);
    int bad = 0;
    // Four columns at a time: four independent dot chains share the loads of u, and the four
    // axpys share one load/store of acc.
    const int64_t M4 = M / 4;
#pragma omp for schedule(static) nowait
    for (int64_t jb = 0; jb < M4; ++jb) {
      const int64_t j = 4 * jb;
      const float* __restrict k0 = P.KT.get() + j * N;
      const float* __restrict k1 = k0 + N;
      const float* __restrict k2 = k1 + N;
      const float* __restrict k3 = k2 + N;
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t i = 0; i < N; ++i) {
        const float ui = u[i];
        s0 += k0[i] * ui, s1 += k1[i] * ui, s2 += k2[i] * ui, s3 += k3[i] * ui;
      }
      float vv[4] = {s0, s1, s2, s3};
      for (int q = 0; q < 4; ++q) {
        const float bj = P.b[j + q];
        vv[q] = bj == 0.f ? 1.f : bj / vv[q];
        bad |= !(vv[q] >= kLo && vv[q] <= kHi);
        P.v[j + q] = vv[q];
      }
      const float v0 = vv[0], v1 = vv[1], v2 = vv[2], v3 = vv[3];
#pragma omp simd
      for (int64_t i = 0; i < N; ++i)
        acc[i] += (v0 * k0[i] + v1 * k1[i]) + (v2 * k2[i] + v3 * k3[i]);
    }
#pragma omp for schedule(static) nowait
    for (int64_t j = 4 * M4; j < M; ++j) {
      const float* k = P.KT.get() + j * N;
      const float bj = P.b[j];
      const float vj = bj == 0.f ? 1.f : bj / dot(k, u, N);
      bad |= !(vj >= kLo && vj <= kHi);
      P.v[j] = vj;
      axpy(acc, vj, k, N);
    }
    if (bad) {
#pragma omp atomic write
      bad_any = 1;
    }
#pragma omp barrier
    int any;
#pragma omp atomic read
    any = bad_any;
    if (!any) finish_rows(P, red);
  }
  if (bad_any) return false;
  P.unext_ok = !red.bad;
  return true;
}

void iterate(Problem& P) {
  if (P.kernel && P.unext_ok) {
    if (kernel_iter(P)) return;
    // The g update left the kernel's range: absorb u into f and redo it in the log domain.
    for (int64_t i = 0; i < P.N; ++i) P.f[i] += P.eps * std::log(P.u[i]), P.u[i] = 1.f;
    ++P.absorptions;
    ++P.log_iters;
    g_log_build(P);
    return;
  }
  if (P.kernel) {  // the f update would leave the range: absorb v into g, full log iteration
    const float eps = P.eps;
    for (int64_t j = 0; j < P.M; ++j) P.g[j] += eps * std::log(P.v[j]);
    ++P.absorptions;
  }
  ++P.log_iters;
  f_log(P);
  g_log_build(P);
}

// The reference's convergence test, computed as it does (so that both stop at the same check,
// also near the fp32 floor of the error): sum_i |sum_j exp((f_i + g_j) / eps - C_ij / eps) - a_i|
// with the current potentials f + eps log u, g + eps log v.
float check_err(Problem& P) {
  const int64_t N = P.N, M = P.M;
  const float eps = P.eps;
  std::vector<float> fa(N), ga(M);
  for (int64_t i = 0; i < N; ++i) fa[i] = P.kernel ? P.f[i] + eps * std::log(P.u[i]) : P.f[i];
  for (int64_t j = 0; j < M; ++j) ga[j] = P.kernel ? P.g[j] + eps * std::log(P.v[j]) : P.g[j];
  const float* g = ga.data();
  float e = 0.f;
#pragma omp parallel for schedule(static) num_threads(P.nthreads) if (P.nthreads > 1) \
    reduction(+ : e)
  for (int64_t i = 0; i < N; ++i) {
    const float* c = P.Ce + i * M;
    const float fi = fa[i];
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < M; ++j) s += fexp((fi + g[j]) / eps - c[j]);
    if (!(fi > -std::numeric_limits<float>::infinity())) s = 0.f;
    e += std::fabs(s - P.a[i]);
  }
  return e;
}

// log P = (f_i + g_j) / eps - C_ij / eps (in place over C / eps) and its row-marginal L1 error.
void write_plan(Problem& P, float* err) {
  const int64_t N = P.N, M = P.M;
  const float eps = P.eps;
  if (P.kernel) {
    for (int64_t i = 0; i < N; ++i) P.f[i] += eps * std::log(P.u[i]);
    for (int64_t j = 0; j < M; ++j) P.g[j] += eps * std::log(P.v[j]);
  }
  float e = 0.f;
#pragma omp parallel for schedule(static) num_threads(P.nthreads) if (P.nthreads > 1) \
    reduction(+ : e)
  for (int64_t i = 0; i < N; ++i) {
    float* lp = P.Ce + i * M;
    const float fi = P.f[i];
    const float* g = P.g;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < M; ++j) {
      float x = (fi + g[j]) / eps - lp[j];
      lp[j] = x;
      s += fexp(x);
    }
    // fexp clamps below at FLT_MIN; a -inf potential (zero marginal) gives an exact zero.
    if (!(fi > -std::numeric_limits<float>::infinity())) s = 0.f;
    e += std::fabs(s - P.a[i]);
  }
  *err = e;
}

}  // namespace

float sinkhorn_fast_exp(float x) { return fexp(x); }

SinkhornStats sinkhorn_log_cpu(const float* cost, const float* log_a, const float* log_b,
                               float* f, float* g, float* log_plan, float* err, int64_t K,
                               int64_t N, int64_t M, float eps, int max_iter, float tol,
                               int check_every, int num_threads) {
  SinkhornStats st;
  if (K < 0 || N <= 0 || M <= 0 || !(eps > 0.f) || max_iter < 0) {
    st.n_iter = -1;
    return st;
  }
  if (check_every <= 0) check_every = 1;
  int nt = num_threads;
#ifdef _OPENMP
  if (nt <= 0) nt = omp_get_max_threads();
#else
  nt = 1;
#endif
  nt = std::max(nt, 1);
  // Big problems: all threads inside each problem. Small ones: one thread per problem, and only
  // when a round has enough work to pay for waking the team (each fork/join costs microseconds,
  // and far more when the cores are shared with other processes).
  const bool inner = N * M >= (int64_t{1} << 17);
  const int inner_nt = inner ? nt : 1;
  const int batch_nt = inner ? 1 : static_cast<int>(std::min<int64_t>(nt, K));
  auto outer_threads = [&](int64_t iters) {
    return K * N * M * std::max<int64_t>(iters, 1) >= (int64_t{1} << 20) ? batch_nt : 1;
  };
  std::vector<Problem> probs(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    Problem& P = probs[k];
    P.N = N, P.M = M, P.eps = eps;
    P.la = log_a + k * N, P.lb = log_b + k * M;
    P.f = f + k * N, P.g = g + k * M;
    P.Ce = log_plan + k * N * M;
  }
  int outer_nt = outer_threads(1);
#pragma omp parallel for schedule(static) num_threads(outer_nt) if (outer_nt > 1)
  for (int64_t k = 0; k < K; ++k) setup(probs[k], cost + k * N * M, inner_nt);

  int it = 0;
  while (it < max_iter) {
    const int end = tol > 0.f ? std::min(max_iter, (it / check_every + 1) * check_every) : max_iter;
    outer_nt = outer_threads(end - it);
#pragma omp parallel for schedule(dynamic, 1) num_threads(outer_nt) if (outer_nt > 1)
    for (int64_t k = 0; k < K; ++k) {
      for (int t = it; t < end; ++t) iterate(probs[k]);
      if (tol > 0.f) probs[k].err = check_err(probs[k]);
    }
    it = end;
    if (tol > 0.f) {
      bool done = true;
      for (auto& P : probs) done = done && (P.err <= tol);
      if (done) break;
    }
  }
  st.n_iter = it;
  outer_nt = outer_threads(1);
#pragma omp parallel for schedule(static) num_threads(outer_nt) if (outer_nt > 1)
  for (int64_t k = 0; k < K; ++k) write_plan(probs[k], err + k);
  for (auto& P : probs) st.log_iters += P.log_iters, st.absorptions += P.absorptions;
  return st;
}

}  // namespace medshift
