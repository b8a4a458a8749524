// Log-domain Sinkhorn on the GPU (torch-free: raw pointers, sizes, a stream).
// Spec: medshift_fast/ops/reference.py::sinkhorn_ref; API and semantics: csrc/include/sinkhorn.h.
//
// Fused path (N, M <= 1024): ONE launch, one CTA (512 threads) per problem running every
// iteration with f and g in shared memory. f update: a warp per row, lanes stride the row
// (coalesced) with a one-exp online log-sum-exp, merged by shuffles. g update: a thread per
// column and several row groups per column (coalesced along the row), merged in shared memory.
// The convergence test (the reference's row-marginal L1 error) runs on the device every
// check_every iterations; nothing touches the host until the end.
// Tiled path (any size): per half-iteration kernels over row / column blocks of all K problems;
// the column pass is split over row chunks (partial (max, sum) pairs, then a combine kernel) so
// that the grid fills the GPU. A device flag set by the convergence test makes the remaining
// launches return at once; the host reads it every kSyncEvery iterations.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "sinkhorn.h"

namespace medshift {
namespace {

constexpr int kFusedMax = 1024;     // fused path for N, M <= this
constexpr int kFusedThreads = 512;
constexpr int kRowsPerCta = 8;      // tiled row kernels: a warp per row, 8 warps
constexpr int kColThreads = 256;    // tiled column kernels: a thread per column
constexpr int kSyncEvery = 64;      // tiled path: iterations between looks at the done flag

template <class T>
__device__ __forceinline__ float ld(const T* p);
template <>
__device__ __forceinline__ float ld<float>(const float* p) { return __ldg(p); }
template <>
__device__ __forceinline__ float ld<__half>(const __half* p) { return __half2float(__ldg(p)); }
template <>
__device__ __forceinline__ float ld<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(__ldg(p));
}

// Online log-sum-exp state (m, s): sum = s * exp(m). One exp per element.
__device__ __forceinline__ void lse_add(float& m, float& s, float x) {
  if (x > m) {
    s = s * __expf(m - x) + 1.f;  // m = -inf: exp(-inf) = 0
    m = x;
  } else if (x > -INFINITY) {
    s += __expf(x - m);
  }
}

__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) return;  // both empty
  s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
  m = mm;
}

__device__ __forceinline__ void warp_lse(float& m, float& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m, s, m2, s2);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sum, the result broadcast to every thread (red: >= 32 floats of shared memory).
__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < nw; ++w) t += red[w];  // fixed order: deterministic
  return t;
}

// Row i's |sum_j exp((f_i + g_j) / eps - C_ij / eps) - a_i| by one warp (lane 0 holds it);
// with LP, also writes the log-plan row. g may live in shared or global memory.
template <class T>
__device__ float row_err(const T* __restrict__ c, const float* g, float fi, float la, int M,
                         float inv_eps, float* __restrict__ lp) {
  const int lane = threadIdx.x & 31;
  float s = 0.f;
  for (int j = lane; j < M; j += 32) {
    const float x = (fi + g[j]) * inv_eps - ld(c + j) * inv_eps;
    if (lp) lp[j] = x;
    s += __expf(x);
  }
  s = warp_sum(s);
  return fabsf(s - expf(la));
}

