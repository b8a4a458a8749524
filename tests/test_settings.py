"""One home for translation defaults (issue 27): ``translate/settings.py`` alone writes them, and
the Python API, the CLI, the fused sampler and the export graph translate one image the same
way, to the last bit, when nobody passes a setting."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.data import DOMAINS, read_image, write_png16
from medshift_fast.export.graphs import ExportSettings, build_module
from medshift_fast.flow import translate as flow_translate
from medshift_fast.flow.sampler import fused_translate
from medshift_fast.run import load_run
from medshift_fast.translate import (
    DEFAULTS,
    RECIPE,
    TranslationSettings,
    Translator,
    unit_to_uint16,
)
from medshift_fast.translate.files import TranslateConfig

PKG = Path(__file__).resolve().parents[1] / "medshift_fast"
SETTINGS = PKG / "translate" / "settings.py"
#: names that carry a translation setting when they sit beside one (tau, guidance, solver ...)
KEYS = {"tau", "taus", "guidance", "guidance_encode", "guidance_decode", "steps", "solver",
        "method", "decode", "sde_noise", "seed", "tile", "overlap"}
MARK = {"tau", "taus", "guidance", "guidance_encode", "guidance_decode", "solver", "decode",
        "sde_noise"}
#: (file, owner, name): literals that are NOT translation defaults, and why
NOT_TRANSLATION = {
    ("demo/pipeline.py", "DemoConfig", "seed"),  # the simulated data's seed
    ("train/distill_config.py", "DistillConfig", "steps"),  # training steps
    ("train/distill_config.py", "DistillConfig", "method"),  # the distillation method
    ("eval/utility.py", "UtilityConfig", "steps"),  # the downstream network's training steps
}


def _literal_defaults(path: Path):
    """(owner, name, line, source) of every non-None default of a translation-like signature
    or dataclass (one that has a tau / guidance / solver / decode parameter or field)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        pairs, names = [], set()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            pos = a.posonlyargs + a.args
            pairs += list(zip(pos[len(pos) - len(a.defaults):], a.defaults))
            pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            pairs = [(arg.arg, d) for arg, d in pairs]
            names = {arg.arg for arg in pos + a.kwonlyargs}
        elif isinstance(node, ast.ClassDef):
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                    names.add(st.target.id)
                    if st.value is not None:
                        pairs.append((st.target.id, st.value))
        else:
            continue
        if not names & MARK:
            continue
        for name, d in pairs:
            if name not in KEYS:
                continue
            if isinstance(d, ast.Constant) and d.value is None:
                continue
            # a reference to the settings (DEFAULTS["tau"], TAU_SWEEP, DEFAULT) is derived, fine
            literal = all(isinstance(n, (ast.Constant, ast.Tuple, ast.UnaryOp, ast.USub,
                                         ast.Load, ast.List))
                          for n in ast.walk(d))
            if literal:
                yield node.name, name, d.lineno, ast.unparse(d)


def test_translation_defaults_live_only_in_settings():
    found = []
    for p in sorted(PKG.rglob("*.py")):
        if p == SETTINGS:
            continue
        rel = p.relative_to(PKG).as_posix()
        for owner, name, line, src in _literal_defaults(p):
            if (rel, owner, name) not in NOT_TRANSLATION:
                found.append(f"{rel}:{line} {owner}({name}={src})")
    assert not found, ("translation defaults written outside translate/settings.py (derive them "
                       "from TranslationSettings): " + "; ".join(found))


def test_the_scan_sees_a_default(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def translate(model, x, tau=0.6, solver='heun'):\n    pass\n"
                 "def fine(model, x, *, tau, steps=DEFAULTS['steps']):\n    pass\n")
    assert [(o, n) for o, n, *_ in _literal_defaults(p)] == [("translate", "tau"),
                                                             ("translate", "solver")]


