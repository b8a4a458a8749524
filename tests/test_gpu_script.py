"""benchmarks/gpu/run_gpu_checks.sh --dry-run: the GPU run's benchmark stages on the CPU with tiny
sizes, so a bug in the script is found here, not in the minutes of a lent GPU (issue 30)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_script_dry_run(tmp_path):
    was_link = (ROOT / "medshift_fast" / "kernels").is_symlink()
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "MEDSHIFT_CACHE": str(tmp_path / "cache")}
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run_gpu_checks.sh"),
                        "--dry-run", str(tmp_path / "out")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "lean_frames_dryrun.json").read_text())
    rows = rep["rows"]
    ran = [r for r in rows if "p50_ms" in r]
    # 64 whole, 128 whole, 128 in 96-px tiles; fp32 and bf16; eager ran, cuda_graph did not
    assert len(rows) == 3 * 2 * 2 and len(ran) == 3 * 2
    assert all(r["provider"] == "eager" and r["frames"] == 2 for r in ran)
    assert all(r.get("refused") == "needs CUDA" for r in rows if r["provider"] == "cuda_graph")
    assert any(r["tiles"] > 1 for r in ran)
    assert (tmp_path / "out" / "log.txt").is_file()
    assert not (ROOT / "medshift_fast" / "kernels").is_symlink() or was_link  # left as found
