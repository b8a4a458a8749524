"""Build medshift_fast and, where it can, the optional extension ``medshift_fast._C``.

MEDSHIFT_FAST_BUILD_EXT=auto (default) builds the C++ CPU extension when a compiler is present and
the CUDA extension when torch is a CUDA build and nvcc is found; ``0`` skips the extension; ``1``
makes a failed extension build an error. torch is imported here, so build with
``pip install --no-build-isolation -e .`` (torch stays out of [build-system].requires).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
MODE = os.environ.get("MEDSHIFT_FAST_BUILD_EXT", "auto").lower()
if MODE not in ("auto", "0", "1"):
    sys.exit(f"MEDSHIFT_FAST_BUILD_EXT must be auto, 0 or 1, not {MODE!r}")


def _find_cuda_home() -> str | None:
    """Return the CUDA toolkit root, resolving the two-line nvcc wrapper used on these machines."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    real = os.path.realpath(nvcc)
    try:
        with open(real, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(b"#!"):  # a wrapper script: find the real nvcc path inside it
            for tok in head.decode(errors="ignore").split():
                if tok.endswith("/bin/nvcc") and os.path.exists(tok):
                    real = tok
                    break
    except OSError:
        return None
    home = os.path.dirname(os.path.dirname(real))
    if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
        return home
    return None


def _sources_digest() -> str | None:
    """The digest medshift_fast._backend.sources_digest compares at run time (one definition)."""
    sys.path.insert(0, ROOT)
    try:
        from medshift_fast._backend import sources_digest
    finally:
        sys.path.pop(0)
    return sources_digest(ROOT)


def _record(info: dict, build_lib: str | None = None) -> None:
    """Write medshift_fast/_C_build.json (read by `medshift env`), in the tree and the build."""
    import json

    info = {"sources_sha256": _sources_digest(), **info}
    for base in filter(None, (ROOT, build_lib)):
        d = os.path.join(base, "medshift_fast")
        if os.path.isdir(d):
            with open(os.path.join(d, "_C_build.json"), "w") as fh:
                json.dump(info, fh, indent=1)


def _loud(msg: str) -> None:
    # pip shows a build's output only with -v; the Makefile prints `medshift env`'s line too
    print(f"\n*** medshift_fast: {msg} ***\n", file=sys.stderr, flush=True)


def _ext_modules():
    if MODE == "0":
        _record({"skipped": True, "error": "MEDSHIFT_FAST_BUILD_EXT=0"})
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if MODE == "1":
            raise
        _loud("torch not importable, the C++ extension is not built")
        _record({"error": "torch was not importable at build time"})
        return [], {}

    srcs = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/torch/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # torch >= 2.14 headers need C++20; older ones build with C++17.
    tv = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    std = "-std=c++20" if tv >= (2, 14) else "-std=c++17"
    cxx = ["-O3", "-g0", std, "-fopenmp"]
    march = os.environ.get("MEDSHIFT_FAST_MARCH", "native")  # built on the machine that runs it
    if march and march != "none":
        cxx.append(f"-march={march}")
    define = []
    extra_link = ["-fopenmp"]
    use_cuda = False
    if torch.version.cuda is not None:
        cuda_home = _find_cuda_home()
        if cuda_home is not None:
            os.environ.setdefault("CUDA_HOME", cuda_home)
            cpp_extension.CUDA_HOME = cuda_home
            use_cuda = True
            if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
                os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    if use_cuda:
        srcs += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        define.append(("MEDSHIFT_WITH_CUDA", "1"))
        ext = cpp_extension.CUDAExtension(
            "medshift_fast._C",
            srcs,
            include_dirs=include_dirs,
            define_macros=define,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", std, "--use_fast_math",
                                                   "-DMEDSHIFT_WITH_CUDA=1"]},
            extra_link_args=extra_link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "medshift_fast._C",
            srcs,
            include_dirs=include_dirs,
            define_macros=define,
            extra_compile_args={"cxx": cxx},
            extra_link_args=extra_link,
        )

    class BuildExt(cpp_extension.BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # optional extension: never block the pure-Python install
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
                _record({"error": f"the build failed ({reason})", "cuda": use_cuda},
                        self.build_lib)
                if MODE == "1":
                    raise
                _loud(f"C++ extension build FAILED ({reason}); the package works without it "
                      "(pure-PyTorch reference ops, slower); `medshift env` shows this")
                return
            _record({"error": None, "cuda": use_cuda}, self.build_lib)

    return [ext], {"build_ext": BuildExt.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _ext_modules()

setup(
    packages=[
        "medshift_fast",
        "medshift_fast.ops",
        "medshift_fast.flow",
        "medshift_fast.models",
        "medshift_fast.data",
        "medshift_fast.train",
        "medshift_fast.eval",
        "medshift_fast.export",
        "medshift_fast.cli",
        "medshift_fast.kernels",
    ],
    package_dir={"medshift_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
