"""ONNX graphs (U-Net exported once, step/translate composed around it) match eager PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from medshift_fast.data import to_uint16
from medshift_fast.export.graphs import ExportSettings, StepModule, build_module, example_inputs
from medshift_fast.export.onnx_export import OPSET, compose
from medshift_fast.flow import make_field, translate
from medshift_fast.translate import DEFAULTS

# the export settings' guidance defaults (TranslationSettings')
GUIDANCE = {k: DEFAULTS[k] for k in ("guidance_encode", "guidance_decode")}

ort = pytest.importorskip("onnxruntime")
ATOL = 1e-4  # fp32 (tests/utils.py)
SIZE = 16  # as conftest.SIZE


def _session(proto):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def test_core_has_only_standard_ops(onnx_core):
    proto, exporter = onnx_core
    assert exporter in ("dynamo", "torchscript")
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    # the batch dimension stays symbolic
    assert not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")


@pytest.mark.parametrize("w", [2.0, 1.0])
def test_step_graph_matches_eager(model, onnx_core, w):
    s = ExportSettings(what="step", size=SIZE, guidance=w)
    m = compose(onnx_core[0], model, s, {})
    assert m.opset_import[0].version == OPSET and OPSET >= 17
    x, t, y = example_inputs(s, model.num_classes, 1, batch=3)  # labels include the null label
    out = torch.from_numpy(_session(m).run(None, {"x": x.numpy(), "t": t.numpy(),
                                                  "y": y.numpy()})[0])
    with torch.no_grad():
        ref = StepModule(model, s)(x, t, y)
        # StepModule is the library's guided field (flow.guidance.make_field), per-sample t
        vc, vu = make_field(model, y, w)(x, 0.3)
        lib = vc if vu is None else vu + w * (vc - vu)
        assert (StepModule(model, s)(x, torch.full_like(t, 0.3), y) - lib).abs().max() < 1e-6
    assert (out - ref).abs().max().item() < ATOL
    assert ref.abs().max() > 1e-2  # a non-trivial field


@pytest.mark.parametrize("tau", [0.3, 0.7])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_translate_graph_matches_eager(model, onnx_core, tau, solver):
    s = ExportSettings(what="translate", size=SIZE, source=0, target=2, tau=tau, steps=2,
                       solver=solver, guidance_encode=2.0, guidance_decode=1.5)
    m = compose(onnx_core[0], model, s, {})
    (x,) = example_inputs(s, model.num_classes, 1, batch=3)
    out = torch.from_numpy(_session(m).run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        ref = translate(model, x, 0, 2, tau=tau, guidance_encode=2.0, guidance_decode=1.5,
                        steps=2, solver=solver).clamp(-1, 1)
    assert (ref - x).abs().max() > 0.1  # the translation does something
    assert (out - ref).abs().max().item() < ATOL


@pytest.mark.parametrize("solver", ["midpoint", "rk4"])
def test_translate_other_solvers_and_unguided_leg(model, onnx_core, solver):
    s = ExportSettings(what="translate", size=SIZE, source=1, target=0, tau=0.4, steps=1,
                       solver=solver, guidance_encode=1.0, guidance_decode=3.0)
    (x,) = example_inputs(s, model.num_classes, 1, batch=2)
    out = _session(compose(onnx_core[0], model, s, {})).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = build_module(model, s)(x)
    assert np.abs(out - ref.numpy()).max() < ATOL


def test_translate_uint16_io(model, onnx_core):
    s = ExportSettings(what="translate", size=SIZE, io="uint16", source=0, target=1, tau=0.5,
                       steps=2, solver="euler")
    m = compose(onnx_core[0], model, s, {"medshift.io": "uint16"})
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT16
    (u,) = example_inputs(s, model.num_classes, 1, batch=2)
    assert u.dtype == torch.uint16
    u_np = u.to(torch.int32).numpy().astype(np.uint16)
    out = _session(m).run(None, {"image": u_np})[0]
    assert out.dtype == np.uint16
    # the library path: read_image's mapping, translate, data.to_uint16
    x = u_np.astype(np.float32) * np.float32(2 / 65535) - np.float32(1)
    with torch.no_grad():
        y = translate(model, torch.from_numpy(x), 0, 1, tau=0.5, steps=2, solver="euler",
                      **GUIDANCE)
    ref = np.stack([to_uint16(img[0])[None] for img in y])
    assert np.abs(out.astype(np.int64) - ref.astype(np.int64)).max() <= 1  # rounding ties only


def test_tau_one_is_identity_and_needs_no_weights(model, onnx_core):
    s = ExportSettings(what="translate", size=SIZE, source=0, target=1, tau=1.0, steps=3)
    m = compose(onnx_core[0], model, s, {})
    assert len(m.graph.initializer) < 5  # the U-Net's weights are pruned
    (x,) = example_inputs(s, model.num_classes, 1, batch=1)
    out = _session(m).run(None, {"image": (x * 1.5).numpy()})[0]
    assert np.array_equal(out, (x * 1.5).clamp(-1, 1).numpy())


def test_weights_are_stored_once(model, onnx_core):
    s = ExportSettings(what="translate", size=SIZE, source=0, target=1, tau=0.2, steps=3,
                       solver="heun")
    m = compose(onnx_core[0], model, s, {})
    n_core = len(onnx_core[0].graph.initializer)
    assert len(m.graph.initializer) < n_core + 200  # solver constants only, no weight copies
    convs = sum(n.op_type == "Conv" for n in m.graph.node)
    assert convs == s.nfe() * sum(n.op_type == "Conv" for n in onnx_core[0].graph.node)
