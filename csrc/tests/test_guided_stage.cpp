// C++ unit test of the torch-free guided-stage core (csrc/cpu/guided_stage.cpp): conversions,
// every variant (with/without v_uncond, acc, acc_out), odd sizes, three dtypes, in-place calls.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "guided_stage.h"

using namespace medshift;

static int g_failures = 0;

#define EXPECT(cond, ...)                              \
  do {                                                 \
    if (!(cond)) {                                     \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
      if (++g_failures > 20) std::exit(1);             \
    }                                                  \
  } while (0)

static void test_half_conversions() {
  // Every binary16 pattern survives half -> float -> half (NaNs stay NaNs).
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    const float f = half_to_float(h);
    const bool is_nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    if (is_nan) {
      EXPECT(std::isnan(f) && std::isnan(half_to_float(float_to_half(f))), "nan 0x%04x", b);
    } else {
      EXPECT(float_to_half(f) == h, "roundtrip 0x%04x -> %g -> 0x%04x", b, f, float_to_half(f));
    }
  }
  // Ties between neighbouring finite halves round to the even one; just above rounds up.
  for (uint32_t b = 0; b < 0x7bffu; ++b) {
    const double lo = half_to_float(static_cast<uint16_t>(b));
    const double hi = half_to_float(static_cast<uint16_t>(b + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact in fp32
    const uint16_t even = (b & 1u) ? static_cast<uint16_t>(b + 1) : static_cast<uint16_t>(b);
    EXPECT(float_to_half(mid) == even, "tie 0x%04x", b);
    EXPECT(float_to_half(-mid) == (even | 0x8000u), "negative tie 0x%04x", b);
    EXPECT(float_to_half(std::nextafter(mid, 1e9f)) == b + 1, "above tie 0x%04x", b);
  }
  EXPECT(float_to_half(1.0f) == 0x3c00u, "1.0");
  EXPECT(float_to_half(65504.0f) == 0x7bffu, "max half");
  EXPECT(float_to_half(65520.0f) == 0x7c00u, "overflow rounds to inf");
  EXPECT(float_to_half(INFINITY) == 0x7c00u, "inf");
  EXPECT(float_to_half(-INFINITY) == 0xfc00u, "-inf");
  EXPECT((float_to_half(NAN) & 0x7fffu) > 0x7c00u, "nan");
  EXPECT(float_to_half(1e-10f) == 0u, "underflow to zero");
  EXPECT(float_to_half(-0.0f) == 0x8000u, "-0");
}

static void test_bf16_conversions() {
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const uint16_t v = static_cast<uint16_t>(b);
    const float f = bf16_to_float(v);
    if (std::isnan(f)) {
      EXPECT(std::isnan(bf16_to_float(float_to_bf16(f))), "bf16 nan 0x%04x", b);
    } else {
      EXPECT(float_to_bf16(f) == v, "bf16 roundtrip 0x%04x", b);
    }
  }
  EXPECT(float_to_bf16(1.0f) == 0x3f80u, "bf16 1.0");
  EXPECT(float_to_bf16(bits_to_float(0x3f808000u)) == 0x3f80u, "bf16 tie to even (down)");
  EXPECT(float_to_bf16(bits_to_float(0x3f818000u)) == 0x3f82u, "bf16 tie to even (up)");
  EXPECT(float_to_bf16(bits_to_float(0x3f808001u)) == 0x3f81u, "bf16 above tie");
  EXPECT((float_to_bf16(NAN) & 0x7fffu) > 0x7f80u, "bf16 nan");
}

// ------------------------------------------------------------------------------ stage variants
template <class S>
static S to_storage(StageDType dt, float f) {
  if (dt == StageDType::kFloat16) return static_cast<S>(float_to_half(f));
  if (dt == StageDType::kBFloat16) return static_cast<S>(float_to_bf16(f));
  return static_cast<S>(f);
}

template <class S>
static float from_storage(StageDType dt, S s) {
  if (dt == StageDType::kFloat16) return half_to_float(static_cast<uint16_t>(s));
  if (dt == StageDType::kBFloat16) return bf16_to_float(static_cast<uint16_t>(s));
  return static_cast<float>(s);
}

