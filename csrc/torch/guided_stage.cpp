// Torch binding of the fused guided ODE stage (core: csrc/cpu/guided_stage.cpp).
//
//   torch.ops.medshift_fast.guided_stage_out(x, v_cond, v_uncond?, acc?, w, h, c, x_out, acc_out?)
//
// writes x_out = x + h k and, when acc_out is given, acc_out = (acc or x) + c k, with
// k = v_uncond + w (v_cond - v_uncond). All tensors: contiguous, one dtype (fp32/fp16/bf16),
// one device, same numel; the Python wrapper (medshift_fast/ops/ode.py) prepares them. The CPU
// kernel splits the range over torch's own thread pool (at::parallel_for), so torch's thread
// setting applies and no second OpenMP team is started.
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include "check.h"
#include "guided_stage.h"

namespace {

using medshift::StageDType;

constexpr int64_t kGrain = 1 << 15;

StageDType stage_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return StageDType::kFloat32;
    case at::kHalf:
      return StageDType::kFloat16;
    case at::kBFloat16:
      return StageDType::kBFloat16;
    default:
      TORCH_CHECK(false, "guided_stage: dtype ", t.scalar_type(),
                  " is not supported (float32, float16, bfloat16)");
  }
}

void check_like(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "guided_stage: ", name, " has dtype ",
              t.scalar_type(), ", x has ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "guided_stage: ", name, " is on ", t.device(),
              ", x is on ", ref.device());
  TORCH_CHECK(t.numel() == ref.numel(), "guided_stage: ", name, " has ", t.numel(),
              " elements, x has ", ref.numel());
  TORCH_CHECK(t.is_contiguous(), "guided_stage: ", name, " must be contiguous");
}

void guided_stage_out_cpu(const at::Tensor& x, const at::Tensor& v_cond,
                          const std::optional<at::Tensor>& v_uncond,
                          const std::optional<at::Tensor>& acc, double w, double h, double c,
                          const at::Tensor& x_out, const std::optional<at::Tensor>& acc_out) {
  MS_CHECK_CPU(x);
  MS_CHECK_CONTIG(x);
  const StageDType dt = stage_dtype(x);
  check_like(x, v_cond, "v_cond");
  check_like(x, x_out, "x_out");
  if (v_uncond) check_like(x, *v_uncond, "v_uncond");
  if (acc) check_like(x, *acc, "acc");
  if (acc_out) check_like(x, *acc_out, "acc_out");
  // Same-address aliasing (in place) is fine; partial overlap would read already-written data.
  at::assert_no_partial_overlap(x_out, x);
  at::assert_no_partial_overlap(x_out, v_cond);
  if (v_uncond) at::assert_no_partial_overlap(x_out, *v_uncond);
  if (acc_out) {
    at::assert_no_partial_overlap(*acc_out, x);
    at::assert_no_partial_overlap(*acc_out, x_out);
    TORCH_CHECK(!acc_out->is_same(x_out) || x_out.numel() == 0,
                "guided_stage: acc_out and x_out must be different tensors");
    if (acc) at::assert_no_partial_overlap(*acc_out, *acc);
  }

  const int64_t n = x.numel();
  const int64_t es = x.element_size();
  const char* px = static_cast<const char*>(x.data_ptr());
  const char* pvc = static_cast<const char*>(v_cond.data_ptr());
  const char* pvu = v_uncond ? static_cast<const char*>(v_uncond->data_ptr()) : nullptr;
  const char* pacc = acc && acc_out ? static_cast<const char*>(acc->data_ptr()) : nullptr;
  char* pxo = static_cast<char*>(x_out.data_ptr());
  char* pao = acc_out ? static_cast<char*>(acc_out->data_ptr()) : nullptr;
  const float fw = static_cast<float>(w), fh = static_cast<float>(h), fc = static_cast<float>(c);
  auto off = [es](const char* p, int64_t i) { return p ? p + i * es : nullptr; };
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    const int rc = medshift::guided_stage_cpu(
        dt, end - begin, off(px, begin), off(pvc, begin), off(pvu, begin), off(pacc, begin), fw,
        fh, fc, pxo + begin * es, pao ? pao + begin * es : nullptr, /*num_threads=*/1);
    TORCH_CHECK(rc == medshift::kStageOk, "guided_stage: CPU kernel failed with status ", rc);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(medshift_fast, m) {
  m.def(
      "guided_stage_out(Tensor x, Tensor v_cond, Tensor? v_uncond, Tensor? acc, float w, "
      "float h, float c, Tensor(a!) x_out, Tensor(b!)? acc_out) -> ()");
}

TORCH_LIBRARY_IMPL(medshift_fast, CPU, m) { m.impl("guided_stage_out", &guided_stage_out_cpu); }
