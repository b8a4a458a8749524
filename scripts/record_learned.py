"""Write the ``learned`` record (pixel scale, intensity rule: ``medshift_fast.learned``) into the
config.json of a run trained before runs recorded it, from the dataset it was trained on.

    python scripts/record_learned.py RUN [--data ROOT]          # a flow run
    python scripts/record_learned.py STUDENT --teacher TEACHER  # a student: its teacher's record

The record is computed exactly as ``medshift train`` computes it (``train.data.learned_record``
on the run's train split at its training size); the weights are not touched, the run's hashes
(``run.record_run_hashes``) are re-recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from medshift_fast.run import read_run_config, update_run_config
    from medshift_fast.train import data as D

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", help="dataset root (default: the one the run records)")
    ap.add_argument("--teacher", help="copy the record of this (flow) run instead")
    a = ap.parse_args(argv)
    cfg = read_run_config(a.run)
    if a.teacher:
        rec = read_run_config(a.teacher).get("learned")
        if not rec:
            raise SystemExit(f"{a.teacher} has no learned record; record it first")
    else:
        t = dict(cfg["train"])
        t["data"] = a.data or t.get("data")
        view = types.SimpleNamespace(**{**t, "native": t.get("native", False)})
        ds = D.open_split(view, "train", tuple(cfg["domains"]))
        td = types.SimpleNamespace(dataset=ds, domains=tuple(ds.domains), y=ds.labels, x=None)
        rec = D.learned_record(view, td)
    update_run_config(a.run, learned=rec)  # verified first, its hashes re-recorded
    print(f"{a.run}: learned {json.dumps(rec['scale'])}, {len(rec['intensity']['domains'])} "
          "domain(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
