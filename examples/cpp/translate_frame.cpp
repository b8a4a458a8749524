// Scanner-side integration of a medshift_fast translator: load an AOTInductor package (.pt2)
// exported with
//
//   medshift export --checkpoint RUN --format aoti --what translate --io uint16 \
//                   --source synthetic_low --target real_normal --out translator.pt2
//
// and translate one raw 16-bit frame (little-endian uint16, row-major, HEIGHT x WIDTH; the frame
// must have the package's size: resizing/cropping is the integrator's choice and is not done
// here). The package holds the whole pipeline: uint16 -> [-1, 1], encode + decode with the
// fixed settings, clamp, [-1, 1] -> uint16. No Python is needed at run time.
//
//   translate_frame translator.pt2 in.raw out.raw WIDTH HEIGHT [REPEATS]
//
// Exit status: 0 ok, 2 bad arguments / files / package, 1 unexpected failure.

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

int fail(const std::string& msg) {
  std::cerr << "translate_frame: error: " << msg << "\n";
  return 2;
}

std::string meta_get(const std::unordered_map<std::string, std::string>& meta,
                     const std::string& key) {
  auto it = meta.find(key);
  return it == meta.end() ? std::string() : it->second;
}

bool read_raw(const std::string& path, std::vector<uint16_t>& buf, int64_t n, std::string& err) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) {
    err = "cannot open input frame " + path;
    return false;
  }
  const auto bytes = static_cast<int64_t>(f.tellg());
  if (bytes != n * 2) {
    err = "input frame " + path + " has " + std::to_string(bytes) + " bytes, expected " +
          std::to_string(n * 2) + " (WIDTH x HEIGHT x 2, uint16)";
    return false;
  }
  buf.resize(static_cast<size_t>(n));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(buf.data()), bytes);
  return static_cast<bool>(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6 || argc > 7) {
    std::cerr << "usage: translate_frame PACKAGE.pt2 IN.raw OUT.raw WIDTH HEIGHT [REPEATS]\n";
    return 2;
  }
  const std::string package = argv[1], in_path = argv[2], out_path = argv[3];
  int64_t width = 0, height = 0, repeats = 1;
  try {
    width = std::stoll(argv[4]);
    height = std::stoll(argv[5]);
    if (argc == 7) repeats = std::stoll(argv[6]);
  } catch (const std::exception&) {
    return fail("WIDTH, HEIGHT and REPEATS must be integers");
  }
  if (width <= 0 || height <= 0 || repeats <= 0) return fail("WIDTH, HEIGHT, REPEATS must be > 0");

  try {
    torch::inductor::AOTIModelPackageLoader loader(package);
    const auto meta = loader.get_metadata();
    // medshift_fast writes these keys into every package it exports (aot_inductor.metadata).
    if (meta_get(meta, "medshift.format") != "medshift_fast-engine")
      return fail(package + " is not a medshift_fast package; re-export it with `medshift export`");
    if (meta_get(meta, "medshift.what") != "translate" || meta_get(meta, "medshift.io") != "uint16")
      return fail(package + " is not a uint16 translate package (what=" +
                  meta_get(meta, "medshift.what") + ", io=" + meta_get(meta, "medshift.io") +
                  "); export with --what translate --io uint16");
    const int64_t size = std::stoll(meta_get(meta, "medshift.size"));
    const int64_t channels = std::stoll(meta_get(meta, "medshift.in_channels"));
    if (channels != 1) return fail("this example handles single-channel packages only");
    if (width != size || height != size)
      return fail("frame is " + std::to_string(width) + "x" + std::to_string(height) +
                  " but the package translates " + std::to_string(size) + "x" +
                  std::to_string(size) + " frames; resize/crop first or export with --size");

    std::vector<uint16_t> buf;
    std::string err;
    if (!read_raw(in_path, buf, width * height, err)) return fail(err);

    const bool cuda = meta_get(meta, "AOTI_DEVICE_KEY") == "cuda";
    at::Tensor frame = at::from_blob(buf.data(), {1, 1, height, width}, at::kUInt16);
    frame = cuda ? frame.to(at::Device(at::kCUDA)) : frame.clone();

    std::vector<at::Tensor> out;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < repeats; ++r) out = loader.run({frame});
    const auto t1 = std::chrono::steady_clock::now();
    if (out.size() != 1 || out[0].scalar_type() != at::kUInt16 || out[0].numel() != width * height)
      return fail("package returned an unexpected output (expected one uint16 frame)");
    at::Tensor result = out[0].to(at::kCPU).contiguous();

    std::ofstream f(out_path, std::ios::binary);
    if (!f) return fail("cannot write " + out_path);
    f.write(reinterpret_cast<const char*>(result.data_ptr()), result.numel() * 2);
    if (!f) return fail("failed writing " + out_path);
    const double ms =
        std::chrono::duration<double, std::milli>(t1 - t0).count() / static_cast<double>(repeats);
    std::printf("translated %lldx%lld frame on %s in %.2f ms/frame -> %s\n",
                static_cast<long long>(width), static_cast<long long>(height),
                cuda ? "cuda" : "cpu", ms, out_path.c_str());
    return 0;
  } catch (const c10::Error& e) {
    return fail(std::string("libtorch could not load or run ") + package + ": " +
                e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::cerr << "translate_frame: unexpected failure: " << e.what() << "\n";
    return 1;
  }
}
