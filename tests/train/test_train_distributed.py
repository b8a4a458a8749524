"""2 gloo processes under torchrun: global coupling == one-process coupling; DDP trains end to end.

One torchrun launch (tests/train/dist_worker.py) does both, to pay the start-up once.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_worker import MODES

from medshift_fast.cli import main
from medshift_fast.flow import SBFlowMatcher
from medshift_fast.flow.coupling import couple_indices
from medshift_fast.run import load_run

FLAGS = ["--steps", "3", "--batch-size", "4", "--image-size", "16", "--model-channels", "16",
         "--log-every", "1", "--val-every", "3", "--sample-every", "0", "--ckpt-every", "2",
         "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def ddp_out(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    worker = Path(__file__).with_name("dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(out), str(tiny_folder), *FLAGS]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_global_coupling_equals_single_process(ddp_out):
    """Each rank held half of x_1; the pairs (x_0, x_1) of the gathered plan, t, x_t, u_t and
    labels of the ranks' shares equal the one-process SBFlowMatcher's, bit for bit."""
    g = torch.Generator().manual_seed(7)
    x0, x1 = torch.randn(8, 1, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g)
    y = torch.arange(8) % 3
    ranks = [torch.load(ddp_out / f"coupling_rank{r}.pt", weights_only=True) for r in range(2)]
    for name, cfg in MODES.items():
        fb = SBFlowMatcher(3, cfg, p_uncond=0.25)(x1, y, generator=torch.Generator().manual_seed(5))
        for k in ("x0", "x1", "t", "x_t", "u_t", "y"):  # the pairs of ONE global plan
            got = torch.cat([r[name][k] for r in ranks])
            assert torch.equal(got, getattr(fb, k)), (name, k)
    # and it is not what per-rank couplings (torchcfm's DDP behaviour) would give
    cfg = MODES["exact"]
    local = torch.cat([couple_indices(x0[:4], x1[:4], cfg)[1],
                       couple_indices(x0[4:], x1[4:], cfg)[1] + 4])
    assert not torch.equal(local, couple_indices(x0, x1, cfg)[1])


def test_ddp_training_end_to_end_matches_one_process(ddp_out, tiny_folder, tmp_path):
    run_dir = ddp_out / "run"
    for f in ("config.json", "model.safetensors", "raw.safetensors", "training_state.pt",
              "log.csv", "best/config.json", "checkpoints/step_0000002/config.json"):
        assert (run_dir / f).is_file(), f
    run = load_run(run_dir)
    assert run.config["step"] == 3
    # the same global batches in one process: the same losses (up to reduction order)
    assert main(["train", "--data", str(tiny_folder), "--out", str(tmp_path), *FLAGS]) == 0

    def losses(p):
        return [float(r.split(",")[1]) for r in (p / "log.csv").read_text().splitlines()[1:]]

    assert losses(run_dir) == pytest.approx(losses(tmp_path), rel=1e-4, abs=1e-5)
