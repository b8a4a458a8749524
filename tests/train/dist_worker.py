"""Worker for tests/train/test_train_distributed.py, run as ``torchrun --nproc_per_node=2``.

(a) dumps this rank's share of the global coupling / flow batch for several coupling modes;
(b) runs ``medshift train`` end to end inside the same gloo process group.
Usage: dist_worker.py OUT_DIR DATA_DIR [train flags...]
"""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from medshift_fast.cli import main  # noqa: E402
from medshift_fast.flow.coupling import CouplingConfig  # noqa: E402
from medshift_fast.flow.matcher import SBFlowMatcher  # noqa: E402
from medshift_fast.train.distributed import init_from_env  # noqa: E402

MODES = {
    "sinkhorn_conditional": CouplingConfig("sinkhorn", 0.5, None, "conditional"),
    "sinkhorn_multinomial": CouplingConfig("sinkhorn", 0.0, 0.05, "multinomial"),
    "exact": CouplingConfig("exact", 0.0, None, "assignment"),
}


def coupling_dump(out: Path, info) -> None:
    g = torch.Generator().manual_seed(7)
    torch.randn(8, 1, 8, 8, generator=g)
    x1 = torch.randn(8, 1, 8, 8, generator=g)  # identical on every rank (same seed)
    y = torch.arange(8) % 3
    b = 8 // info.world
    s = slice(info.rank * b, (info.rank + 1) * b)
    res = {}
    for name, cfg in MODES.items():
        fb = SBFlowMatcher(3, cfg, p_uncond=0.25)(x1[s], y[s], torch.Generator().manual_seed(5),
                                                  group=info)
        res[name] = {k: getattr(fb, k) for k in ("x0", "x1", "t", "x_t", "u_t", "y")}
    torch.save(res, out / f"coupling_rank{info.rank}.pt")


if __name__ == "__main__":
    out, data = Path(sys.argv[1]), sys.argv[2]
    info = init_from_env("cpu")
    coupling_dump(out, info)
    rc = main(["train", "--data", data, "--out", str(out / "run"), *sys.argv[3:]])
    torch.distributed.destroy_process_group()
    sys.exit(rc)