// ------------------------------------------------------------------------------ fused path
template <class T>
__global__ void __launch_bounds__(kFusedThreads)
    fused_kernel(const T* __restrict__ C, const float* __restrict__ LA,
                 const float* __restrict__ LB, float* __restrict__ F, float* __restrict__ G,
                 float* __restrict__ LP, float* __restrict__ ERR, int* __restrict__ NIT,
                 const int* __restrict__ ITERS, int N, int M, float eps, float inv_eps,
                 int max_iter, float tol, int check_every) {
  extern __shared__ float smem[];
  float* fs = smem;                      // N
  float* gs = fs + N;                    // M
  float* pm = gs + M;                    // blockDim: column partial maxima
  float* ps = pm + blockDim.x;           // blockDim: column partial sums
  float* red = ps + blockDim.x;          // 32
  const int64_t k = blockIdx.x;
  C += k * N * M;
  LP += k * N * M;
  LA += k * N;
  LB += k * M;
  F += k * N;
  G += k * M;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  for (int i = tid; i < N; i += blockDim.x) fs[i] = F[i];
  for (int j = tid; j < M; j += blockDim.x) gs[j] = G[j];
  // g pass layout: `cols` threads per row group (a warp multiple covering M when it can),
  // `groups` row groups; columns beyond `cols` are strided.
  const int cols = min(static_cast<int>(blockDim.x), (M + 31) / 32 * 32);
  const int groups = blockDim.x / cols;
  const int my_col = tid % cols, my_group = tid / cols;
  __syncthreads();
  const int n_it = ITERS ? ITERS[k] : max_iter;
  int it = 0;
  while (it < n_it) {
    // f_i = eps (log a_i - LSE_j((g_j - C_ij) / eps)): a warp per row.
    for (int i = warp; i < N; i += nwarps) {
      const T* c = C + static_cast<int64_t>(i) * M;
      float m = -INFINITY, s = 0.f;
      for (int j = lane; j < M; j += 32) lse_add(m, s, gs[j] * inv_eps - ld(c + j) * inv_eps);
      warp_lse(m, s);
      if (lane == 0) fs[i] = eps * (LA[i] - (m + logf(s)));
    }
    __syncthreads();
    // g_j = eps (log b_j - LSE_i((f_i - C_ij) / eps)): thread per (column, row group).
    for (int j0 = 0; j0 < M; j0 += cols) {
      const int j = j0 + my_col;
      float m = -INFINITY, s = 0.f;
      if (my_group < groups && j < M)
        for (int i = my_group; i < N; i += groups)
          lse_add(m, s, fs[i] * inv_eps - ld(C + static_cast<int64_t>(i) * M + j) * inv_eps);
      pm[tid] = m;
      ps[tid] = s;
      __syncthreads();
      if (my_group == 0 && j < M) {
        for (int q = 1; q < groups; ++q) lse_merge(m, s, pm[q * cols + my_col], ps[q * cols + my_col]);
        gs[j] = eps * (LB[j] - (m + logf(s)));
      }
      __syncthreads();
    }
    ++it;
    if (tol > 0.f && (it % check_every == 0 || it == n_it)) {
      float e = 0.f;
      for (int i = warp; i < N; i += nwarps) {
        const float ei = row_err(C + static_cast<int64_t>(i) * M, gs, fs[i], LA[i], M, inv_eps,
                                 static_cast<float*>(nullptr));
        if (lane == 0) e += ei;
      }
      if (block_sum(e, red) <= tol) break;  // the same value in every thread
    }
  }
  for (int i = tid; i < N; i += blockDim.x) F[i] = fs[i];
  for (int j = tid; j < M; j += blockDim.x) G[j] = gs[j];
  float e = 0.f;
  for (int i = warp; i < N; i += nwarps) {
    const float ei = row_err(C + static_cast<int64_t>(i) * M, gs, fs[i], LA[i], M, inv_eps,
                             LP + static_cast<int64_t>(i) * M);
    if (lane == 0) e += ei;
  }
  e = block_sum(e, red);
  if (tid == 0) {
    ERR[k] = e;
    NIT[k] = it;
  }
}

// ------------------------------------------------------------------------------ tiled path
template <class T>
__global__ void row_kernel(const T* __restrict__ C, const float* __restrict__ LA,
                           float* __restrict__ F, const float* __restrict__ G, int N, int M,
                           float eps, float inv_eps, const int* __restrict__ done) {
  if (*done) return;
  const int64_t k = blockIdx.y;
  const int i = blockIdx.x * kRowsPerCta + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (i >= N) return;
  const T* c = C + (k * N + i) * M;
  const float* g = G + k * M;
  float m = -INFINITY, s = 0.f;
  for (int j = lane; j < M; j += 32) lse_add(m, s, __ldg(g + j) * inv_eps - ld(c + j) * inv_eps);
  warp_lse(m, s);
  if (lane == 0) F[k * N + i] = eps * (LA[k * N + i] - (m + logf(s)));
}

// Partial column LSE over row chunk blockIdx.y of problem blockIdx.z.
template <class T>
__global__ void col_partial_kernel(const T* __restrict__ C, const float* __restrict__ F,
                                   float* __restrict__ PM, float* __restrict__ PS, int N, int M,
                                   int R, float inv_eps, const int* __restrict__ done) {
  if (*done) return;
  const int64_t k = blockIdx.z;
  const int r = blockIdx.y;
  const int j = blockIdx.x * kColThreads + threadIdx.x;
  if (j >= M) return;
  const int chunk = (N + R - 1) / R;
  const int i0 = r * chunk, i1 = min(N, i0 + chunk);
  const T* c = C + k * N * M + j;
  const float* f = F + k * N;
  float m = -INFINITY, s = 0.f;
  for (int i = i0; i < i1; ++i)
    lse_add(m, s, __ldg(f + i) * inv_eps - ld(c + static_cast<int64_t>(i) * M) * inv_eps);
  PM[(k * R + r) * M + j] = m;
  PS[(k * R + r) * M + j] = s;
}

