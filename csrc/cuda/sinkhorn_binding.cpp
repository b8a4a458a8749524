// CUDA dispatch of torch.ops.medshift_fast.sinkhorn_log (schema and CPU kernel:
// csrc/torch/sinkhorn.cpp; CUDA core: csrc/cuda/sinkhorn.cu). Runs on the current stream of the
// cost's device; the workspace comes from torch's caching allocator.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "check.h"
#include "sinkhorn.h"

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_log_cuda_op(
    const at::Tensor& cost, const at::Tensor& log_a, const at::Tensor& log_b,
    const at::Tensor& f_init, const at::Tensor& g_init, double eps, int64_t max_iter, double tol,
    int64_t check_every, int64_t path) {
  TORCH_CHECK(cost.dim() == 3, "sinkhorn_log: cost must be (K, N, M)");
  const int64_t K = cost.size(0), N = cost.size(1), M = cost.size(2);
  TORCH_CHECK(K > 0 && N > 0 && M > 0, "sinkhorn_log: empty cost");
  TORCH_CHECK(eps > 0, "sinkhorn_log: eps must be > 0");
  TORCH_CHECK(max_iter >= 0 && max_iter <= INT32_MAX, "sinkhorn_log: bad max_iter");
  TORCH_CHECK(check_every >= 1, "sinkhorn_log: check_every must be >= 1");
  TORCH_CHECK(path >= 0 && path <= 2, "sinkhorn_log: path must be 0 (auto), 1 (fused), 2 (tiled)");
  MS_CHECK_CUDA(cost);
  for (const at::Tensor* t : {&log_a, &f_init}) {
    TORCH_CHECK(t->device() == cost.device(), "sinkhorn_log: inputs on different devices");
    TORCH_CHECK(t->sizes() == at::IntArrayRef({K, N}), "sinkhorn_log: expected (K, N) vectors");
  }
  for (const at::Tensor* t : {&log_b, &g_init}) {
    TORCH_CHECK(t->device() == cost.device(), "sinkhorn_log: inputs on different devices");
    TORCH_CHECK(t->sizes() == at::IntArrayRef({K, M}), "sinkhorn_log: expected (K, M) vectors");
  }
  c10::cuda::CUDAGuard guard(cost.device());
  at::Tensor c = cost.contiguous();
  int dtype = 0;
  if (c.scalar_type() == at::kHalf) {
    dtype = 1;
  } else if (c.scalar_type() == at::kBFloat16) {
    dtype = 2;
  } else if (c.scalar_type() != at::kFloat) {
    c = c.to(at::kFloat);
  }
  auto la = log_a.to(at::kFloat).contiguous();
  auto lb = log_b.to(at::kFloat).contiguous();
  auto f = f_init.to(at::kFloat).clone(at::MemoryFormat::Contiguous);
  auto g = g_init.to(at::kFloat).clone(at::MemoryFormat::Contiguous);
  auto opts = la.options();
  auto log_plan = at::empty({K, N, M}, opts);
  auto err = at::empty({K}, opts);
  auto ws = at::empty({medshift::sinkhorn_cuda_workspace_bytes(K, N, M)}, opts.dtype(at::kByte));
  int n_iter = 0;
  const int rc = medshift::sinkhorn_log_cuda(
      c.data_ptr(), dtype, la.data_ptr<float>(), lb.data_ptr<float>(), f.data_ptr<float>(),
      g.data_ptr<float>(), log_plan.data_ptr<float>(), err.data_ptr<float>(), &n_iter, K, N, M,
      static_cast<float>(eps), static_cast<int>(max_iter), static_cast<float>(tol),
      static_cast<int>(check_every), static_cast<int>(path), ws.data_ptr(),
      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(rc == 0, "sinkhorn_log (cuda): ", cudaGetErrorString(static_cast<cudaError_t>(rc)));
  // The workspace is freed by the caching allocator when `ws` goes out of scope; kernels that
  // still use it are ordered before any reuse on this stream.
  auto stats = at::empty({3}, at::kLong);
  int64_t* sp = stats.data_ptr<int64_t>();
  sp[0] = n_iter;
  sp[1] = -1;  // log_iters / absorptions: CPU statistics only
  sp[2] = -1;
  return {log_plan, f, g, err, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(medshift_fast, CUDA, m) { m.impl("sinkhorn_log", &sinkhorn_log_cuda_op); }
