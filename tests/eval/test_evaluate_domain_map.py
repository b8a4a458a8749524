"""`evaluate` on a run trained with --domain-map: the run's stored map is used (issue 23), and
--domain-map is accepted too. Unpaired data (no view ids): no PSNR vs a true target, and the
classical baselines are tuned on the NPS distance instead."""

import csv
import math

import numpy as np
import pytest

from medshift_fast.cli import main
from medshift_fast.data import write_png16
from medshift_fast.data.dataset import hash_split

MAP = "VIST_low=synthetic_low,Azurion_normal=real_normal"
QUOTA = {"train": 6, "val": 3, "test": 3}


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    root = tmp_path_factory.mktemp("mapped")
    data = root / "data"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16] / 15.0
    for folder, noise in (("VIST_low", 0.02), ("Azurion_normal", 0.1)):
        left, i = dict(QUOTA), 0
        while any(left.values()):  # file names chosen so that every split gets its quota
            name = f"IM{i:04d}.png"
            split = hash_split(f"{folder}/{name}")
            i += 1
            if left.get(split, 0) == 0:
                continue
            left[split] -= 1
            img = 0.6 * np.sin(3 * xx + i) * np.cos(2 * yy) + noise * rng.standard_normal((16, 16))
            write_png16(data / folder / name, np.clip(img, -1, 1).astype(np.float32))
    rc = main(["train", "--data", str(data), "--out", str(root / "run"), "--domain-map", MAP,
               "--steps", "1", "--batch-size", "2", "--image-size", "16", "--model-channels",
               "16", "--val-every", "0", "--sample-every", "0", "--no-progress"])
    assert rc == 0
    return root


def _evaluate(root, out, *extra):
    return main(["evaluate", "--checkpoint", str(root / "run"), "--data", str(root / "data"),
                 "--source", "synthetic_low", "--target", "real_normal", "--taus", "0.5",
                 "--steps", "1", "--out", str(out), "--no-progress", "--allow-small-n",
                 "--no-baselines", "--classical", "gaussian,tv", "--bootstrap", "100", *extra])


def test_evaluate_uses_the_runs_stored_domain_map(mapped, tmp_path):
    assert _evaluate(mapped, tmp_path / "ev") == 0
    rows = list(csv.DictReader(open(tmp_path / "ev" / "metrics.csv")))
    assert [r["method"] for r in rows][0] == "identity"
    assert {r["kind"] for r in rows} >= {"baseline", "medshift", "classical"}
    assert all(r["n"] == "3" for r in rows)  # the 3 test images of the mapped source folder
    assert all(math.isnan(float(r["psnr_tgt"])) for r in rows)  # unpaired: no true target
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "chosen by min nps_dist" in report and '"domain_map_used": "' + MAP in report


def test_evaluate_accepts_domain_map_and_refuses_a_wrong_one(mapped, tmp_path, capsys):
    assert _evaluate(mapped, tmp_path / "ev", "--domain-map", MAP) == 0
    capsys.readouterr()
    assert _evaluate(mapped, tmp_path / "ev2", "--domain-map", "VIST_low=synthetic_low") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "real_normal" in err[0]
