"""The preallocated Sampler equals flow.translate / flow.sample and allocates nothing per step."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from utils import assert_close

from medshift_fast.errors import MedShiftError
from medshift_fast.flow import sample as flow_sample
from medshift_fast.flow import translate as flow_translate
from medshift_fast.flow.sampler import FIXED_SOLVERS
from medshift_fast.flow.sampler import Sampler as FlowSampler
from medshift_fast.flow.sampler import fused_translate as flow_fused_translate

# flow functions take every setting explicitly (the defaults live in TranslationSettings);
# these tests fix their own values
_SAMPLER = dict(tau=0.6, steps=10, solver="euler", guidance_encode=2.0, guidance_decode=2.0)
_TRANSLATE = dict(tau=0.6, steps=20, solver="heun", guidance_encode=2.0, guidance_decode=2.0)


def Sampler(model, shape, *args, **kw):  # noqa: N802 - stands in for the class
    return FlowSampler(model, shape, *args, **{**_SAMPLER, **kw})


def translate(model, x, source, target, **kw):
    return flow_translate(model, x, source, target, **{**_TRANSLATE, **kw})


def fused_translate(model, x, source, target, **kw):
    return flow_fused_translate(model, x, source, target, **{**_TRANSLATE, **kw})


def sample(model, target, n, shape, **kw):
    return flow_sample(model, target, n, shape, **{"guidance": 2.0, "steps": 20,
                                                   "solver": "heun", **kw})


from medshift_fast.models import build_model  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny forwards on a shared, loaded machine: one intra-op thread avoids OpenMP spin-waits.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(device="cpu"):
    torch.manual_seed(0)
    m = build_model("tiny", model_channels=16, head_channels=16, num_classes=3)
    with torch.no_grad():  # the zero-initialised output layers get weights: the field is not 0
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.eval().to(device)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def images(b=2, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 1, 16, 16, generator=g) * 2 - 1).to(device)


KW = dict(tau=0.5, steps=2)


@pytest.mark.parametrize("solver", FIXED_SOLVERS)
def test_translate_matches_reference(model, solver):
    x = images()
    ref = translate(model, x, 0, 2, solver=solver, guidance_encode=2.0, guidance_decode=1.5, **KW)
    s = Sampler(model, x.shape, 0, 2, solver=solver, guidance_encode=2.0, guidance_decode=1.5,
                **KW)
    y = s.translate(x)
    assert (ref - x).abs().max() > 1e-2  # the field is not trivial
    assert_close(y, ref)
    assert s.nfe == {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[solver] * 2 * KW["steps"]
    assert_close(s.translate(x), y)  # replaying the same buffers gives the same result


def test_unguided_leg_and_per_sample_labels(model):
    x = images(3)
    src, tgt = torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1])
    ref = translate(model, x, src, tgt, solver="heun", guidance_encode=1.0, guidance_decode=2.5,
                    **KW)
    y = fused_translate(model, x, src, tgt, solver="heun", guidance_encode=1.0,
                        guidance_decode=2.5, **KW)
    assert_close(y, ref)


def test_set_labels_in_place(model):
    x = images()
    s = Sampler(model, x.shape, 0, 2, solver="euler", **KW)
    s.translate(x)
    s.set_labels(target=1)
    assert_close(s.translate(x), translate(model, x, 0, 1, solver="euler", **KW))


def test_sample_matches_flow_sample(model):
    ref = sample(model, 1, 2, (1, 16, 16), steps=2, solver="rk4",
                 generator=torch.Generator().manual_seed(5))
    s = Sampler(model, (2, 1, 16, 16), target=1, steps=2, solver="rk4")
    assert_close(s.sample(2, generator=torch.Generator().manual_seed(5)), ref)


def test_tau_one_is_identity(model):
    x = images()
    s = Sampler(model, x.shape, 0, 1, tau=1.0, steps=3)
    assert torch.equal(s.translate(x), x)


def test_buffers_are_reused_and_out_is_written(model):
    x = images()
    s = Sampler(model, x.shape, 0, 2, solver="rk4", **KW)
    first = s.translate(x)
    ptrs = {k: v.data_ptr() for k, v in s.buffers().items()}
    out = torch.empty_like(x)
    assert s.translate(images(seed=2), out=out) is out
    assert {k: v.data_ptr() for k, v in s.buffers().items()} == ptrs
    assert not torch.equal(out, first)  # a different input really went through the buffers


def test_bf16_autocast_and_channels_last(model):
    import copy

    m = copy.deepcopy(model)
    x = images()
    ref = translate(model, x, 0, 2, solver="heun", **KW)
    y = Sampler(m, x.shape, 0, 2, solver="heun", bf16=True, channels_last=True, **KW).translate(x)
    assert y.dtype == torch.float32
    assert_close(y, ref, dtype=torch.bfloat16)


def test_compiled_forward_matches_reference(model):
    """compile=True (torch.compile + Inductor freezing of the forward) gives the same translation;
    the weights are baked in at the first call, so a weight change afterwards is not seen."""
    import copy

    m = copy.deepcopy(model)
    x = images()
    ref = translate(model, x, 0, 2, solver="midpoint", **KW)
    s = Sampler(m, x.shape, 0, 2, solver="midpoint", compile=True, channels_last=True, **KW)
    assert s.compiled
    y = s.translate(x)
    assert_close(y, ref)
    assert_close(s.translate(x), y)
    assert_close(s.sample(generator=torch.Generator().manual_seed(5)),
                 sample(model, 2, 2, (1, 16, 16), steps=2, solver="midpoint",
                        generator=torch.Generator().manual_seed(5)))


def test_errors(model):
    with pytest.raises(MedShiftError, match="adaptive"):
        Sampler(model, (1, 1, 16, 16), 0, 1, solver="dopri5")
    with pytest.raises(MedShiftError, match="tau"):
        Sampler(model, (1, 1, 16, 16), 0, 1, tau=1.5)
    with pytest.raises(MedShiftError, match="channel"):
        Sampler(model, (1, 3, 16, 16), 0, 1)
    with pytest.raises(MedShiftError, match="label"):
        Sampler(model, (1, 1, 16, 16), 0, 7)
    s = Sampler(model, (2, 1, 16, 16), target=1, steps=1)
    with pytest.raises(MedShiftError, match="source"):
        s.translate(images())
    s.set_labels(source=0)
    with pytest.raises(MedShiftError, match="shape"):
        s.translate(images(3))
    with pytest.raises(MedShiftError, match="NaN"):
        s.translate(torch.full((2, 1, 16, 16), float("nan")))
    with pytest.raises(MedShiftError, match="n=3"):
        s.sample(3)
    with pytest.raises(MedShiftError, match="CUDA"):
        Sampler(model, (1, 1, 16, 16), 0, 1, device="cpu", cuda_graph=True)


class _CountAllocations(TorchDispatchMode):
    """Counts ops that return a tensor with fresh storage, outside the model's forward."""

    def __init__(self, model):
        super().__init__()
        self.in_model = False
        self.fresh: list[str] = []
        self._hooks = [model.register_forward_pre_hook(lambda *a: self._set(True)),
                       model.register_forward_hook(lambda *a: self._set(False))]

    def _set(self, flag):
        self.in_model = flag

    def remove(self):
        for h in self._hooks:
            h.remove()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        res = func(*args, **(kwargs or {}))
        if not self.in_model:
            seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                    if isinstance(t, torch.Tensor)}
            for t in tree_leaves(res):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    self.fresh.append(str(func))
        return res