__global__ void col_combine_kernel(const float* __restrict__ PM, const float* __restrict__ PS,
                                   const float* __restrict__ LB, float* __restrict__ G, int M,
                                   int R, float eps, const int* __restrict__ done) {
  if (*done) return;
  const int64_t k = blockIdx.y;
  const int j = blockIdx.x * kColThreads + threadIdx.x;
  if (j >= M) return;
  float m = -INFINITY, s = 0.f;
  for (int r = 0; r < R; ++r) lse_merge(m, s, PM[(k * R + r) * M + j], PS[(k * R + r) * M + j]);
  G[k * M + j] = eps * (LB[k * M + j] - (m + logf(s)));
}

// Per-(problem, row block) partial row-marginal errors; with LP, also writes the log plan.
template <class T>
__global__ void err_kernel(const T* __restrict__ C, const float* __restrict__ LA,
                           const float* __restrict__ F, const float* __restrict__ G,
                           float* __restrict__ LP, float* __restrict__ PART, int N, int M,
                           float inv_eps, const int* __restrict__ done) {
  __shared__ float red[32];
  if (done && *done) return;
  const int64_t k = blockIdx.y;
  const int i = blockIdx.x * kRowsPerCta + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  float e = 0.f;
  if (i < N) {
    float* lp = LP ? LP + (k * N + i) * M : nullptr;
    e = row_err(C + (k * N + i) * M, G + k * M, F[k * N + i], LA[k * N + i], M, inv_eps, lp);
    if (lane != 0) e = 0.f;
  }
  e = block_sum(e, red);
  if (threadIdx.x == 0) PART[k * gridDim.x + blockIdx.x] = e;
}

// Sum the partials of each problem in a fixed order; with tol > 0, decide convergence.
__global__ void decide_kernel(const float* __restrict__ PART, int nb, int K, float tol, int it,
                              int* __restrict__ done, int* __restrict__ nit,
                              float* __restrict__ ERR) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  if (ERR == nullptr && *done) return;
  bool ok = true;
  for (int k = 0; k < K; ++k) {
    float e = 0.f;
    for (int b = 0; b < nb; ++b) e += PART[k * nb + b];
    if (ERR) ERR[k] = e;
    ok = ok && (e <= tol);
  }
  if (ERR == nullptr && ok) {
    *done = 1;
    *nit = it;
  }
}

__global__ void init_flags_kernel(int* done, int* nit, int max_iter) {
  *done = 0;
  *nit = max_iter;
}

// ------------------------------------------------------------------------------ workspace
struct Layout {
  int R;             // row chunks of the tiled column pass
  int nb;            // row blocks of the tiled row / error kernels
  size_t ints, part, pm, ps, total;
};

size_t align256(size_t x) { return (x + 255) / 256 * 256; }

Layout layout(int64_t K, int64_t N, int64_t M) {
  Layout L;
  const int64_t col_blocks = (M + kColThreads - 1) / kColThreads;
  L.R = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(
                                                  {32, (N + 63) / 64, (264 + col_blocks * K - 1) /
                                                                          (col_blocks * K)})));
  L.nb = static_cast<int>((N + kRowsPerCta - 1) / kRowsPerCta);
  L.ints = 0;
  L.part = align256(sizeof(int) * (2 + 2 * K));
  L.pm = L.part + align256(sizeof(float) * K * L.nb);
  L.ps = L.pm + align256(sizeof(float) * K * L.R * M);
  L.total = L.ps + align256(sizeof(float) * K * L.R * M);
  return L;
}

