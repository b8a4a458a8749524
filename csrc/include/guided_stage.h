// Fused classifier-free-guidance combine + ODE solver-stage update, torch-free.
//
//   k       = v_uncond + w (v_cond - v_uncond)      (k = v_cond when v_uncond is null)
//   x_out   = x + h k
//   acc_out = (acc if non-null else x) + c k       (only when acc_out is non-null)
//
// Every fixed-step solver (euler, heun, midpoint, rk4) is a sequence of such stages. All arrays
// hold n contiguous elements of one dtype; arithmetic is fp32. One read of each input and one
// write of each output. In-place use is allowed: x_out may be x (or v_cond / v_uncond) and
// acc_out may be acc or x, as long as aliasing arrays start at the same address (partial overlap
// is undefined).
#pragma once

#include <cstdint>
#include <cstring>

namespace medshift {

// Element type of all arrays of one call. Values match medshift_fast/ops/ode.py.
enum class StageDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Status codes of the entry points (0 = success).
enum StageStatus : int { kStageOk = 0, kStageBadDType = 1, kStageNullPointer = 2 };

// CPU entry point (OpenMP across num_threads threads; <= 0 means the OpenMP default; small n runs
// on the calling thread).
int guided_stage_cpu(StageDType dtype, int64_t n, const void* x, const void* v_cond,
                     const void* v_uncond, const void* acc, float w, float h, float c,
                     void* x_out, void* acc_out, int num_threads = 0);

// CUDA entry point (csrc/cuda/guided_stage.cu): device pointers, launched on `stream`
// (a cudaStream_t passed as void* so this header needs no CUDA headers). Returns a cudaError_t
// value cast to int: 0 = cudaSuccess, cudaErrorInvalidValue for null pointers or an unknown dtype,
// else the launch error.
int guided_stage_cuda(StageDType dtype, int64_t n, const void* x, const void* v_cond,
                      const void* v_uncond, const void* acc, float w, float h, float c,
                      void* x_out, void* acc_out, void* stream);

// ------------------------------------------------------------------ half-precision conversions
// Bit-manipulation conversions (round to nearest even), branch-light so loops vectorise.
inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t nan = ((u >> 16) | 0x40u) & 0xffffu;  // quiet NaN, sign and payload kept
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// IEEE binary16 -> binary32 (exact; subnormals, inf and NaN included).
inline float half_to_float(uint16_t hv) {
  const uint32_t sign = static_cast<uint32_t>(hv & 0x8000u) << 16;
  const uint32_t em = static_cast<uint32_t>(hv & 0x7fffu) << 13;  // exponent + mantissa
  const uint32_t exp = em & 0x0f800000u;
  const uint32_t normal = em + ((127u - 15u) << 23);
  const uint32_t infnan = normal + ((128u - 16u) << 23);
  // Subnormal or zero: renormalise through one float subtraction of the magic 2^-14.
  const uint32_t sub = float_to_bits(bits_to_float(normal + (1u << 23)) - bits_to_float(113u << 23));
  const uint32_t mag = exp == 0x0f800000u ? infnan : (exp == 0 ? sub : normal);
  return bits_to_float(mag | sign);
}

// IEEE binary32 -> binary16, round to nearest even (overflow -> inf, NaN -> quiet NaN).
inline uint16_t float_to_half(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = (u & 0x80000000u) >> 16;
  u &= 0x7fffffffu;
  // Inf/NaN or too large: all exponent bits set.
  const uint32_t big = u > (255u << 23) ? 0x7e00u : 0x7c00u;
  // Subnormal result: a magic addition aligns the 10 mantissa bits (float add rounds to even).
  const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t sub = float_to_bits(bits_to_float(u) + bits_to_float(denorm_magic)) - denorm_magic;
  // Normal result: rebias the exponent and round to nearest even on bit 13.
  const uint32_t norm = (u + ((15u - 127u) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
  const uint32_t mag = u >= ((127u + 16u) << 23) ? big : (u < (113u << 23) ? sub : norm);
  return static_cast<uint16_t>(mag | sign);
}

}  // namespace medshift
