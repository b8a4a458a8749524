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
//
// Threads: ONE OpenMP team per solve, rows/columns split statically, synchronised by a barrier
// that spins briefly and then sleeps on a futex. (Per-pass `omp for` regions synchronise
// through libgomp's spinning barriers, which on a machine whose cores are busy with other
// processes made 2 threads 30x slower than 1.)
#include "sinkhorn.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace medshift {
namespace {

constexpr float kLogRange = 15.f;  // absorb when |log u| or |log v| exceeds this
constexpr float kFlush = 3.975449735908647e-31f;  // e^-70: smaller kernel entries are stored as 0
const float kHi = std::exp(kLogRange);
const float kLo = std::exp(-kLogRange);

constexpr int kMaxThreads = 64;

// Team barrier: spins briefly (the partner is usually microseconds away), then sleeps on a futex
// (Linux; elsewhere it yields), so that a descheduled partner gets the core.
class Barrier {
 public:
  void wait(int nt) {
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == nt - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) wake();
      return;
    }
    for (int spin = 0; spin < 4000; ++spin) {
      if (gen_.load(std::memory_order_acquire) != gen) return;
      relax();
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (gen_.load(std::memory_order_seq_cst) == gen) sleep(gen);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  static void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
#ifdef __linux__
  void sleep(int gen) {  // returns at once if gen_ no longer equals gen
    syscall(SYS_futex, reinterpret_cast<int*>(&gen_), FUTEX_WAIT_PRIVATE, gen, nullptr, nullptr, 0);
  }
  void wake() {
    syscall(SYS_futex, reinterpret_cast<int*>(&gen_), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr,
            nullptr, 0);
  }
#else
  void sleep(int) { std::this_thread::yield(); }
  void wake() {}
#endif
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<int> gen_{0};
  alignas(64) std::atomic<int> sleepers_{0};
};

// This thread's place in the team.
struct Team {
  int tid = 0, nt = 1;
  Barrier* bar = nullptr;
  void sync() const {
    if (nt > 1) bar->wait(nt);
  }
  // Static contiguous split of [0, n) over the team.
  std::pair<int64_t, int64_t> range(int64_t n) const {
    const int64_t q = n / nt, r = n % nt;
    const int64_t lo = tid * q + std::min<int64_t>(tid, r);
    return {lo, lo + q + (tid < r ? 1 : 0)};
  }
};

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

// One problem of the batch: shared data and workspace.
struct Problem {
  int64_t N = 0, M = 0;
  float eps = 1.f;
  const float* la = nullptr;  // (N) log a
  const float* lb = nullptr;  // (M) log b
  float* f = nullptr;         // (N) potentials (absorbed part when the kernel is valid)
  float* g = nullptr;         // (M)
  float* Ce = nullptr;        // (N, M) C / eps (the caller's log_plan buffer)
  std::unique_ptr<float[]> CeT, KT, a, b, ubuf, v, tmp, tmp2, accp;
  int nt = 1;  // team size: ubuf holds nt private (u, unext) pairs, accp 2 x nt rows of N
  int flag[2][kMaxThreads] = {};
  float part[kMaxThreads] = {};
};

// Control state: every thread keeps its own copy and takes the same decisions (they depend
// only on shared data read after a barrier).
struct Ctl {
  bool kernel = false;    // KT, u, v valid
  bool unext_ok = false;  // unext holds a valid kernel-mode f update
  int cur = 0;            // which half of this thread's ubuf pair is u (the other: unext)
  int phase = 0;          // which set of acc partials / flags the next pass writes
  float err = std::numeric_limits<float>::infinity();
  int log_iters = 0, absorptions = 0;
};

// Every thread keeps its own full copy of u (identical in all threads): the f update is computed
// redundantly, which saves a barrier per iteration.
inline float* u_of(Problem& P, const Ctl& c, const Team& T) {
  return P.ubuf.get() + 2 * P.N * T.tid + (c.cur ? P.N : 0);
}
inline float* unext_of(Problem& P, const Ctl& c, const Team& T) {
  return P.ubuf.get() + 2 * P.N * T.tid + (c.cur ? 0 : P.N);
}
// This thread's acc partial for the current pass (double-buffered: a fast thread may start the
// next pass while a slow one still reads the partials of this one).
inline float* acc_of(Problem& P, const Ctl& c, const Team& T) {
  return P.accp.get() + (static_cast<int64_t>(c.phase) * P.nt + T.tid) * P.N;
}

bool any_flag(const int* flags, int nt) {
  int any = 0;
  for (int t = 0; t < nt; ++t) any |= flags[t];
  return any != 0;
}

float sum_parts(const float* part, int nt) {
  float s = 0.f;
  for (int t = 0; t < nt; ++t) s += part[t];  // fixed order: deterministic
  return s;
}

void allocate(Problem& P, int nt) {
  const int64_t N = P.N, M = P.M;
  P.nt = nt;
  P.CeT = buffer<float>(M * N);
  P.KT = buffer<float>(M * N);
  P.a = buffer<float>(N);
  P.b = buffer<float>(M);
  P.ubuf = buffer<float>(2 * N * nt);
  P.v = buffer<float>(M);
  P.tmp = buffer<float>(std::max(N, M));
  P.tmp2 = buffer<float>(std::max(N, M));
  P.accp = buffer<float>(2 * static_cast<int64_t>(nt) * N);
}

// C / eps (a true division, as the reference), its transpose, the marginals.
void setup(Problem& P, const float* cost, const Team& T) {
  const int64_t N = P.N, M = P.M;
  const float eps = P.eps;
  auto [i0, i1] = T.range(N);
  for (int64_t i = i0; i < i1; ++i) {
    const float* c = cost + i * M;
    float* o = P.Ce + i * M;
#pragma omp simd
    for (int64_t j = 0; j < M; ++j) o[j] = c[j] / eps;
    P.a[i] = std::exp(P.la[i]);
  }
  auto [j0, j1] = T.range(M);
  for (int64_t j = j0; j < j1; ++j) P.b[j] = std::exp(P.lb[j]);
  T.sync();
  constexpr int64_t B = 32;  // blocked transpose, column blocks split over the team
  float* CeT = P.CeT.get();
  auto [b0, b1] = T.range((M + B - 1) / B);
  for (int64_t jb = b0 * B; jb < std::min(b1 * B, M); jb += B)
    for (int64_t ib = 0; ib < N; ib += B)
      for (int64_t j = jb; j < std::min(jb + B, M); ++j)
        for (int64_t i = ib; i < std::min(ib + B, N); ++i) CeT[j * N + i] = P.Ce[i * M + j];
  T.sync();
}

// f_i = eps (log a_i - LSE_j(g_j / eps - C_ij / eps)), exactly as the reference; u = 1.
void f_log(Problem& P, const Team& T, Ctl& c) {
  const int64_t N = P.N, M = P.M;
  const float eps = P.eps;
  float* ge = P.tmp.get();
  auto [j0, j1] = T.range(M);
  for (int64_t j = j0; j < j1; ++j) ge[j] = P.g[j] / eps;
  T.sync();
  float* u = u_of(P, c, T);
  std::fill(u, u + N, 1.f);
  auto [i0, i1] = T.range(N);
  for (int64_t i = i0; i < i1; ++i) {
    const float* row = P.Ce + i * M;
    const float m = max_diff(ge, row, M);
    const float s = sum_exp(ge, row, m, M);
    P.f[i] = eps * (P.la[i] - (m + std::log(s)));
  }
  T.sync();
}

// After an acc pass (and its barrier): every thread reduces ALL the per-thread row sums
// acc_i = sum_j K_ij v_j into its own copy of the next kernel-mode f update unext_i = a_i / acc_i
// (and whether it stays in range). Redundant but tiny (N x threads adds), and no barrier.
void finish_rows(Problem& P, const Team& T, Ctl& c) {
  const int64_t N = P.N;
  const float* acc0 = P.accp.get() + static_cast<int64_t>(c.phase) * P.nt * N;
  float* un = unext_of(P, c, T);
  int bad = 0;
  for (int64_t i = 0; i < N; ++i) {
    float s = acc0[i];
    for (int t = 1; t < T.nt; ++t) s += acc0[t * N + i];
    const float a = P.a[i];
    const float x = a == 0.f ? 1.f : a / s;
    bad |= !(x >= kLo && x <= kHi);  // also catches s == 0 and NaN
    un[i] = x;
  }
  c.unext_ok = !bad;
  c.phase ^= 1;
}

// g_j = eps (log b_j - LSE_i(f_i / eps - C_ij / eps)) over the rows of C^T / eps; the
// exponentials, scaled by b_j / s, are the new kernel (v = 1); accumulates its row sums.
// The caller has absorbed u into f (u == 1).
void g_log_build(Problem& P, const Team& T, Ctl& c) {
  const int64_t N = P.N, M = P.M;
  const float eps = P.eps;
  float* fe = P.tmp2.get();
  auto [i0, i1] = T.range(N);
  for (int64_t i = i0; i < i1; ++i) fe[i] = P.f[i] / eps;
  float* acc = acc_of(P, c, T);
  std::fill(acc, acc + N, 0.f);
  T.sync();
  auto [j0, j1] = T.range(M);
  for (int64_t j = j0; j < j1; ++j) {
    const float* row = P.CeT.get() + j * N;
    float* k = P.KT.get() + j * N;
    const float m = max_diff(fe, row, N);
    const float s = sum_exp_store(fe, row, m, k, N);
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
  }
  T.sync();
  c.kernel = true;
  finish_rows(P, T, c);
}

// One kernel-mode iteration: u = unext (f update), then one pass over K^T: v_j = b_j / <K^T_j, u>
// and acc += v_j K^T_j. Returns false when some v_j left the range (u is then the new u).
bool kernel_iter(Problem& P, const Team& T, Ctl& c) {
  const int64_t N = P.N, M = P.M;
  c.cur ^= 1;  // u <- unext
  const float* u = u_of(P, c, T);
  float* acc = acc_of(P, c, T);
  std::fill(acc, acc + N, 0.f);
  int bad = 0;
  // Four columns at a time: four independent dot chains share the loads of u, and the four
  // axpys share one load/store of acc.
  const int64_t M4 = M / 4;
  auto [q0, q1] = T.range(M4);
  for (int64_t jb = q0; jb < q1; ++jb) {
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
  auto [r0, r1] = T.range(M - 4 * M4);
  for (int64_t j = 4 * M4 + r0; j < 4 * M4 + r1; ++j) {
    const float* k = P.KT.get() + j * N;
    const float bj = P.b[j];
    const float vj = bj == 0.f ? 1.f : bj / dot(k, u, N);
    bad |= !(vj >= kLo && vj <= kHi);
    P.v[j] = vj;
    axpy(acc, vj, k, N);
  }
  P.flag[c.phase][T.tid] = bad;
  T.sync();
  if (any_flag(P.flag[c.phase], T.nt)) {
    c.phase ^= 1;
    return false;
  }
  finish_rows(P, T, c);
  return true;
}

// f += eps log u with this thread's copy of u (identical in all), then u = 1 in every copy.
void absorb_u(Problem& P, const Team& T, const Ctl& c) {
  float* u = u_of(P, c, T);
  auto [i0, i1] = T.range(P.N);
  for (int64_t i = i0; i < i1; ++i) P.f[i] += P.eps * std::log(u[i]);
  std::fill(u, u + P.N, 1.f);
  T.sync();
}

// g += eps log v, v = 1 (v is shared).
void absorb_v(Problem& P, const Team& T) {
  auto [j0, j1] = T.range(P.M);
  for (int64_t j = j0; j < j1; ++j) P.g[j] += P.eps * std::log(P.v[j]), P.v[j] = 1.f;
  T.sync();
}

void iterate(Problem& P, const Team& T, Ctl& c) {
  if (c.kernel && c.unext_ok) {
    if (kernel_iter(P, T, c)) return;
    // The g update left the kernel's range: absorb u into f and redo it in the log domain.
    absorb_u(P, T, c);
    ++c.absorptions;
    ++c.log_iters;
    g_log_build(P, T, c);
    return;
  }
  if (c.kernel) {  // the f update would leave the range: absorb v into g, full log iteration
    absorb_v(P, T);
    ++c.absorptions;
  }
  ++c.log_iters;
  f_log(P, T, c);
  g_log_build(P, T, c);
}

// The actual potentials f + eps log u, g + eps log v into fa (N), ga (M).
void current_potentials(Problem& P, const Team& T, const Ctl& c, float* fa, float* ga) {
  const float eps = P.eps;
  const float* u = u_of(P, c, T);
  auto [i0, i1] = T.range(P.N);
  for (int64_t i = i0; i < i1; ++i) fa[i] = c.kernel ? P.f[i] + eps * std::log(u[i]) : P.f[i];
  auto [j0, j1] = T.range(P.M);
  for (int64_t j = j0; j < j1; ++j) ga[j] = c.kernel ? P.g[j] + eps * std::log(P.v[j]) : P.g[j];
  T.sync();
}

// sum_i |sum_j exp((f_i + g_j) / eps - C_ij / eps) - a_i| for the potentials fa, ga; with
// `write`, also stores those log-plan entries over C / eps.
float plan_err(Problem& P, const Team& T, const float* fa, const float* ga, bool write) {
  const int64_t M = P.M;
  const float eps = P.eps;
  float e = 0.f;
  auto [i0, i1] = T.range(P.N);
  for (int64_t i = i0; i < i1; ++i) {
    float* row = P.Ce + i * M;
    const float fi = fa[i];
    float s = 0.f;
    if (write) {
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < M; ++j) {
        const float x = (fi + ga[j]) / eps - row[j];
        row[j] = x;
        s += fexp(x);
      }
    } else {
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < M; ++j) s += fexp((fi + ga[j]) / eps - row[j]);
    }
    // fexp clamps below at e^-87; a -inf potential (zero marginal) gives an exact zero.
    if (!(fi > -std::numeric_limits<float>::infinity())) s = 0.f;
    e += std::fabs(s - P.a[i]);
  }
  P.part[T.tid] = e;
  T.sync();
  const float total = sum_parts(P.part, T.nt);
  T.sync();  // part is reused by the next call
  return total;
}

