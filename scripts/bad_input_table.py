"""Run the data-safety bad-input cases and write their table into docs/data.md.

Each case builds a tiny input in a temporary folder, runs the command through
``medshift_fast.cli.main`` and records its exit status and the one stderr line (paths shown
relative to the temporary folder). ``python scripts/bad_input_table.py`` fills the
``bad-input-safety`` block of docs/data.md; tests/test_bad_input_table.py runs the same cases and
checks that the block is what they print, so the table can only say what the code does.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "data.md"
BLOCK = "bad-input-safety"
EXCERPT = 150  # characters of the message shown


@dataclass(frozen=True)
class Case:
    """One bad input: what it is, the command, and how to build it in a folder ``w``."""

    what: str
    command: str
    argv: Callable[[Path], list[str]]


# --- tiny inputs ---------------------------------------------------------------------------------
def _pngs(root: Path, folders=("synthetic_low", "real_normal"), n: int = 2) -> Path:
    import numpy as np

    from medshift_fast.data import write_png16

    rng = np.random.default_rng(0)
    for d in folders:
        for i in range(n):
            write_png16(root / d / f"{i}.png", rng.uniform(-1, 1, (8, 8)))
    return root


def _run(path: Path) -> Path:
    import torch

    from medshift_fast.models import build_model
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig

    torch.manual_seed(0)
    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16)
    return save_run(path, TrainConfig(image_size=16), m.config, ("synthetic_low", "real_normal"),
                    m.state_dict())


def _sim(w: Path) -> Path:
    from medshift_fast.data import simulate

    return simulate(w / "data", subjects=1, views=1, size=16, progress=False)


TRAIN = ["--steps", "1", "--batch-size", "2", "--image-size", "8", "--no-progress"]


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), *TRAIN, *extra]


def _export(run: Path, out: Path) -> list[str]:
    return ["export", "--checkpoint", str(run), "--format", "onnx", "--out", str(out),
            "--source", "synthetic_low", "--target", "real_normal", "--device", "cpu"]


def _user_folder(w: Path) -> Path:
    (w / "mine").mkdir()
    (w / "mine" / "notes.txt").write_text("mine")
    return w / "mine"


def _previous_demo(w: Path) -> Path:
    out = w / "demo"
    (out / "run").mkdir(parents=True)
    (out / "demo.json").write_text("{}")
    (out / "report.md").write_text("# medshift_fast demo\n")
    return out


def _existing_engine(w: Path) -> list[str]:
    (w / "t.onnx").write_bytes(b"an engine")
    return _export(_run(w / "run"), w / "t.onnx")


def _flipped(w: Path) -> list[str]:
    run = _run(w / "run")
    b = bytearray((run / "model.safetensors").read_bytes())
    b[-4] ^= 1
    (run / "model.safetensors").write_bytes(bytes(b))
    return _export(run, w / "t.onnx")


def _earlier_log(w: Path) -> list[str]:
    (w / "out").mkdir()
    (w / "out" / "log.csv").write_text("step\n")
    return _train(_pngs(w / "data"), w / "out")


def _nested(w: Path) -> list[str]:
    return _train(_pngs(w / "data", ("Real/Low", "Real/High", "Sim")), w / "run")


def _no_images(w: Path) -> list[str]:
    data = _pngs(w / "data", ("real_low",))
    (data / "real_normal").mkdir()
    (data / "real_normal" / "notes.txt").write_text("x")
    return _train(data, w / "run")


CASES = (
    Case("`--out` is `--data`, or inside it (with or without `--overwrite`)", "train",
         lambda w: _train(_pngs(w / "data"), w / "data" / "runs" / "r", "--overwrite")),
    Case("`--out` holds a file an earlier run writes (e.g. log.csv)", "train", _earlier_log),
    Case("`--out` is `--teacher`", "distill",
         lambda w: ["distill", "--teacher", str(_run(w / "t")), "--out", str(w / "t"),
                    "--overwrite", "--no-progress"]),
    Case("the engine (or its sidecar) already exists", "export", _existing_engine),
    Case("`--out` holds a previous demo's output", "demo",
         lambda w: ["demo", "--quick", "--no-progress", "--out", str(_previous_demo(w))]),
    Case("`--out` is a non-empty folder that is not a demo's (even with `--overwrite`)", "demo",
         lambda w: ["demo", "--quick", "--no-progress", "--overwrite", "--out",
                    str(_user_folder(w))]),
    Case("`--out` is a non-empty folder that is not a simulated dataset", "simulate",
         lambda w: ["simulate", "--out", str(_user_folder(w)), "--no-progress"]),
    Case("a flipped bit in model.safetensors (SHA-256 in config.json)", "any that loads a run",
         _flipped),
    Case("a nested tree without `--domain-map` (ROOT/Real/Low, ROOT/Real/High)", "train",
         _nested),
    Case("one domain only", "train",
         lambda w: _train(_pngs(w / "data", ("real_low",)), w / "run")),
    Case("a `--domain-map` key that matches no domain of manifest.csv", "train",
         lambda w: _train(_sim(w), w / "run", "--domain-map", "real_lo=real_low")),
    Case("`--domain-map` keys of which one contains the other", "train",
         lambda w: _train(_pngs(w / "data", ("Real/Low", "Sim")), w / "run", "--domain-map",
                          "Real=real,Real/Low=real_low,Sim=sim")),
    Case("a domain folder with files but no images (found by extension or content)", "train",
         _no_images),
    Case("`--minutes 0` (or negative, NaN, inf)", "train, distill, train-autoencoder",
         lambda w: _train(_pngs(w / "data"), w / "run", "--minutes", "0")),
)


def run_case(case: Case) -> tuple[int, str]:
    """(exit status, the stderr line with the command prefix cut and paths made relative)."""
    import torch

    from medshift_fast.cli import main

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        argv = case.argv(w)
        err = StringIO()
        with redirect_stderr(err), redirect_stdout(StringIO()):
            rc = main(argv)
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("medshift ")]
    msg = lines[-1].split("error: ", 1)[-1] if lines else ""
    for p in sorted({tmp, str(Path(tmp).resolve())}, key=len, reverse=True):
        msg = msg.replace(p + "/", "").replace(p, ".")
    return rc, msg


def _excerpt(msg: str) -> str:
    if len(msg) <= EXCERPT:
        return msg
    cut = msg[:EXCERPT].rsplit(" ", 1)[0]
    return cut + " ..."


def render(results) -> str:
    """The markdown table of ``[(case, rc, message)]``."""
    rows = ["| case | command | exit | message (excerpt) |", "|---|---|---|---|"]
    for case, rc, msg in results:
        text = _excerpt(msg).replace("|", "\\|").replace("`", "'")
        rows.append(f"| {case.what} | {case.command} | {rc} | `{text}` |")
    return "\n".join(rows) + "\n"


def results():
    return [(c, *run_case(c)) for c in CASES]


def main() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from _blocks import fill_block

    table = render(results())
    fill_block(DOC, BLOCK, table, required=True)
    print(json.dumps({"cases": len(CASES), "doc": str(DOC)}))


if __name__ == "__main__":
    main()
