// torch binding of the Sinkhorn cores: defines the op schema (for every device) and its CPU impl.
// The CUDA impl registers itself in csrc/cuda/sinkhorn_binding.cpp.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "check.h"
#include "sinkhorn.h"

namespace {

// (K, N, M) cost, (K, N)/(K, M) log marginals and warm-start potentials (fp32); returns
// (log_plan (K, N, M), f (K, N), g (K, M), err (K), stats int64 [n_iter, log_iters, absorptions]).
// `path` picks the CUDA algorithm (0 auto, 1 fused, 2 tiled) and is ignored here.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_log_cpu(
    const at::Tensor& cost, const at::Tensor& log_a, const at::Tensor& log_b,
    const at::Tensor& f_init, const at::Tensor& g_init, double eps, int64_t max_iter, double tol,
    int64_t check_every, int64_t /*path: CUDA only*/) {
  TORCH_CHECK(cost.dim() == 3, "sinkhorn_log: cost must be (K, N, M)");
  const int64_t K = cost.size(0), N = cost.size(1), M = cost.size(2);
  TORCH_CHECK(N > 0 && M > 0, "sinkhorn_log: empty cost");
  TORCH_CHECK(eps > 0, "sinkhorn_log: eps must be > 0");
  TORCH_CHECK(max_iter >= 0 && max_iter <= INT32_MAX, "sinkhorn_log: bad max_iter");
  MS_CHECK_CPU(cost);
  for (const at::Tensor* t : {&log_a, &f_init}) {
    MS_CHECK_CPU(*t);
    TORCH_CHECK(t->sizes() == at::IntArrayRef({K, N}), "sinkhorn_log: expected (K, N) vectors");
  }
  for (const at::Tensor* t : {&log_b, &g_init}) {
    MS_CHECK_CPU(*t);
    TORCH_CHECK(t->sizes() == at::IntArrayRef({K, M}), "sinkhorn_log: expected (K, M) vectors");
  }
  auto c = cost.to(at::kFloat).contiguous();  // fp16/bf16 accepted; fp32 arithmetic
  auto la = log_a.to(at::kFloat).contiguous();
  auto lb = log_b.to(at::kFloat).contiguous();
  auto f = f_init.to(at::kFloat).clone(at::MemoryFormat::Contiguous);
  auto g = g_init.to(at::kFloat).clone(at::MemoryFormat::Contiguous);
  auto log_plan = at::empty({K, N, M}, c.options());
  auto err = at::empty({K}, c.options());
  medshift::SinkhornStats st;
  {  // (torch.ops calls run without the GIL)
    st = medshift::sinkhorn_log_cpu(c.data_ptr<float>(), la.data_ptr<float>(),
                                    lb.data_ptr<float>(), f.data_ptr<float>(), g.data_ptr<float>(),
                                    log_plan.data_ptr<float>(), err.data_ptr<float>(), K, N, M,
                                    static_cast<float>(eps), static_cast<int>(max_iter),
                                    static_cast<float>(tol), static_cast<int>(check_every),
                                    at::get_num_threads());
  }
  TORCH_CHECK(st.n_iter >= 0, "sinkhorn_log: invalid arguments");
  auto stats = at::empty({3}, at::kLong);
  int64_t* sp = stats.data_ptr<int64_t>();
  sp[0] = st.n_iter;
  sp[1] = st.log_iters;
  sp[2] = st.absorptions;
  return {log_plan, f, g, err, stats};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(medshift_fast, m) {
  m.def(
      "sinkhorn_log(Tensor cost, Tensor log_a, Tensor log_b, Tensor f_init, Tensor g_init, "
      "float eps, int max_iter, float tol, int check_every, int path=0) -> "
      "(Tensor log_plan, Tensor f, Tensor g, Tensor err, Tensor stats)");
}

TORCH_LIBRARY_IMPL(medshift_fast, CPU, m) { m.impl("sinkhorn_log", &sinkhorn_log_cpu); }
