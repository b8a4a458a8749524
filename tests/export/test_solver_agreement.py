"""Each fixed-step solver is described once (flow.solvers.TABLEAUX -> stage_ops) and executed
three ways: ``integrate`` (eager), the preallocated ``Sampler`` and the ONNX composer. All three
give the same translation, for every solver, with guided, plain and unconditional legs."""

from __future__ import annotations

import pytest
import torch

from medshift_fast.export.graphs import ExportSettings
from medshift_fast.export.onnx_compose import compose
from medshift_fast.flow import TABLEAUX, stage_ops, translate
from medshift_fast.flow.sampler import Sampler

SIZE = 16  # as tests/export/conftest.py (its onnx_core fixture is exported at it)
ort = pytest.importorskip("onnxruntime")


def test_every_tableau_is_consistent():
    for name, tab in TABLEAUX.items():
        assert abs(sum(tab.b) - 1.0) < 1e-12, name
        ops = stage_ops(name)
        assert len(ops) == tab.stages and ops[-1].last and not any(o.last for o in ops[:-1])


@pytest.mark.parametrize("solver", list(TABLEAUX))
@pytest.mark.parametrize("w_enc, w_dec", [(2.0, 1.5), (0.0, 2.0), (1.0, 1.0)])
def test_integrate_sampler_and_onnx_agree(model, onnx_core, solver, w_enc, w_dec):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, SIZE, SIZE, generator=g) * 2 - 1
    kw = dict(tau=0.4, steps=2, solver=solver, guidance_encode=w_enc, guidance_decode=w_dec)
    eager = translate(model, x, 0, 2, **kw)
    assert (eager - x).abs().max() > 1e-2  # a real translation
    fused = Sampler(model, tuple(x.shape), 0, 2, **kw).translate(x)
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)
    s = ExportSettings(what="translate", size=SIZE, source=0, target=2, **kw)
    m = compose(onnx_core[0], model, s, {})
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (onnx,) = sess.run(None, {"image": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx), eager.clamp(-1, 1), rtol=1e-4, atol=1e-4)
