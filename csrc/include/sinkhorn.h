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
// The CPU core's vectorisable exp (exposed for its unit test): relative error < 5e-7 on
// [-87, 88]; never returns a denormal (clamps at e^-87) and clamps above 88.37.
float sinkhorn_fast_exp(float x);

// CUDA solver (csrc/cuda/sinkhorn.cu; built only with CUDA). Device pointers, same layout and
// semantics as the CPU core, plus:
//   cost_dtype: 0 = fp32, 1 = fp16, 2 = bf16 (cost then points at 2-byte values; fp32 arithmetic)
//   n_iter:     host int, out: iterations run (the same for every problem of the batch)
//   path:       0 = auto (fused for N, M <= 1024, else tiled), 1 = fused, 2 = tiled
//   workspace:  device scratch of sinkhorn_cuda_workspace_bytes(K, N, M) bytes
//   stream:     the cudaStream_t to run on (void* keeps this header CUDA-free)
// Fused path: one CTA per problem runs every iteration with f, g in shared memory and the
// convergence test on the device; problems that stop early are topped up to the batch maximum
// by a second launch (one host sync, only when tol > 0). Tiled path: per half-iteration kernels
// over row/column blocks of all problems; a device flag set by the convergence test turns the
// remaining launches into no-ops, and the host looks at it every 64 iterations.
// Returns 0 or a cudaError_t code.
int64_t sinkhorn_cuda_workspace_bytes(int64_t K, int64_t N, int64_t M);
int sinkhorn_log_cuda(const void* cost, int cost_dtype, const float* log_a, const float* log_b,
                      float* f, float* g, float* log_plan, float* err, int* n_iter, int64_t K,
                      int64_t N, int64_t M, float eps, int max_iter, float tol, int check_every,
                      int path, void* workspace, void* stream);

}  // namespace medshift
