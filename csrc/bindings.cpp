// Thin Python module for medshift_fast._C. Ops register themselves with torch.library in their
// own binding files (csrc/torch/<op>.cpp, csrc/cuda/<op>_binding.cpp) via TORCH_LIBRARY_FRAGMENT;
// this file only defines the library namespace and the capability probes.
#include <torch/extension.h>

TORCH_LIBRARY(medshift_fast, m) {}

static bool with_cuda() {
#ifdef MEDSHIFT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "medshift_fast compiled ops (registered under torch.ops.medshift_fast)";
  m.def("with_cuda", &with_cuda, "True when the extension was built with CUDA kernels");
}
