// Fused guided ODE stage on the CPU (torch-free): see csrc/include/guided_stage.h.
//
// One pass over memory: each thread takes one contiguous slice and runs a branch-free,
// auto-vectorised loop, specialised at compile time on whether v_uncond / acc / acc_out exist.
// Half types convert through the bit-manipulation helpers of the header (vectorisable selects).
#include "guided_stage.h"

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace medshift {
namespace {

// Below this many elements a call stays on the calling thread: waking a thread team costs more
// than the pass itself (one pass over 32 Ki fp32 elements is a few microseconds).
constexpr int64_t kParallelGrain = 1 << 15;

struct F32 {
  using storage = float;
  static inline float load(float v) { return v; }
  static inline float store(float v) { return v; }
};
struct F16 {
  using storage = uint16_t;
  static inline float load(uint16_t v) { return half_to_float(v); }
  static inline uint16_t store(float v) { return float_to_half(v); }
};
struct BF16 {
  using storage = uint16_t;
  static inline float load(uint16_t v) { return bf16_to_float(v); }
  static inline uint16_t store(float v) { return float_to_bf16(v); }
};

// One contiguous slice [begin, end). No __restrict__: in-place calls alias x_out with x and
// acc_out with acc; every iteration loads all its inputs before it stores, so same-index aliasing
// is safe, and `omp simd` tells the compiler there is no loop-carried dependence.
template <class T, bool kUncond, bool kAcc, bool kWriteAcc>
void stage_slice(const typename T::storage* x, const typename T::storage* vc,
                 const typename T::storage* vu, const typename T::storage* acc,
                 typename T::storage* xo, typename T::storage* ao, int64_t begin, int64_t end,
                 float w, float h, float c) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float xi = T::load(x[i]);
    const float vci = T::load(vc[i]);
    float k = vci;
    if (kUncond) {
      const float vui = T::load(vu[i]);
      k = vui + w * (vci - vui);
    }
    float base = xi;
    if (kAcc) base = T::load(acc[i]);
    xo[i] = T::store(xi + h * k);
    if (kWriteAcc) ao[i] = T::store(base + c * k);
  }
}

template <class T, bool kUncond, bool kAcc, bool kWriteAcc>
void stage_run(int64_t n, const void* x, const void* vc, const void* vu, const void* acc, float w,
               float h, float c, void* xo, void* ao, int num_threads) {
  using S = typename T::storage;
  const S* px = static_cast<const S*>(x);
  const S* pvc = static_cast<const S*>(vc);
  const S* pvu = static_cast<const S*>(vu);
  const S* pacc = static_cast<const S*>(acc);
  S* pxo = static_cast<S*>(xo);
  S* pao = static_cast<S*>(ao);
  int threads = 1;
#ifdef _OPENMP
  if (n >= kParallelGrain) {
    threads = num_threads > 0 ? num_threads : omp_get_max_threads();
    threads = static_cast<int>(std::min<int64_t>(threads, n / (kParallelGrain / 2)));
  }
#else
  (void)num_threads;
#endif
  if (threads <= 1) {
    stage_slice<T, kUncond, kAcc, kWriteAcc>(px, pvc, pvu, pacc, pxo, pao, 0, n, w, h, c);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    // Static contiguous slices, rounded to 64 elements so slice edges stay cache-line aligned.
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t chunk = ((n + nt - 1) / nt + 63) / 64 * 64;
    const int64_t begin = std::min<int64_t>(n, chunk * t);
    const int64_t end = std::min<int64_t>(n, begin + chunk);
    if (begin < end)
      stage_slice<T, kUncond, kAcc, kWriteAcc>(px, pvc, pvu, pacc, pxo, pao, begin, end, w, h, c);
  }
#endif
}

template <class T>
void stage_dispatch(int64_t n, const void* x, const void* vc, const void* vu, const void* acc,
                    float w, float h, float c, void* xo, void* ao, int nt) {
  const bool u = vu != nullptr, a = acc != nullptr, wa = ao != nullptr;
  // acc without acc_out is never read: fold it into the kAcc = false variants.
  if (u) {
    if (wa && a) return stage_run<T, true, true, true>(n, x, vc, vu, acc, w, h, c, xo, ao, nt);
    if (wa) return stage_run<T, true, false, true>(n, x, vc, vu, acc, w, h, c, xo, ao, nt);
    return stage_run<T, true, false, false>(n, x, vc, vu, acc, w, h, c, xo, ao, nt);
  }
  if (wa && a) return stage_run<T, false, true, true>(n, x, vc, vu, acc, w, h, c, xo, ao, nt);
  if (wa) return stage_run<T, false, false, true>(n, x, vc, vu, acc, w, h, c, xo, ao, nt);
  return stage_run<T, false, false, false>(n, x, vc, vu, acc, w, h, c, xo, ao, nt);
}

}  // namespace

int guided_stage_cpu(StageDType dtype, int64_t n, const void* x, const void* v_cond,
                     const void* v_uncond, const void* acc, float w, float h, float c,
                     void* x_out, void* acc_out, int num_threads) {
  if (n <= 0) return kStageOk;
  if (x == nullptr || v_cond == nullptr || x_out == nullptr) return kStageNullPointer;
  switch (dtype) {
    case StageDType::kFloat32:
      stage_dispatch<F32>(n, x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out, num_threads);
      return kStageOk;
    case StageDType::kFloat16:
      stage_dispatch<F16>(n, x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out, num_threads);
      return kStageOk;
    case StageDType::kBFloat16:
      stage_dispatch<BF16>(n, x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out, num_threads);
      return kStageOk;
  }
  return kStageBadDType;
}

}  // namespace medshift
