import json

import pytest
import torch

from medshift_fast.errors import MedShiftError, MedShiftWarning
from medshift_fast.models import build_model
from medshift_fast.run import load_run, save_run
from medshift_fast.train import TrainConfig


def test_config_json_round_trip():
    cfg = TrainConfig(data="/x", out="/y", domains=("a", "b"), sigma=0.0, eps_relative=0.05)
    assert TrainConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("bad", [dict(steps=0), dict(sigma=-1.0), dict(coupling="magic"),
                                 dict(plan_sampling="x"), dict(precision="fp8"),
                                 dict(p_uncond=1.0)])
def test_config_validation(bad):
    with pytest.raises(MedShiftError):
        TrainConfig(**bad)


def test_config_unknown_field():
    with pytest.raises(MedShiftError):
        TrainConfig.from_dict({"stepz": 3})


def _save(tmp_path):
    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16)
    save_run(tmp_path, TrainConfig(), m.config, ("a", "b"), m.state_dict(), m.state_dict(),
             {"step": torch.tensor(3)})
    return m


def test_save_load_round_trip(tmp_path):
    m = _save(tmp_path)
    run = load_run(tmp_path)
    for (k, v), (k2, v2) in zip(m.state_dict().items(), run.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert run.label("b") == 1
    with pytest.raises(MedShiftError, match="unknown domain"):
        run.label("c")


def test_tampered_and_missing_checkpoints(tmp_path):
    with pytest.raises(MedShiftError, match="does not exist"):
        load_run(tmp_path / "nope")
    _save(tmp_path)
    w = tmp_path / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[10:20] = b"\xff" * 10
    w.write_bytes(bytes(data))
    with pytest.raises(MedShiftError, match="corrupt"):
        load_run(tmp_path)
    _save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["model_channels"] = 32
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MedShiftError, match="config.json was edited .*'model'"):
        load_run(tmp_path)
    del cfg["sha256"]  # an old run without hashes: the weights still refuse the wrong config
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MedShiftError, match="do not match"), \
            pytest.warns(MedShiftWarning, match="records no SHA-256"):
        load_run(tmp_path)
    cfg["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MedShiftError, match="format version"):
        load_run(tmp_path)
