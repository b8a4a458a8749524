"""Every Python block of README.md runs as written (in a folder holding a small runs/demo/run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder with runs/demo/run: a tiny untrained run over the five demo domains, 32 px."""
    from medshift_fast.data import DOMAINS
    from medshift_fast.models import build_model
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig

    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    m = build_model("tiny", num_classes=len(DOMAINS), model_channels=16, head_channels=16)
    save_run(root / "runs" / "demo" / "run", TrainConfig(image_size=32), m.config, DOMAINS,
             m.state_dict())
    return root


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 1 and "Translator" in BLOCKS[0]


@pytest.mark.parametrize("k", range(len(BLOCKS)))
def test_readme_python_block_runs_as_written(k, demo_folder, monkeypatch):
    monkeypatch.chdir(demo_folder)
    n = torch.get_num_threads()
    try:
        exec(compile(BLOCKS[k], f"README.md python block {k + 1}", "exec"), {})
    finally:
        torch.set_num_threads(n)