@pytest.mark.ext
@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_no_allocations_outside_the_network(model, solver):
    """Every tensor op of the loop, except the network's own forward, works in place."""
    x = images()
    s = Sampler(model, x.shape, 0, 2, solver=solver, guidance_encode=1.0, **KW)
    out = torch.empty_like(x)
    s.translate(x, out=out)  # builds the program (times table) once
    mode = _CountAllocations(model)
    try:
        with mode, torch.no_grad():
            s.translate(x, out=out, check_finite=False)
    finally:
        mode.remove()
    assert mode.fresh == []


@pytest.mark.cuda
@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_cuda_graph_matches_eager(solver):
    m = tiny_model("cuda")
    x = images(device="cuda")
    ref = translate(m, x, 0, 2, solver=solver, **KW)
    eager = Sampler(m, x.shape, 0, 2, solver=solver, cuda_graph=False, **KW)
    graph = Sampler(m, x.shape, 0, 2, solver=solver, cuda_graph=True, **KW)
    y = graph.translate(x)
    assert_close(y, eager.translate(x))
    assert_close(y, ref, atol=2e-3, rtol=2e-3)  # TF32 convolutions
    x2 = images(device="cuda", seed=3)  # new data through the static input buffer
    assert_close(graph.translate(x2), eager.translate(x2))
    graph.set_labels(target=1)  # labels live in static buffers: the graph sees the change
    eager.set_labels(target=1)
    assert_close(graph.translate(x2), eager.translate(x2))
    s = Sampler(m, x.shape, target=1, solver=solver, bf16=True, **KW)
    a = s.sample(generator=torch.Generator().manual_seed(0))
    b = Sampler(m, x.shape, target=1, solver=solver, bf16=True, cuda_graph=False, **KW).sample(
        generator=torch.Generator().manual_seed(0))
    assert_close(a, b, dtype=torch.bfloat16)
