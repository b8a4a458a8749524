"""ONNX export: the U-Net once through ``torch.onnx.export``, the pipeline composed around it.

Tracing an unrolled translation through ``torch.onnx.export`` costs time in proportion to the
number of U-Net evaluations (a 20-step heun translation holds 80 of them), so instead the U-Net
core v = UNet(x, t, y) is exported ONCE (dynamic batch), and the ``step`` / ``translate`` graphs
are built around it with ``onnx.helper``: every U-Net evaluation is a renamed copy of the core's
nodes that shares the core's initializers (the weights are stored once), and the guidance
combine, solver stages, pre- and post-processing are plain ONNX ops that mirror
``TranslateModule`` / ``StepModule`` (graphs.py) operation for operation, so an exported graph
matches eager PyTorch to rounding. The result is one flat graph of standard ops (no functions, no
control flow), which ONNX Runtime and TensorRT's parser both take.

The core is exported with the reference backend (only standard ops) by the dynamo exporter
(``torch.onnx.export(dynamo=True)``); if that fails the TorchScript exporter (``dynamo=False``)
is tried, and the sidecar records which one was used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import use_backend
from ..errors import MedShiftError
from .graphs import ExportSettings, build_module, cast_model, check_model

OPSET = 18
OUTER = "ms"  # prefix of every node/tensor the composer adds (TensorRT keeps these in fp32)


def _onnx():
    try:
        import onnx
        import onnx.inliner  # noqa: F401 (a submodule onnx does not import by itself)
    except ImportError as exc:  # pragma: no cover - onnx is a declared extra
        raise MedShiftError("ONNX export needs the onnx package: pip install "
                            "'medshift_fast[export]'") from exc
    return onnx


class _Core(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, y)


def export_core(model: nn.Module, settings: ExportSettings, exporter: str = "auto"):
    """Export v = UNet(x, t, y) (dynamic batch) in the compute dtype.

    Args:
        model: the U-Net (not modified; a dtype-cast copy is exported).
        settings: export settings (size, dtype).
        exporter: "auto" (dynamo, falling back to TorchScript), "dynamo" or "torchscript".

    Returns:
        (onnx.ModelProto, exporter used). Inputs x (B, C, S, S) in the compute dtype, t (B,)
        float32, y (B,) int64; output v like x.
    """
    onnx = _onnx()
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise MedShiftError(f"unknown ONNX exporter {exporter!r}; choose auto, dynamo or "
                            "torchscript")
    check_model(model, settings)
    core = _Core(cast_model(model, settings)).eval()
    c, s = int(model.in_channels), int(settings.size)
    dev = next(core.parameters()).device
    args = (torch.zeros(2, c, s, s, dtype=settings.torch_dtype, device=dev),
            torch.full((2,), 0.5, device=dev), torch.zeros(2, dtype=torch.long, device=dev))
    names = dict(input_names=["x", "t", "y"], output_names=["v"])
    errors = []
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    for which in order:
        try:
            with use_backend("reference"), torch.no_grad(), _quiet():
                if which == "dynamo":
                    b = torch.export.Dim("batch", min=1, max=65536)
                    prog = torch.onnx.export(
                        core, args, dynamo=True, opset_version=OPSET, verbose=False,
                        dynamic_shapes={"x": {0: b}, "t": {0: b}, "y": {0: b}},
                        optimize=True, external_data=False, **names)
                    proto = prog.model_proto
                else:
                    buf = io.BytesIO()
                    torch.onnx.export(
                        core, args, buf, dynamo=False, opset_version=OPSET,
                        dynamic_axes={k: {0: "batch"} for k in ("x", "t", "y", "v")}, **names)
                    proto = onnx.load_from_string(buf.getvalue())
            proto = onnx.inliner.inline_local_functions(proto)
            return proto, which
        except MedShiftError:
            raise
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the next one
            errors.append(f"{which}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    raise MedShiftError("ONNX export of the U-Net failed (" + "; ".join(errors) + ")")


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, warnings and registry log lines."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


_ONNX_DTYPE = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}  # TensorProto enums


class _Composer:
    """Builds a flat ONNX graph around copies of the exported core."""

    def __init__(self, core, settings: ExportSettings, null_label: int) -> None:
        self.onnx = _onnx()
        self.core = core.graph
        for node in self.core.node:
            if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
                raise MedShiftError(f"the exported U-Net has control flow ({node.op_type}); it "
                                    "cannot be composed - report this")
        self.s = settings
        self.null = int(null_label)
        self.cdt = _ONNX_DTYPE[settings.torch_dtype]  # compute dtype of state and network
        self.nodes: list = []
        self.inits = list(self.core.initializer)
        self.n = 0
        self.calls = 0

    def _name(self, hint: str) -> str:
        self.n += 1
        return f"{OUTER}/{hint}_{self.n}"

    def const(self, value, dtype) -> str:
        import numpy as np

        name = self._name("const")
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs):
        outs = [self._name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(
            op_type, inputs, outs, name=self._name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", [x], to=to)

    def call_core(self, x: str, t: str, y: str) -> str:
        """One U-Net evaluation: a renamed copy of the core's nodes (weights shared)."""
        self.calls += 1
        pre = f"unet{self.calls}/"
        mapping = dict(zip([i.name for i in self.core.input], (x, t, y)))
        shared = {i.name for i in self.core.initializer}
        for node in self.core.node:
            new = self.onnx.NodeProto()
            new.CopyFrom(node)
            new.name = pre + (node.name or node.op_type)
            new.ClearField("input")
            new.input.extend(mapping.get(i, i if (i in shared or not i) else pre + i)
                             for i in node.input)
            new.ClearField("output")
            new.output.extend(pre + o if o else o for o in node.output)
            self.nodes.append(new)
        return pre + self.core.output[0].name

    # ------------------------------------------------------------------ mirrored torch code
    def batch_of(self, x: str) -> str:
        return self.op("Shape", [x], start=0, end=1)  # (1,) int64

    def velocity(self, x: str, t: float, label: int, w: float, b: str) -> tuple[str, str | None]:
        """flow.guidance.make_field: (v_cond, v_uncond) in fp32, one 2B forward when guided."""
        f32 = 1
        if float(w) == 1.0:
            tt = self.op("Expand", [self.const([t], "float32"), b])
            yy = self.op("Expand", [self.const([label], "int64"), b])
            return self.cast(self.call_core(x, tt, yy), f32), None
        b2 = self.op("Mul", [b, self.const([2], "int64")])
        tt = self.op("Expand", [self.const([t], "float32"), b2])
        yy = self.op("Concat", [self.op("Expand", [self.const([label], "int64"), b]),
                                self.op("Expand", [self.const([self.null], "int64"), b])], axis=0)
        v = self.call_core(self.op("Concat", [x, x], axis=0), tt, yy)
        vc, vu = self.op("Split", [v], n_out=2, axis=0, num_outputs=2)
        return self.cast(vc, f32), self.cast(vu, f32)

    def stage(self, x, vc, vu, w, h, acc=None, c=0.0):
        """ops.reference.guided_stage_ref: k = vu + w (vc - vu); x + h k; (acc or x) + c k."""
        k = vc if vu is None else self.op("Add", [vu, self.op("Mul", [
            self.const(w, "float32"), self.op("Sub", [vc, vu])])])
        x_new = self.cast(self.op("Add", [self.cast(x, 1), self.op("Mul", [
            self.const(h, "float32"), k])]), self.cdt)
        acc_new = None
        if acc is not None or c != 0.0:
            base = acc if acc is not None else x
            acc_new = self.cast(self.op("Add", [self.cast(base, 1), self.op("Mul", [
                self.const(c, "float32"), k])]), self.cdt)
        return x_new, acc_new

    def step(self, x, t, dt, label, w, b):
        """flow.solvers._step for one fixed step of size dt from t."""
        solver = self.s.solver

        def field(xx, tt):
            return self.velocity(xx, tt, label, w, b)

        if solver == "euler":
            return self.stage(x, *field(x, t), w, dt)[0]
        if solver == "midpoint":
            xm = self.stage(x, *field(x, t), w, 0.5 * dt)[0]
            return self.stage(x, *field(xm, t + 0.5 * dt), w, dt)[0]
        if solver == "heun":
            xp, acc = self.stage(x, *field(x, t), w, dt, c=0.5 * dt)
            return self.stage(acc, *field(xp, t + dt), w, 0.5 * dt)[0]
        if solver == "rk4":
            xs, acc = self.stage(x, *field(x, t), w, 0.5 * dt, c=dt / 6.0)
            xs, acc = self.stage(x, *field(xs, t + 0.5 * dt), w, 0.5 * dt, acc=acc, c=dt / 3.0)
            xs, acc = self.stage(x, *field(xs, t + 0.5 * dt), w, dt, acc=acc, c=dt / 3.0)
            return self.stage(acc, *field(xs, t + dt), w, dt / 6.0)[0]
        raise MedShiftError(f"solver {solver!r} cannot be exported")  # pragma: no cover

    def integrate(self, x, t0, t1, label, w, b):
        from ..flow.solvers import time_grid

        steps = int(self.s.steps)
        ts = time_grid(t0, t1, steps)
        for k in range(steps):
            x = self.step(x, ts[k], ts[k + 1] - ts[k], label, w, b)
        return x

    # ------------------------------------------------------------------------------ graphs
    def translate_graph(self, c: int):
        """TranslateModule as ONNX: image (B, C, S, S) -> translated (same shape and dtype)."""
        s, helper, tp = self.s, self.onnx.helper, self.onnx.TensorProto
        u16 = s.io == "uint16"
        io_t = tp.UINT16 if u16 else tp.FLOAT
        x = self.cast("image", tp.FLOAT)
        if u16:
            x = self.op("Sub", [self.op("Mul", [x, self.const(2.0 / 65535.0, "float32")]),
                                self.const(1.0, "float32")])
        x = self.cast(x, self.cdt)
        tau = float(s.tau)
        if tau < 1.0:
            b = self.batch_of(x)
            z = self.integrate(x, 1.0, tau, int(s.source), float(s.guidance_encode), b)
            x = self.integrate(z, tau, 1.0, int(s.target), float(s.guidance_decode), b)
        y = self.op("Clip", [self.cast(x, tp.FLOAT), self.const(-1.0, "float32"),
                             self.const(1.0, "float32")])
        if u16:
            y = self.op("Round", [self.op("Mul", [self.op("Add", [y, self.const(
                1.0, "float32")]), self.const(65535.0 / 2.0, "float32")])])
            y = self.cast(y, tp.UINT16)
        self.nodes.append(helper.make_node("Identity", [y], ["translated"],
                                           name=f"{OUTER}/output"))
        shape = ["batch", c, s.size, s.size]
        return ([helper.make_tensor_value_info("image", io_t, shape)],
                [helper.make_tensor_value_info("translated", io_t, shape)])

    def step_graph(self, c: int):
        """StepModule as ONNX: x (B, C, S, S), t (B,), y (B,) -> v (B, C, S, S) float32."""
        s, helper, tp = self.s, self.onnx.helper, self.onnx.TensorProto
        x = self.cast("x", self.cdt)
        w = float(s.guidance)
        if w == 1.0:
            v = self.cast(self.call_core(x, "t", "y"), tp.FLOAT)
        else:
            yn = self.op("Expand", [self.const([self.null], "int64"), self.op("Shape", ["y"])])
            v2 = self.call_core(self.op("Concat", [x, x], axis=0),
                                self.op("Concat", ["t", "t"], axis=0),
                                self.op("Concat", ["y", yn], axis=0))
            vc, vu = self.op("Split", [v2], n_out=2, axis=0, num_outputs=2)
            vc, vu = self.cast(vc, tp.FLOAT), self.cast(vu, tp.FLOAT)
            v = self.op("Add", [vu, self.op("Mul", [self.const(w, "float32"),
                                                    self.op("Sub", [vc, vu])])])
        self.nodes.append(helper.make_node("Identity", [v], ["v"], name=f"{OUTER}/output"))
        shape = ["batch", c, s.size, s.size]
        return ([helper.make_tensor_value_info("x", tp.FLOAT, shape),
                 helper.make_tensor_value_info("t", tp.FLOAT, ["batch"]),
                 helper.make_tensor_value_info("y", tp.INT64, ["batch"])],
                [helper.make_tensor_value_info("v", tp.FLOAT, shape)])

    def model(self, c: int, core_proto, metadata: dict[str, str]):
        inputs, outputs = (self.translate_graph(c) if self.s.what == "translate"
                           else self.step_graph(c))
        helper = self.onnx.helper
        used = {i for n in self.nodes for i in n.input}
        inits = [t for t in self.inits if t.name in used]  # e.g. tau = 1 never calls the U-Net
        graph = helper.make_graph(self.nodes, f"medshift_{self.s.what}", inputs, outputs,
                                  initializer=inits)
        opsets = [o for o in core_proto.opset_import if o.domain not in ("", "ai.onnx")]
        opsets.append(helper.make_opsetid("", OPSET))
        m = helper.make_model(graph, opset_imports=opsets, producer_name="medshift_fast")
        if core_proto.ir_version:  # the exporter's IR version is one its runtimes accept
            m.ir_version = core_proto.ir_version
        helper.set_model_props(m, metadata)
        return m


def compose(core_proto, model: nn.Module, settings: ExportSettings, metadata: dict[str, str]):
    """The ``step`` or ``translate`` ONNX model around an exported core (see module doc)."""
    comp = _Composer(core_proto, settings, int(model.num_classes))
    m = comp.model(int(model.in_channels), core_proto, metadata)
    _onnx().checker.check_model(m, full_check=False)
    return m


def export_onnx(model: nn.Module, settings: ExportSettings, out: str | Path,
                metadata: dict[str, str] | None = None, exporter: str = "auto") -> dict:
    """Write the ONNX graph for ``settings`` to ``out``.

    Returns:
        {"exporter": "dynamo" | "torchscript", "opset": OPSET, "unet_calls": n}.
    """
    onnx = _onnx()
    build_module(model, settings)  # validates settings against the model
    core, which = export_core(model, settings, exporter)
    m = compose(core, model, settings, metadata or {})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if m.ByteSize() >= 2**31 - 1:
        raise MedShiftError("the ONNX graph exceeds 2 GB; use fewer steps or a smaller model")
    onnx.save_model(m, str(out))
    return {"exporter": which, "opset": OPSET, "unet_calls": settings.nfe()}
