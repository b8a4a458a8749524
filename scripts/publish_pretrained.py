"""Copy what the demo needs of the pretrained runs into pretrained/ (scripts/pretrain.sh).

pretrained/demo128/ (teacher), pretrained/demo128_student/ (regression student),
pretrained/demo128_adv/ (adversarial student), pretrained/demo128_lean/ (the lean student: the
adversarial student re-distilled into models/lean.py), pretrained/demo128_lean_sto/ (the
stochastic lean student, trained adversarially from it), pretrained/demo128_lean_tex/ (the
lean student with a detector texture, trained adversarially from it) and
pretrained/demo128_lean_dose/ (the texture student continued with the dose-pair Noisier2Noise
term) get
config.json, model.safetensors (EMA), log.csv (+ adversarial.csv) and data.json (the SHA-256 of
the simulated data's simulator.json and manifest.csv, which the demo compares with the data it
simulates). A run missing from WORK_DIR leaves its folder as it is. pretrained/README.md gets
each shipped run's command, regenerated from its recorded config (every field that differs from
the default), its size and its last logged validation figure.

    python scripts/publish_pretrained.py [WORK_DIR]    (default runs/pretrain)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from medshift_fast.demo import data_fingerprint
from medshift_fast.fileio import atomic_write_text
from medshift_fast.run import load_run, update_run_config
from medshift_fast.train.config import TrainConfig
from medshift_fast.train.distill import DistillConfig

# fields that only say where things are or how the loop reports: not part of the recipe
_PLACE = {"data", "out", "teacher", "resume", "overwrite", "device"}


def command(name: str, cls, recorded: dict, paths: dict[str, str]) -> str:
    """``medshift NAME`` with the flags of every recorded field that differs from its default."""
    parts = [f"medshift {name}"] + [f"--{k.replace('_', '-')} {v}" for k, v in paths.items()]
    for f in dataclasses.fields(cls):
        if f.name in _PLACE or f.name in paths or f.name not in recorded:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        v = recorded[f.name]
        if isinstance(v, list):
            v = tuple(v)
        if v == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + f.name.replace("_", "-"))
        elif isinstance(v, tuple):
            parts.append(f"{flag} {','.join(map(str, v))}")
        else:
            parts.append(f"{flag} {v}")
    return " \\\n    ".join(parts)


def last_val(log: Path, method: str | None = None, anchor: bool = False) -> str:
    rows = [r for r in csv.DictReader(log.open()) if r.get("val_loss")]
    if not rows:
        return "no validation"
    what = ("validation NPS distance to the target domains (dB)" if method == "adversarial"
            else "validation MSE to the anchor run's translations" if anchor
            else "validation loss")
    return f"step {rows[-1]['step']}: {what} {float(rows[-1]['val_loss']):.4g}"


# model entries a run is published with, other than those it was trained with: chosen on the
# validation split, never the test split (docs/distill.md, "The dose term in the student": the
# dose student scores best at its texture's full scale; written with run.update_run_config, the
# one way the package edits a saved run, so the shipped config verifies)
SHIPPED = {"demo128_lean_dose": {"noise_scale": 1.0}}


def main(work: str) -> None:
    work = Path(work)
    root = Path(__file__).resolve().parents[1] / "pretrained"
    fp = data_fingerprint(work / "data") if (work / "data" / "manifest.csv").is_file() else None
    lines = ["# Shipped checkpoints (written by scripts/publish_pretrained.py)", "",
             "The demo evaluates these (same simulated data: `data.json` holds its fingerprint, "
             "which the demo checks). `scripts/pretrain.sh` reruns the commands below from "
             "scratch (about 4 hours of one core here, minutes on a GPU); a resumed run "
             "continues exactly where it stopped. config.json records the SHA-256 of "
             "model.safetensors, which `load_run` checks.", ""]
    specs = ((work / "teacher", "demo128", "train", TrainConfig,
              {"data": "runs/pretrain/data", "out": "runs/pretrain/teacher"}),
             (work / "student", "demo128_student", "distill", DistillConfig,
              {"teacher": "runs/pretrain/teacher", "out": "runs/pretrain/student"}),
             (work / "student_adv", "demo128_adv", "distill", DistillConfig,
              {"teacher": "runs/pretrain/teacher", "out": "runs/pretrain/student_adv",
               "init": "runs/pretrain/student", "anchor_run": "runs/pretrain/student"}),
             (work / "student_lean", "demo128_lean", "distill", DistillConfig,
              {"teacher": "runs/pretrain/teacher", "out": "runs/pretrain/student_lean",
               "anchor_run": "runs/pretrain/student_adv"}),
             (work / "student_lean_sto", "demo128_lean_sto", "distill", DistillConfig,
              {"teacher": "runs/pretrain/teacher", "out": "runs/pretrain/student_lean_sto",
               "init": "runs/pretrain/student_lean", "anchor_run": "runs/pretrain/student"}),
             (work / "student_lean_tex", "demo128_lean_tex", "distill", DistillConfig,
              {"teacher": "runs/pretrain/teacher", "out": "runs/pretrain/student_lean_tex",
               "init": "runs/pretrain/student_lean", "anchor_run": "runs/pretrain/student"}),
             (work / "student_lean_dose", "demo128_lean_dose", "distill", DistillConfig,
              {"teacher": "runs/pretrain/teacher", "out": "runs/pretrain/student_lean_dose",
               "init": "runs/pretrain/student_lean_tex", "anchor_run": "runs/pretrain/student"}))
    for src, name, cmd, cls, paths in specs:
        dst = root / name
        if (src / "config.json").is_file():
            if fp is None:
                raise SystemExit(f"{work / 'data'} is missing: the data the runs were trained on")
            load_run(src)  # it loads and verifies
            dst.mkdir(parents=True, exist_ok=True)
            for f in ("config.json", "model.safetensors", "log.csv", "adversarial.csv"):
                if (src / f).is_file():
                    shutil.copyfile(src / f, dst / f)
            atomic_write_text(dst / "data.json", json.dumps(fp, indent=1, sort_keys=True))
            if name in SHIPPED:
                model = json.loads((dst / "config.json").read_text())["model"]
                update_run_config(dst, model={**model, **SHIPPED[name]})
        elif not (dst / "config.json").is_file():
            print(f"{src}: no run and nothing shipped in {dst}: skipped")
            continue
        else:
            print(f"{src}: no run; {dst} kept as shipped")
        run = load_run(dst)
        size = sum(p.stat().st_size for p in dst.iterdir()) / 2**20
        recorded = json.loads((dst / "config.json").read_text())
        sha = (recorded.get("sha256") or {}).get("model.safetensors", "unrecorded")
        recorded = recorded.get("train") or recorded.get("distill") or run.train
        anchor = recorded.get("anchor_run") if recorded.get("method") == "oneshot" else None
        shipped = "".join(f"; shipped with {k} {v:g} (trained with {recorded.get(k, '?'):g})"
                          for k, v in SHIPPED.get(name, {}).items())
        lines += [f"## `{name}/` ({run.kind}, {run.image_size} px, {size:.1f} MB; "
                  f"{last_val(dst / 'log.csv', recorded.get('method'), bool(anchor))}; "
                  f"model.safetensors SHA-256 {sha[:16]}…{shipped})", "", "```bash",
                  command(cmd, cls, recorded, paths), "```", ""]
        print(f"{dst}: {size:.1f} MB")
    atomic_write_text(root / "README.md", "\n".join(lines))
    print(f"wrote {root / 'README.md'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pretrain")