template <class S>
static void check_stage(StageDType dt, int64_t n, bool uncond, bool acc, bool write_acc,
                        bool in_place, int threads) {
  const float w = 2.5f, h = -0.0625f, c = 1.0f / 3.0f;
  std::vector<S> x(n), vc(n), vu(n), a(n), xo(n), ao(n);
  unsigned state = 12345u + static_cast<unsigned>(n);
  auto rnd = [&state]() {
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(state >> 8) / static_cast<float>(1u << 24) * 4.0f - 2.0f;
  };
  for (int64_t i = 0; i < n; ++i) {
    x[i] = to_storage<S>(dt, rnd());
    vc[i] = to_storage<S>(dt, rnd());
    vu[i] = to_storage<S>(dt, rnd());
    a[i] = to_storage<S>(dt, rnd());
  }
  const std::vector<S> x0 = x, a0 = a;
  S* xo_ptr = in_place ? x.data() : xo.data();
  S* ao_ptr = write_acc ? (in_place && acc ? a.data() : ao.data()) : nullptr;
  const int rc = guided_stage_cpu(dt, n, x.data(), vc.data(), uncond ? vu.data() : nullptr,
                                  acc ? a.data() : nullptr, w, h, c, xo_ptr, ao_ptr, threads);
  EXPECT(rc == kStageOk, "status %d", rc);
  const double tol = dt == StageDType::kFloat32 ? 1e-5 : (dt == StageDType::kFloat16 ? 2e-3 : 1e-2);
  for (int64_t i = 0; i < n; ++i) {
    const double xi = from_storage(dt, x0[i]), vci = from_storage(dt, vc[i]);
    const double vui = from_storage(dt, vu[i]);
    const double k = uncond ? vui + w * (vci - vui) : vci;
    const double want_x = xi + h * k;
    const double got_x = from_storage(dt, xo_ptr[i]);
    EXPECT(std::fabs(got_x - want_x) <= tol * (1.0 + std::fabs(want_x)),
           "x dt=%d n=%lld i=%lld got %g want %g", static_cast<int>(dt),
           static_cast<long long>(n), static_cast<long long>(i), got_x, want_x);
    if (write_acc) {
      const double base = acc ? from_storage(dt, a0[i]) : xi;
      const double want_a = base + c * k;
      const double got_a = from_storage(dt, ao_ptr[i]);
      EXPECT(std::fabs(got_a - want_a) <= tol * (1.0 + std::fabs(want_a)),
             "acc dt=%d n=%lld i=%lld got %g want %g", static_cast<int>(dt),
             static_cast<long long>(n), static_cast<long long>(i), got_a, want_a);
    }
  }
}

static void test_stage() {
  // Odd sizes, including ones above the parallel grain (split across threads, ragged last slice).
  const int64_t sizes[] = {1, 7, 33 * 65, 65537, 3 * 40009};
  for (int64_t n : sizes)
    for (int mask = 0; mask < 16; ++mask) {
      const bool uncond = mask & 1, acc = mask & 2, write_acc = mask & 4, in_place = mask & 8;
      for (int threads : {1, 3}) {
        check_stage<float>(StageDType::kFloat32, n, uncond, acc, write_acc, in_place, threads);
        check_stage<uint16_t>(StageDType::kFloat16, n, uncond, acc, write_acc, in_place, threads);
        check_stage<uint16_t>(StageDType::kBFloat16, n, uncond, acc, write_acc, in_place, threads);
      }
    }
  // Bad arguments are reported, never crash.
  float one = 1.0f;
  EXPECT(guided_stage_cpu(static_cast<StageDType>(7), 1, &one, &one, nullptr, nullptr, 1, 1, 1,
                          &one, nullptr) == kStageBadDType,
         "bad dtype");
  EXPECT(guided_stage_cpu(StageDType::kFloat32, 1, nullptr, &one, nullptr, nullptr, 1, 1, 1, &one,
                          nullptr) == kStageNullPointer,
         "null x");
  EXPECT(guided_stage_cpu(StageDType::kFloat32, 0, nullptr, nullptr, nullptr, nullptr, 1, 1, 1,
                          nullptr, nullptr) == kStageOk,
         "empty");
}

int main() {
  test_half_conversions();
  test_bf16_conversions();
  test_stage();
  if (g_failures) {
    std::printf("test_guided_stage: %d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("test_guided_stage: OK\n");
  return 0;
}
