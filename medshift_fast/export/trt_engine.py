"""TensorRT: build a serialized engine (plan) from the ONNX graph, and run it.

UNTESTED HERE: TensorRT cannot be installed on the machines this project is developed on (the
PyPI ``tensorrt`` packages only fetch the real wheel from a vendor index that is unreachable).
The code follows the TensorRT 10 Python API (``OnnxParser`` -> ``build_serialized_network``;
``execute_async_v3`` with named tensor addresses) and falls back to the TensorRT 8.x spelling of
the few calls that changed; treat it as a starting point that must be verified on a machine with
TensorRT before a scanner relies on it.

Precision: the network is built with the fp16 (or bf16) builder flag; layers that must stay fp32
are pinned with ``layer.precision`` / ``set_output_type`` under
``OBEY_PRECISION_CONSTRAINTS``: normalisation layers (GroupNorm arrives as
InstanceNormalization, a TensorRT NORMALIZATION layer, plus any reduce/sqrt/pow of a decomposed
norm) and every layer of the solver arithmetic, guidance combine and pre/post-processing (the
ONNX nodes the composer names ``ms/...``), so the ODE state is updated in fp32 as in eager
PyTorch. The U-Net's convolutions, GEMMs and attention run in fp16. A latent-mode run's
autoencoder (spliced in as ``ms/ae_encode/...`` and ``ms/ae_decode/...``) stays fp32 by the same
rule, as in the eager reference (``graphs.LatentCodec``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MedShiftError

_MISSING = ("TensorRT is not installed (import tensorrt failed): install NVIDIA TensorRT for your "
            "CUDA version, or export --format onnx / aoti instead. The TensorRT path of "
            "medshift_fast is untested here (TensorRT cannot be installed on its development "
            "machines).")


def import_tensorrt():
    """``import tensorrt`` or MedShiftError saying it is missing (and untested here)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MedShiftError(_MISSING) from exc
    return trt


def _keep_fp32(trt, layer) -> bool:
    """Normalisation and the composer's own (solver / guidance / io) layers stay in fp32."""
    name = (layer.name or "").lower()
    if name.startswith("ms/") or "/ms/" in name or "norm" in name:
        return True
    lt = layer.type
    if lt in (trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE):
        return True
    if lt == trt.LayerType.UNARY:
        layer.__class__ = trt.IUnaryLayer
        return layer.op == trt.UnaryOperation.SQRT
    if lt == trt.LayerType.ELEMENTWISE:
        layer.__class__ = trt.IElementWiseLayer
        return layer.op == trt.ElementWiseOperation.POW
    return False


def build_plan(onnx_path: str | Path, plan_path: str | Path, precision: str = "fp16",
               opt_batch: int = 1, max_batch: int | None = None,
               workspace_bytes: int = 4 << 30) -> dict:
    """Parse ``onnx_path`` and write a serialized TensorRT engine to ``plan_path``.

    Args:
        onnx_path: fp32 ONNX graph with a dynamic batch dimension (from ``export_onnx``).
        plan_path: destination of the serialized engine.
        precision: fp16 | bf16 | fp32 (the builder flag; normalisation stays fp32).
        opt_batch: batch TensorRT tunes for.
        max_batch: largest batch the engine accepts (default opt_batch).
        workspace_bytes: builder workspace limit.

    Returns:
        {"tensorrt_version": ..., "min_batch": 1, "opt_batch": n, "max_batch": m,
         "fp32_layers": count}.
    """
    trt = import_tensorrt()
    max_batch = int(max_batch or opt_batch)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8.x (no-op in 10)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MedShiftError(f"TensorRT could not parse {onnx_path}: {errs}")

    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    else:  # pragma: no cover - TensorRT < 8.4
        config.max_workspace_size = int(workspace_bytes)
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            raise MedShiftError("this GPU has no fast fp16; build with --dtype fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        if not hasattr(trt.BuilderFlag, "BF16"):
            raise MedShiftError("this TensorRT has no bf16 support (needs TensorRT >= 9)")
        config.set_flag(trt.BuilderFlag.BF16)
    elif precision != "fp32":
        raise MedShiftError(f"unknown TensorRT precision {precision!r}; choose fp16, bf16, fp32")
    pinned = 0
    if precision != "fp32":
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        floats = {trt.float32, trt.float16}
        if hasattr(trt, "bfloat16"):
            floats.add(trt.bfloat16)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            outs = [layer.get_output(j) for j in range(layer.num_outputs)]
            # only floating layers: shape arithmetic and labels (int64) keep their types
            if outs and all(o.dtype in floats for o in outs) and _keep_fp32(trt, layer):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                pinned += 1

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        rest = tuple(inp.shape)[1:]
        if any(d < 0 for d in rest):
            raise MedShiftError(f"ONNX input {inp.name} has dynamic non-batch dims {inp.shape}")
        profile.set_shape(inp.name, (1, *rest), (int(opt_batch), *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise MedShiftError("TensorRT failed to build the engine (see the TensorRT log above)")
    Path(plan_path).write_bytes(bytes(plan))
    return {"tensorrt_version": trt.__version__, "min_batch": 1, "opt_batch": int(opt_batch),
            "max_batch": max_batch, "fp32_layers": pinned}


class TensorRTRunner:
    """Deserialise a plan and run it on CUDA torch tensors (named I/O, TensorRT 10 API)."""

    def __init__(self, path: str | Path, meta: dict) -> None:
        import torch

        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise MedShiftError("a TensorRT engine needs a CUDA GPU; none is visible")
        built = meta.get("tensorrt_version")
        if built and built != trt.__version__:
            raise MedShiftError(f"engine {path} was built by TensorRT {built}, this is "
                                f"{trt.__version__}; rebuild it with `medshift export`")
        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise MedShiftError(f"TensorRT could not deserialize {path} (corrupted, or built for "
                                "another GPU / TensorRT version); rebuild it")
        self.context = self.engine.create_execution_context()
        self.max_batch = int(meta.get("max_batch") or meta.get("settings", {}).get("batch", 1))

    def _dtype(self, name: str):
        trt, torch = self.trt, self.torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                 trt.int8: torch.int8, trt.bool: torch.bool}
        for attr, tdt in (("int64", torch.int64), ("uint8", torch.uint8),
                          ("bfloat16", torch.bfloat16)):
            if hasattr(trt, attr):
                table[getattr(trt, attr)] = tdt
        dt = self.engine.get_tensor_dtype(name)
        if dt not in table:
            raise MedShiftError(f"engine tensor {name} has a dtype ({dt}) this runner cannot feed")
        return table[dt]

    def __call__(self, feeds: dict, output: str):
        torch = self.torch
        b = next(iter(feeds.values())).shape[0]
        if b > self.max_batch:
            raise MedShiftError(f"batch {b} exceeds this engine's maximum {self.max_batch}; "
                                "split it or rebuild with a larger --batch")
        dev = torch.device("cuda")
        keep = []
        for name, t in feeds.items():
            t = t.to(dev, self._dtype(name)).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape(output)), dtype=self._dtype(output),
                          device=dev)
        self.context.set_tensor_address(output, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise MedShiftError("TensorRT execution failed (see the TensorRT log)")
        stream.synchronize()
        return out