// The reference's convergence test, computed as it does (so that both stop at the same check,
// also near the fp32 floor of the error).
float check_err(Problem& P, const Team& T, const Ctl& c) {
  float* fa = P.tmp.get();
  float* ga = P.tmp2.get();
  current_potentials(P, T, c, fa, ga);
  return plan_err(P, T, fa, ga, false);
}

// Final potentials, log P = (f_i + g_j) / eps - C_ij / eps (in place over C / eps), its error.
void write_plan(Problem& P, const Team& T, const Ctl& c, float* err) {
  float* fa = P.tmp.get();
  float* ga = P.tmp2.get();
  current_potentials(P, T, c, fa, ga);
  auto [i0, i1] = T.range(P.N);
  std::copy(fa + i0, fa + i1, P.f + i0);
  auto [j0, j1] = T.range(P.M);
  std::copy(ga + j0, ga + j1, P.g + j0);
  const float e = plan_err(P, T, fa, ga, true);
  if (T.tid == 0) *err = e;
}

// Every problem of `probs`, by one team (T), with the batch's stopping rule.
int solve(std::vector<Problem>& probs, std::vector<Ctl>& ctl, const float* cost, float* err,
          int max_iter, float tol, int check_every, const Team& T) {
  const int64_t K = static_cast<int64_t>(probs.size());
  for (int64_t k = 0; k < K; ++k) setup(probs[k], cost + k * probs[k].N * probs[k].M, T);
  int it = 0;
  while (it < max_iter) {
    const int end =
        tol > 0.f ? std::min(max_iter, (it / check_every + 1) * check_every) : max_iter;
    bool done = tol > 0.f;
    for (int64_t k = 0; k < K; ++k) {
      for (int t = it; t < end; ++t) iterate(probs[k], T, ctl[k]);
      if (tol > 0.f) {
        ctl[k].err = check_err(probs[k], T, ctl[k]);
        done = done && ctl[k].err <= tol;
      }
    }
    it = end;
    if (done) break;
  }
  for (int64_t k = 0; k < K; ++k) write_plan(probs[k], T, ctl[k], err + k);
  return it;
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
  if (K == 0) return st;
  if (check_every <= 0) check_every = 1;
  int nt = num_threads;
#ifdef _OPENMP
  if (nt <= 0) nt = omp_get_max_threads();
#else
  nt = 1;
#endif
  nt = std::max(1, std::min(nt, kMaxThreads));
  // Big problems: one team works inside each problem. Small ones: one thread per problem
  // (batch-parallel) when the batch has enough work to pay for the team, else one thread.
  const bool inner = N * M >= (int64_t{1} << 17);
  const int64_t work = K * N * M * std::max(max_iter, 1);
  const int team = inner ? nt : 1;
  const int batch_nt = inner ? 1 : static_cast<int>(std::min<int64_t>(
                                       K, work >= (int64_t{1} << 22) ? nt : 1));
  std::vector<Problem> probs(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    Problem& P = probs[k];
    P.N = N, P.M = M, P.eps = eps;
    P.la = log_a + k * N, P.lb = log_b + k * M;
    P.f = f + k * N, P.g = g + k * M;
    P.Ce = log_plan + k * N * M;
    allocate(P, team);
  }
  std::vector<Ctl> ctl(static_cast<size_t>(K));
  int n_iter = 0;
  if (batch_nt > 1 && tol <= 0.f) {
    // Independent problems, fixed iterations: one thread each.
#pragma omp parallel for schedule(dynamic, 1) num_threads(batch_nt)
    for (int64_t k = 0; k < K; ++k) {
      std::vector<Problem> one(1);
      std::swap(one[0], probs[k]);
      std::vector<Ctl> c1(1);
      solve(one, c1, cost + k * N * M, err + k, max_iter, tol, check_every, Team{});
      std::swap(one[0], probs[k]);
      ctl[k] = c1[0];
    }
    n_iter = max_iter;
  } else if (team > 1) {
    Barrier bar;
#pragma omp parallel num_threads(team)
    {
#ifdef _OPENMP
      const Team T{omp_get_thread_num(), omp_get_num_threads(), &bar};
#else
      const Team T{};
#endif
      std::vector<Ctl> mine(static_cast<size_t>(K));  // every thread: identical decisions
      const int it = solve(probs, mine, cost, err, max_iter, tol, check_every, T);
      if (T.tid == 0) {
        n_iter = it;
        ctl = mine;
      }
    }
  } else {
    n_iter = solve(probs, ctl, cost, err, max_iter, tol, check_every, Team{});
  }
  st.n_iter = n_iter;
  for (auto& c : ctl) st.log_iters += c.log_iters, st.absorptions += c.absorptions;
  return st;
}

}  // namespace medshift