template <class T>
int run(const T* C, const float* LA, const float* LB, float* F, float* G, float* LP, float* ERR,
        int* n_iter, int K, int N, int M, float eps, int max_iter, float tol, int check_every,
        int path, char* ws, cudaStream_t st) {
  const float inv_eps = 1.f / eps;
  const Layout L = layout(K, N, M);
  int* done = reinterpret_cast<int*>(ws + L.ints);
  int* nit = done + 1;
  int* counts = done + 2;     // K: fused per-problem iteration counts
  int* iters = counts + K;    // K: fused top-up budgets
  float* part = reinterpret_cast<float*>(ws + L.part);
  const bool fused = path == 1 || (path == 0 && N <= kFusedMax && M <= kFusedMax);
  if (fused) {
    const size_t smem = sizeof(float) * (N + M + 2 * kFusedThreads + 32);
    if (smem > 48 * 1024) {
      cudaError_t e = cudaFuncSetAttribute(fused_kernel<T>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
      if (e != cudaSuccess) return e;
    }
    fused_kernel<T><<<K, kFusedThreads, smem, st>>>(C, LA, LB, F, G, LP, ERR, counts, nullptr, N,
                                                    M, eps, inv_eps, max_iter, tol, check_every);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    if (!(tol > 0.f)) {
      *n_iter = max_iter;  // no sync needed
      return 0;
    }
    std::vector<int> n(K);
    cudaMemcpyAsync(n.data(), counts, sizeof(int) * K, cudaMemcpyDeviceToHost, st);
    if (cudaError_t e = cudaStreamSynchronize(st); e != cudaSuccess) return e;
    const int n_max = *std::max_element(n.begin(), n.end());
    *n_iter = n_max;
    bool top_up = false;
    for (int& v : n) top_up = top_up || v < n_max, v = n_max - v;
    if (!top_up) return 0;
    // Continue the early stoppers from their g (the f update depends on g only): exactly the
    // reference's trajectory, which stops when EVERY problem is within tol.
    cudaMemcpyAsync(iters, n.data(), sizeof(int) * K, cudaMemcpyHostToDevice, st);
    fused_kernel<T><<<K, kFusedThreads, smem, st>>>(C, LA, LB, F, G, LP, ERR, counts, iters, N,
                                                    M, eps, inv_eps, n_max, 0.f, check_every);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    return cudaStreamSynchronize(st);  // n (host) must outlive the copy
  }
  float* pm = reinterpret_cast<float*>(ws + L.pm);
  float* ps = reinterpret_cast<float*>(ws + L.ps);
  const dim3 grid_rows(L.nb, K);
  const dim3 grid_part((M + kColThreads - 1) / kColThreads, L.R, K);
  const dim3 grid_cols((M + kColThreads - 1) / kColThreads, K);
  init_flags_kernel<<<1, 1, 0, st>>>(done, nit, max_iter);
  for (int it = 1; it <= max_iter; ++it) {
    row_kernel<T><<<grid_rows, 32 * kRowsPerCta, 0, st>>>(C, LA, F, G, N, M, eps, inv_eps, done);
    col_partial_kernel<T><<<grid_part, kColThreads, 0, st>>>(C, F, pm, ps, N, M, L.R, inv_eps,
                                                             done);
    col_combine_kernel<<<grid_cols, kColThreads, 0, st>>>(pm, ps, LB, G, M, L.R, eps, done);
    if (tol > 0.f && (it % check_every == 0 || it == max_iter)) {
      err_kernel<T><<<grid_rows, 32 * kRowsPerCta, 0, st>>>(C, LA, F, G, nullptr, part, N, M,
                                                            inv_eps, done);
      decide_kernel<<<1, 32, 0, st>>>(part, L.nb, K, tol, it, done, nit, nullptr);
    }
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    if (tol > 0.f && it % kSyncEvery == 0 && it < max_iter) {
      int d = 0;
      cudaMemcpyAsync(&d, done, sizeof(int), cudaMemcpyDeviceToHost, st);
      if (cudaError_t e = cudaStreamSynchronize(st); e != cudaSuccess) return e;
      if (d) break;
    }
  }
  err_kernel<T><<<grid_rows, 32 * kRowsPerCta, 0, st>>>(C, LA, F, G, LP, part, N, M, inv_eps,
                                                        nullptr);
  decide_kernel<<<1, 32, 0, st>>>(part, L.nb, K, tol, 0, done, nit, ERR);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (!(tol > 0.f)) {
    *n_iter = max_iter;
    return 0;
  }
  int h = max_iter;
  cudaMemcpyAsync(&h, nit, sizeof(int), cudaMemcpyDeviceToHost, st);
  cudaError_t e = cudaStreamSynchronize(st);
  *n_iter = h;
  return e;
}

}  // namespace

int64_t sinkhorn_cuda_workspace_bytes(int64_t K, int64_t N, int64_t M) {
  return static_cast<int64_t>(layout(K, N, M).total);
}

int sinkhorn_log_cuda(const void* cost, int cost_dtype, const float* log_a, const float* log_b,
                      float* f, float* g, float* log_plan, float* err, int* n_iter, int64_t K,
                      int64_t N, int64_t M, float eps, int max_iter, float tol, int check_every,
                      int path, void* workspace, void* stream) {
  if (K <= 0 || N <= 0 || M <= 0 || !(eps > 0.f) || max_iter < 0 || check_every < 1 ||
      N * M > (int64_t{1} << 31))
    return static_cast<int>(cudaErrorInvalidValue);
  auto st = static_cast<cudaStream_t>(stream);
  auto ws = static_cast<char*>(workspace);
  const int k = static_cast<int>(K), n = static_cast<int>(N), m = static_cast<int>(M);
  switch (cost_dtype) {
    case 0:
      return run(static_cast<const float*>(cost), log_a, log_b, f, g, log_plan, err, n_iter, k, n,
                 m, eps, max_iter, tol, check_every, path, ws, st);
    case 1:
      return run(static_cast<const __half*>(cost), log_a, log_b, f, g, log_plan, err, n_iter, k,
                 n, m, eps, max_iter, tol, check_every, path, ws, st);
    case 2:
      return run(static_cast<const __nv_bfloat16*>(cost), log_a, log_b, f, g, log_plan, err,
                 n_iter, k, n, m, eps, max_iter, tol, check_every, path, ws, st);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace medshift
