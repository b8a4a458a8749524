// CUDA dispatch of torch.ops.medshift_fast.guided_stage_out (schema and CPU kernel:
// csrc/torch/guided_stage.cpp; CUDA core: csrc/cuda/guided_stage.cu). Launches on the current
// stream of the inputs' device, so it composes with streams and CUDA-graph capture.
#include <ATen/MemoryOverlap.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "check.h"
#include "guided_stage.h"

namespace {

using medshift::StageDType;

StageDType stage_dtype_cuda(const at::Tensor& t) {
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

void check_like_cuda(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "guided_stage: ", name, " has dtype ",
              t.scalar_type(), ", x has ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "guided_stage: ", name, " is on ", t.device(),
              ", x is on ", ref.device());
  TORCH_CHECK(t.numel() == ref.numel(), "guided_stage: ", name, " has ", t.numel(),
              " elements, x has ", ref.numel());
  TORCH_CHECK(t.is_contiguous(), "guided_stage: ", name, " must be contiguous");
}

const void* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t ? t->data_ptr() : nullptr;
}

void guided_stage_out_cuda(const at::Tensor& x, const at::Tensor& v_cond,
                           const std::optional<at::Tensor>& v_uncond,
                           const std::optional<at::Tensor>& acc, double w, double h, double c,
                           const at::Tensor& x_out, const std::optional<at::Tensor>& acc_out) {
  MS_CHECK_CUDA(x);
  MS_CHECK_CONTIG(x);
  const StageDType dt = stage_dtype_cuda(x);
  check_like_cuda(x, v_cond, "v_cond");
  check_like_cuda(x, x_out, "x_out");
  if (v_uncond) check_like_cuda(x, *v_uncond, "v_uncond");
  if (acc) check_like_cuda(x, *acc, "acc");
  if (acc_out) check_like_cuda(x, *acc_out, "acc_out");
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
  if (x.numel() == 0) return;

  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const int rc = medshift::guided_stage_cuda(
      dt, x.numel(), x.data_ptr(), v_cond.data_ptr(), ptr_or_null(v_uncond),
      acc_out ? ptr_or_null(acc) : nullptr, static_cast<float>(w), static_cast<float>(h),
      static_cast<float>(c), x_out.data_ptr(), acc_out ? acc_out->data_ptr() : nullptr, stream);
  TORCH_CHECK(rc == 0, "guided_stage: CUDA kernel launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(rc)));
}

}  // namespace

TORCH_LIBRARY_IMPL(medshift_fast, CUDA, m) { m.impl("guided_stage_out", &guided_stage_out_cuda); }
