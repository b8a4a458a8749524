// Fused guided ODE stage on CUDA (torch-free): see csrc/include/guided_stage.h.
//
// A memory-bound elementwise pass: 16-byte vector loads/stores (4 fp32 or 8 fp16/bf16 per
// thread per iteration) when every pointer is 16-byte aligned, a scalar loop otherwise and for
// the tail; grid-stride, so any n (int64) works with a grid sized to the device (a few waves of
// blocks per SM). Which of v_uncond / acc / acc_out exist is a template flag. In place is safe:
// each thread loads its inputs before it stores the same indices.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "guided_stage.h"

namespace medshift {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;

template <class T>
struct Conv;
template <>
struct Conv<float> {
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};
template <>
struct Conv<__half> {
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Conv<__nv_bfloat16> {
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

template <class T, int kVec>
struct alignas(16) Pack {
  T v[kVec];
};

template <class T, bool kUncond, bool kAcc, bool kWriteAcc>
__device__ __forceinline__ void stage_one(const T* x, const T* vc, const T* vu, const T* acc, T* xo,
                                          T* ao, int64_t i, float w, float h, float c) {
  const float xi = Conv<T>::load(x[i]);
  float k = Conv<T>::load(vc[i]);
  if (kUncond) {
    const float vui = Conv<T>::load(vu[i]);
    k = vui + w * (k - vui);
  }
  const float base = kAcc ? Conv<T>::load(acc[i]) : xi;
  xo[i] = Conv<T>::store(xi + h * k);
  if (kWriteAcc) ao[i] = Conv<T>::store(base + c * k);
}

// Vector body over packs [0, n_pack) plus a scalar tail over elements [n_pack * kVec, n).
template <class T, int kVec, bool kUncond, bool kAcc, bool kWriteAcc>
__global__ void __launch_bounds__(kThreads)
    stage_kernel(const T* x, const T* vc, const T* vu, const T* acc, T* xo, T* ao, int64_t n,
                 int64_t n_pack, float w, float h, float c) {
  using P = Pack<T, kVec>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t p = tid; p < n_pack; p += stride) {
    const P px = reinterpret_cast<const P*>(x)[p];
    const P pvc = reinterpret_cast<const P*>(vc)[p];
    P pvu, pacc, pxo, pao;
    if (kUncond) pvu = reinterpret_cast<const P*>(vu)[p];
    if (kAcc) pacc = reinterpret_cast<const P*>(acc)[p];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float xi = Conv<T>::load(px.v[j]);
      float k = Conv<T>::load(pvc.v[j]);
      if (kUncond) {
        const float vui = Conv<T>::load(pvu.v[j]);
        k = vui + w * (k - vui);
      }
      const float base = kAcc ? Conv<T>::load(pacc.v[j]) : xi;
      pxo.v[j] = Conv<T>::store(xi + h * k);
      if (kWriteAcc) pao.v[j] = Conv<T>::store(base + c * k);
    }
    reinterpret_cast<P*>(xo)[p] = pxo;
    if (kWriteAcc) reinterpret_cast<P*>(ao)[p] = pao;
  }
  for (int64_t i = n_pack * kVec + tid; i < n; i += stride)
    stage_one<T, kUncond, kAcc, kWriteAcc>(x, vc, vu, acc, xo, ao, i, w, h, c);
}

// SM count of the current device, cached per device (queried once, before any graph capture
// in practice: the first call of a sampler is its warm-up).
int sm_count() {
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return 132;
  if (cache[dev] == 0) {
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0)
      sms = 132;
    cache[dev] = sms;  // benign race: every writer stores the same value
  }
  return cache[dev];
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T, bool kUncond, bool kAcc, bool kWriteAcc>
int launch(int64_t n, const void* x, const void* vc, const void* vu, const void* acc, float w,
           float h, float c, void* xo, void* ao, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = aligned16(x) && aligned16(vc) && aligned16(vu) && aligned16(acc) &&
                   aligned16(xo) && aligned16(ao);
  const int64_t n_pack = vec ? n / kVec : 0;
  const int64_t work = vec ? n_pack + (n - n_pack * kVec) : n;
  const int64_t want = (work + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(sm_count()) * kBlocksPerSm;
  const int blocks = static_cast<int>(want < cap ? (want > 0 ? want : 1) : cap);
  stage_kernel<T, kVec, kUncond, kAcc, kWriteAcc><<<blocks, kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(vc), static_cast<const T*>(vu),
      static_cast<const T*>(acc), static_cast<T*>(xo), static_cast<T*>(ao), n, n_pack, w, h, c);
  return static_cast<int>(cudaGetLastError());
}

template <class T>
int dispatch(int64_t n, const void* x, const void* vc, const void* vu, const void* acc, float w,
             float h, float c, void* xo, void* ao, cudaStream_t s) {
  const bool u = vu != nullptr, a = acc != nullptr, wa = ao != nullptr;
  if (!wa) acc = nullptr;  // never read without acc_out
  if (u) {
    if (wa && a) return launch<T, true, true, true>(n, x, vc, vu, acc, w, h, c, xo, ao, s);
    if (wa) return launch<T, true, false, true>(n, x, vc, vu, acc, w, h, c, xo, ao, s);
    return launch<T, true, false, false>(n, x, vc, vu, acc, w, h, c, xo, ao, s);
  }
  if (wa && a) return launch<T, false, true, true>(n, x, vc, vu, acc, w, h, c, xo, ao, s);
  if (wa) return launch<T, false, false, true>(n, x, vc, vu, acc, w, h, c, xo, ao, s);
  return launch<T, false, false, false>(n, x, vc, vu, acc, w, h, c, xo, ao, s);
}

}  // namespace

int guided_stage_cuda(StageDType dtype, int64_t n, const void* x, const void* v_cond,
                      const void* v_uncond, const void* acc, float w, float h, float c,
                      void* x_out, void* acc_out, void* stream) {
  if (n <= 0) return static_cast<int>(cudaSuccess);
  if (x == nullptr || v_cond == nullptr || x_out == nullptr)
    return static_cast<int>(cudaErrorInvalidValue);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case StageDType::kFloat32:
      return dispatch<float>(n, x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out, s);
    case StageDType::kFloat16:
      return dispatch<__half>(n, x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out, s);
    case StageDType::kBFloat16:
      return dispatch<__nv_bfloat16>(n, x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);  // unknown dtype
}

}  // namespace medshift
