"""A simulated dataset whose test split is NEW subjects: :func:`add_test_subjects`.

The demo and the utility benchmark score on subjects that no shipped run has seen: the train and
val rows of a simulated dataset are hard-linked (copied where links fail) into a new folder with
their labels, and ``subjects`` more subjects are rendered with the dataset's own simulator config
(same seed, subject ids after its last one: the same population, since every phantom and noise
stream is keyed by (seed, subject, view, domain)) as the test split, with their labels. The
dataset's own test subjects are left out.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

from ..fileio import atomic_write_text
from .dataset import MANIFEST

__all__ = ["add_test_subjects"]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def add_test_subjects(data, root, subjects: int, progress: bool = False) -> dict:
    """Write ``root``: ``data``'s train/val rows and ``subjects`` new test subjects.

    Args:
        data: a dataset written by ``simulate`` (manifest.csv, simulator.json).
        root: the new folder (replaced if it exists).
        subjects: new subjects rendered as the test split.
        progress: print one line when done.

    Returns:
        {source_data, seed, test_subjects, views, test_images_per_domain, seconds}; also
        written to ROOT/eval_data.json.
    """
    import torch

    from .io import write_png16
    from .labels import LABELS_DIR, write_labels
    from .simulator import IMAGE_COLUMNS, SIM_JSON, SimConfig, render_subject, subject_labels

    t0 = time.perf_counter()
    data, root = Path(data), Path(root)
    meta = json.loads((data / SIM_JSON).read_text())
    cfg = SimConfig.from_dict(meta["config"])
    if root.exists():
        shutil.rmtree(root)
    with open(data / MANIFEST, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] != "test"]
    for r in rows:
        _link(data / r["path"], root / r["path"])
        if r.get("labels") and not (root / r["labels"]).exists():
            _link(data / r["labels"], root / r["labels"])
    first = cfg.subjects
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops (as simulate does)
    try:
        for s in range(first, first + subjects):
            imgs, labs = render_subject(cfg, s), subject_labels(cfg, s)
            sid = f"s{s:03d}"
            for v in range(cfg.views):
                vid = f"{sid}_v{v:02d}"
                lab = f"{LABELS_DIR}/{vid}.tif"
                write_labels(root / lab, labs[v], vid)
                for d in cfg.domains:
                    rel = f"{d}/{vid}.png"
                    write_png16(root / rel, imgs[d][v].float().numpy(), 1)
                    rows.append({"path": rel, "domain": d, "subject": sid, "view_id": vid,
                                 "split": "test", "labels": lab})
    finally:
        torch.set_num_threads(n_threads)
    buf = io.StringIO()
    w = csv.DictWriter(buf, (*IMAGE_COLUMNS, "labels"), extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(root / MANIFEST, buf.getvalue())
    info = {"source_data": str(data), "seed": cfg.seed, "test_subjects":
            [f"s{s:03d}" for s in range(first, first + subjects)], "views": cfg.views,
            "test_images_per_domain": subjects * cfg.views,
            "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(root / "eval_data.json", json.dumps(info, indent=1))
    if progress:
        print(f"  evaluation data: {subjects} new subjects x {cfg.views} views (test) + the "
              f"source's train/val -> {root}", flush=True)
    return info
