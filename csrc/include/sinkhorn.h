// Log-domain entropic OT (Sinkhorn) on raw pointers: the torch-free CPU core and the CUDA launcher.
//
// Spec: medshift_fast/ops/reference.py::sinkhorn_ref. For K independent problems of size N x M,
//   f_i = eps (log a_i - LSE_j((g_j - C_ij) / eps)),  g_j = eps (log b_j - LSE_i((f_i - C_ij) / eps)),
// one iteration = one f update then one g update; log P_ij = (f_i + g_j) / eps - C_ij / eps.
// tol > 0: stop after iteration `it` when it % check_every == 0 or it == max_iter and the row-marginal
// L1 error sum_i |sum_j P_ij - a_i| of EVERY problem is <= tol; tol <= 0: exactly max_iter iterations.
#pragma once
#include <cstdint>

namespace medshift {

struct SinkhornStats {
  int n_iter = 0;         // iterations run (the same for every problem of the batch)
  int log_iters = 0;      // iterations that ran in the log domain (the rest were kernel mat-vecs)
  int absorptions = 0;    // times the scalings were absorbed into the potentials
};

// CPU solver (OpenMP). All arrays fp32, contiguous, row-major.
//   cost:     (K, N, M)  cost matrix C
//   log_a:    (K, N)     log row marginal;  log_b: (K, M) log column marginal
//   f, g:     (K, N), (K, M)  in: warm start (only g is read by the first update; f is returned
//             unchanged when max_iter == 0); out: the potentials
//   log_plan: (K, N, M)  out (also used as scratch for C / eps)
//   err:      (K)        out: the row-marginal L1 error of the returned plan
//   num_threads <= 0: OpenMP's default.
// Returns the iteration statistics. Never throws; bad sizes give n_iter = -1.
SinkhornStats sinkhorn_log_cpu(const float* cost, const float* log_a, const float* log_b,
                               float* f, float* g, float* log_plan, float* err, int64_t K,
                               int64_t N, int64_t M, float eps, int max_iter, float tol,
                               int check_every, int num_threads);

// Fast float exp used by the CPU core (exposed for its unit test): |rel err| < 2e-7 on
// [-87, 88]; returns FLT_MIN-ish for x < -87.3 (never a denormal) and clamps above 88.37.
float sinkhorn_fast_exp(float x);

#ifdef MEDSHIFT_WITH_CUDA_CORE
// CUDA launcher (csrc/cuda/sinkhorn.cu). Device pointers; same layout and semantics as the CPU
// core, plus:
//   n_iter_out: (K) int32 device array, iterations run per problem (the binding tops up problems
//               that stopped early so that every problem ends at the batch maximum, as the
//               reference does)
//   iters:      (K) int32 device array or nullptr: per-problem iteration budget overriding max_iter
//               (used for that top-up; such problems run with tol = 0)
//   cost_half:  0 = fp32 cost, 1 = fp16, 2 = bf16 (cost then points at 2-byte values)
//   workspace:  device scratch of sinkhorn_cuda_workspace_bytes(K, N, M) bytes
//   stream:     a cudaStream_t (void* so this header stays CUDA-free)
// Returns 0 or a cudaError_t code.
int64_t sinkhorn_cuda_workspace_bytes(int64_t K, int64_t N, int64_t M);
int sinkhorn_log_cuda(const void* cost, int cost_dtype, const float* log_a, const float* log_b,
                      float* f, float* g, float* log_plan, float* err, int* n_iter_out,
                      const int* iters, int64_t K, int64_t N, int64_t M, float eps, int max_iter,
                      float tol, int check_every, void* workspace, void* stream);
#endif

}  // namespace medshift