def test_settings_defaults_are_views_of_one_dataclass():
    fields = {f.name: f.default for f in dataclasses.fields(TranslationSettings)
              if f.default is not dataclasses.MISSING}
    assert DEFAULTS == fields
    assert all(RECIPE[k] == fields[k] for k in RECIPE)
    s = ExportSettings(source=0, target=2)
    assert s.translation() == TranslationSettings(0, 2)
    cfg = TranslateConfig(checkpoint="r", inputs=("x",), out="o", source="a", target="b")
    assert all(getattr(cfg, k) is None for k in ("tau", "steps", "solver", "seed", "tile"))


def test_settings_validate_and_round_trip():
    s = TranslationSettings(0, 3, tile="512", overlap=64, seed=7)
    assert s.tile == 512 and TranslationSettings.from_dict(s.to_dict()) == s
    assert TranslationSettings(0, 1, tile="none").tile is None
    from medshift_fast.errors import MedShiftError

    for bad in (dict(tile=4), dict(tile="big"), dict(overlap=-1), dict(seed=1.5),
                dict(tau=1.5), dict(solver="leapfrog")):
        with pytest.raises(MedShiftError):
            TranslationSettings(0, 1, **bad)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small run over the five demo domains (random non-zero output layers), 32 px."""
    from utils import tiny_run

    return tiny_run(tmp_path_factory.mktemp("run"), DOMAINS)


def test_api_cli_sampler_and_export_agree_bit_for_bit(run_dir, tmp_path):
    """Nobody passes a setting: every consumer takes the same defaults, so the same image comes
    out of each (the eager pairs and the fused pairs to the last bit; eager vs fused within the
    fp32 table: the fused stages round differently)."""
    src, tgt = "synthetic_low", "real_normal"
    g = torch.Generator().manual_seed(1)
    inp = tmp_path / "in"
    inp.mkdir()
    write_png16(inp / "a.png", torch.rand(32, 32, generator=g) * 1.6 - 0.8)
    x = torch.from_numpy(read_image(inp / "a.png")).reshape(1, 1, 32, 32)  # in [-1, 1]
    run = load_run(run_dir)
    s = TranslationSettings(run.label(src), run.label(tgt))

    api = Translator(run, src, tgt)
    assert api.settings == s
    y_api = api.translate(x)
    y_flow = flow_translate(run.model, x, s.source, s.target, **s.flow_kwargs())
    assert torch.equal(y_api, y_flow.clamp(-1, 1))

    y_export = build_module(run.model, ExportSettings.from_translator(api, size=32))(x)
    assert ExportSettings.from_translator(api, size=32).translation() == s
    assert torch.equal(y_export, y_api)

    y_fused = Translator(run, src, tgt, mode="fused").translate(x)
    y_sampler = fused_translate(run.model, x, s.source, s.target, **s.flow_kwargs())
    assert torch.equal(y_fused, y_sampler.clamp(-1, 1))
    torch.testing.assert_close(y_fused, y_api, rtol=1e-5, atol=1e-5)

    # at the thread count the API ran with (a float reduction's order depends on it)
    rc = main(["translate", "--checkpoint", str(run_dir), "--source", src, "--target", tgt,
               "--out", str(tmp_path / "out"), "--no-progress", "--threads",
               str(torch.get_num_threads()), str(inp)])
    assert rc == 0
    from PIL import Image

    (out_png,) = (tmp_path / "out").glob("a*.png")
    y_cli = np.asarray(Image.open(out_png)).astype(np.int64)
    # the writer quantises in float64 (data.writers._quantise), so compare with that rounding
    y64 = y_api[0, 0].numpy().astype(np.float64)
    assert np.array_equal(y_cli, np.rint((np.clip(y64, -1, 1) + 1) * 32767.5).astype(np.int64))
    assert np.abs(y_cli - unit_to_uint16(y_api)[0, 0].numpy().astype(np.int64)).max() <= 1


def test_translator_tile_none_means_whole_and_default_means_the_settings(run_dir):
    run = load_run(run_dir)
    assert Translator(run, "synthetic_low", "real_normal", tile=None).tile is None
    tr = Translator(run, "synthetic_low", "real_normal")
    assert tr.settings.tile == DEFAULTS["tile"] and tr.tile == 32  # the run's trained tile
    assert Translator(run, "synthetic_low", "real_normal", tile=16, overlap=4).overlap == 4
