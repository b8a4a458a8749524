"""The ONNX composer: flat ``step`` / ``translate`` graphs built around exported cores.

Every U-Net evaluation is a renamed copy of the U-Net core's nodes sharing the core's
initializers; a latent-mode run's autoencoder cores are spliced in once each with their own
initializers, all names under ``ms/ae_encode/`` / ``ms/ae_decode/``. The guidance combine, solver
stages, pre- and post-processing are plain ONNX ops that mirror ``graphs.TranslateModule`` /
``graphs.StepModule`` operation for operation. See ``onnx_export`` for the whole story.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MedShiftError
from ..flow.solvers import run_step, stage_ops, time_grid
from .graphs import ExportSettings, export_codec, io_layout

OPSET = 18
OUTER = "ms"  # prefix of every node/tensor the composer adds (TensorRT keeps these in fp32)
AE_ENCODE = f"{OUTER}/ae_encode/"  # prefix of the spliced autoencoder encoder's names
AE_DECODE = f"{OUTER}/ae_decode/"  # and of the decoder's


def _onnx():
    try:
        import onnx
        import onnx.inliner  # noqa: F401 (a submodule onnx does not import by itself)
    except ImportError as exc:  # pragma: no cover - onnx is a declared extra
        raise MedShiftError("ONNX export needs the onnx package: pip install "
                            "'medshift_fast[export]'") from exc
    return onnx


_ONNX_DTYPE = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}  # TensorProto enums


class _Composer:
    """Builds a flat ONNX graph around copies of the exported core."""

    def __init__(self, core, settings: ExportSettings, null_label: int,
                 codec_cores: tuple | None = None) -> None:
        self.onnx = _onnx()
        self.core = core.graph
        self.codec = None if codec_cores is None else (codec_cores[0].graph,
                                                       codec_cores[1].graph)
        for graph, what in ((self.core, "U-Net"), *zip(self.codec or (), ("encoder", "decoder"))):
            for node in graph.node:
                if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
                    raise MedShiftError(f"the exported {what} has control flow ({node.op_type}); "
                                        "it cannot be composed - report this")
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

    def splice(self, graph, pre: str, args: list[str], share_weights: bool) -> str:
        """Append a renamed copy of ``graph``'s nodes fed by ``args``; returns its output name.

        Every value is renamed ``pre + name``; initializers keep their names and are shared by
        all copies (``share_weights``, the U-Net) or are renamed and added once (the codec).
        """
        inits = {i.name for i in graph.initializer}
        mapping = dict(zip([i.name for i in graph.input if i.name not in inits], args))
        if not share_weights:
            for init in graph.initializer:
                new = self.onnx.TensorProto()
                new.CopyFrom(init)
                new.name = pre + init.name
                self.inits.append(new)
        for node in graph.node:
            new = self.onnx.NodeProto()
            new.CopyFrom(node)
            new.name = pre + (node.name or node.op_type)
            new.ClearField("input")
            new.input.extend(mapping.get(i, i if (not i or (share_weights and i in inits))
                                         else pre + i) for i in node.input)
            new.ClearField("output")
            new.output.extend(pre + o if o else o for o in node.output)
            self.nodes.append(new)
        out = graph.output[0].name
        return mapping.get(out, pre + out)

    def call_core(self, x: str, t: str, y: str) -> str:
        """One U-Net evaluation: a renamed copy of the core's nodes (weights shared)."""
        self.calls += 1
        return self.splice(self.core, f"unet{self.calls}/", [x, t, y], share_weights=True)

    # ------------------------------------------------------------------ mirrored torch code
    def batch_of(self, x: str) -> str:
        return self.op("Shape", [x], start=0, end=1)  # (1,) int64

    def velocity(self, x: str, t: float, label: int, w: float, b: str) -> tuple[str, str | None]:
        """flow.guidance.make_field: (v_cond, v_uncond) in fp32, one 2B forward when guided."""
        f32 = 1
        if float(w) in (0.0, 1.0):  # the conditional (w = 1) or unconditional field: B forward
            tt = self.op("Expand", [self.const([t], "float32"), b])
            lab = label if float(w) == 1.0 else self.null
            yy = self.op("Expand", [self.const([lab], "int64"), b])
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

    def integrate(self, x, t0, t1, label, w, b):
        """flow.solvers.integrate: the solver's stage program (``stage_ops``), step by step."""
        program = stage_ops(self.s.solver)
        steps = int(self.s.steps)
        ts = time_grid(t0, t1, steps)

        def field(xx, tt):
            return self.velocity(xx, tt, label, w, b)

        for k in range(steps):
            x = run_step(program, field, self.stage, x, ts[k], ts[k + 1] - ts[k], w)
        return x

    # ------------------------------------------------------------------------------ graphs
    def translate_graph(self, c: int, size: int):
        """TranslateModule as ONNX: image (B, C, S, S) -> translated (same shape and dtype)."""
        s, helper, tp = self.s, self.onnx.helper, self.onnx.TensorProto
        u16 = s.io == "uint16"
        io_t = tp.UINT16 if u16 else tp.FLOAT
        x = self.cast("image", tp.FLOAT)
        if u16:
            x = self.op("Sub", [self.op("Mul", [x, self.const(2.0 / 65535.0, "float32")]),
                                self.const(1.0, "float32")])
        if self.codec is not None:  # latent mode: fp32 encoder, spliced once
            x = self.splice(self.codec[0], AE_ENCODE, [x], share_weights=False)
        x = self.cast(x, self.cdt)
        tau = float(s.tau)
        if tau < 1.0:
            b = self.batch_of(x)
            z = self.integrate(x, 1.0, tau, int(s.source), float(s.guidance_encode), b)
            x = self.integrate(z, tau, 1.0, int(s.target), float(s.guidance_decode), b)
        x = self.cast(x, tp.FLOAT)
        if self.codec is not None:  # fp32 decoder (clamps), spliced once
            x = self.splice(self.codec[1], AE_DECODE, [x], share_weights=False)
        y = self.op("Clip", [x, self.const(-1.0, "float32"), self.const(1.0, "float32")])
        if u16:
            y = self.op("Round", [self.op("Mul", [self.op("Add", [y, self.const(
                1.0, "float32")]), self.const(65535.0 / 2.0, "float32")])])
            y = self.cast(y, tp.UINT16)
        self.nodes.append(helper.make_node("Identity", [y], ["translated"],
                                           name=f"{OUTER}/output"))
        shape = ["batch", c, size, size]
        return ([helper.make_tensor_value_info("image", io_t, shape)],
                [helper.make_tensor_value_info("translated", io_t, shape)])

    def step_graph(self, c: int, size: int):
        """StepModule as ONNX: x (B, C, S, S), t (B,), y (B,) -> v (B, C, S, S) float32."""
        s, helper, tp = self.s, self.onnx.helper, self.onnx.TensorProto
        x = self.cast("x", self.cdt)
        w = float(s.guidance)
        if w == 1.0:
            v = self.cast(self.call_core(x, "t", "y"), tp.FLOAT)
        elif w == 0.0:  # the unconditional field: a B forward with the null label
            yn = self.op("Expand", [self.const([self.null], "int64"), self.op("Shape", ["y"])])
            v = self.cast(self.call_core(x, "t", yn), tp.FLOAT)
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
        shape = ["batch", c, size, size]
        return ([helper.make_tensor_value_info("x", tp.FLOAT, shape),
                 helper.make_tensor_value_info("t", tp.FLOAT, ["batch"]),
                 helper.make_tensor_value_info("y", tp.INT64, ["batch"])],
                [helper.make_tensor_value_info("v", tp.FLOAT, shape)])

    def model(self, c: int, size: int, protos: list, metadata: dict[str, str]):
        inputs, outputs = (self.translate_graph(c, size) if self.s.what == "translate"
                           else self.step_graph(c, size))
        helper = self.onnx.helper
        used = {i for n in self.nodes for i in n.input}
        inits = [t for t in self.inits if t.name in used]  # e.g. tau = 1 never calls the U-Net
        names = [t.name for t in inits]
        if len(set(names)) != len(names):  # pragma: no cover - the prefixes rule this out
            raise MedShiftError("composed ONNX graph has duplicate initializer names - report "
                                "this")
        graph = helper.make_graph(self.nodes, f"medshift_{self.s.what}", inputs, outputs,
                                  initializer=inits)
        opsets = {(o.domain, o.version): o for p in protos for o in p.opset_import
                  if o.domain not in ("", "ai.onnx")}
        opsets = [*opsets.values(), helper.make_opsetid("", OPSET)]
        m = helper.make_model(graph, opset_imports=opsets, producer_name="medshift_fast")
        ir = max(p.ir_version for p in protos)
        if ir:  # the exporters' IR version is one their runtimes accept
            m.ir_version = ir
        helper.set_model_props(m, metadata)
        return m


def compose(core_proto, model: nn.Module, settings: ExportSettings, metadata: dict[str, str],
            codec=None, codec_cores: tuple | None = None):
    """The ``step`` or ``translate`` ONNX model around an exported core (see module doc).

    Args:
        core_proto: the U-Net core (``export_core``, at the model-space size).
        model: the U-Net (labels, channels).
        settings: export settings.
        metadata: model properties.
        codec: the run's codec (latent mode) or None.
        codec_cores: (encoder, decoder) from ``export_codec_cores``; needed for a latent
            ``translate`` graph.
    """
    codec = export_codec(codec)
    c, size = io_layout(model, settings, codec)
    if codec is None or settings.what == "step":
        codec_cores = None
    elif codec_cores is None:
        raise MedShiftError("a latent-mode translate graph needs the autoencoder cores "
                            "(export_codec_cores)")
    comp = _Composer(core_proto, settings, int(model.num_classes), codec_cores)
    m = comp.model(c, size, [core_proto, *(codec_cores or ())], metadata)
    _onnx().checker.check_model(m, full_check=False)
    return m
