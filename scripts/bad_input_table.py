"""Run the data-safety bad-input cases and write their table into docs/data.md.

Each case builds a tiny input in a temporary folder, runs the command through
``medshift_fast.cli.main`` and records its exit status and the one stderr line (paths shown
relative to the temporary folder). ``python scripts/bad_input_table.py`` fills the
``bad-input-safety`` block of docs/data.md; tests/test_bad_input_table.py runs the same cases and
checks that the block is what they print, so the table can only say what the code does.
"""

from __future__ import annotations

import json
import re
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
EXCERPT = 200  # characters of the message shown (its beginning and its end)


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


def _quiet(argv: list[str]) -> int:
    """Run a command whose output is not the case (the set-up of one)."""
    from medshift_fast.cli import main

    with redirect_stderr(StringIO()), redirect_stdout(StringIO()):
        return main(argv)


def _translate(run: Path, out: Path, *extra: str) -> list[str]:
    return ["translate", "--checkpoint", str(run), "--source", "synthetic_low", "--target",
            "real_normal", "--out", str(out), "--steps", "1", "--no-progress", *extra]


def _folder_with_a_nan(w: Path) -> Path:
    import numpy as np
    import tifffile

    folder = _pngs(w / "scans", ("a",), 3) / "a"
    bad = np.zeros((8, 8), np.float32)
    bad[2, 2] = np.nan
    tifffile.imwrite(folder / "1bad.tif", bad)
    return folder


def _huge_png(w: Path) -> list[str]:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    side, z = 20000, zlib.compressobj(1)
    row = bytes(side + 1)
    idat = b"".join([z.compress(row) for _ in range(side)] + [z.flush()])
    p = w / "huge.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8,
                                                                    0, 0, 0, 0))
                  + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return _translate(_run(w / "run"), w / "out", str(p))


def _resumed(w: Path, edit: str) -> list[str]:
    folder, run = _pngs(w / "scans", ("a",), 3) / "a", _run(w / "run")
    _quiet(_translate(run, w / "out", str(folder)))
    if edit == "output":
        (w / "out" / "0_real_normal.png").write_bytes((w / "out" / "1_real_normal.png")
                                                      .read_bytes())
        return _translate(run, w / "out", "--resume", str(folder))
    return _translate(run, w / "out", "--resume", "--tau", "0.45", str(folder))


def _rgb_in_data(w: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    data = _pngs(w / "data")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "real_normal" / "rgb.png")
    return _train(data, w / "run")


def _five_domains(w: Path) -> list[str]:
    import torch

    from medshift_fast.data import DOMAINS
    from medshift_fast.models import build_model
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig

    torch.manual_seed(0)
    m = build_model("tiny", num_classes=5, model_channels=16, head_channels=16)
    save_run(w / "t", TrainConfig(image_size=16, data=str(_pngs(w / "data"))), m.config,
             DOMAINS, m.state_dict())
    return ["distill", "--teacher", str(w / "t"), "--out", str(w / "st"), "--no-progress"]


def _evaluate(w: Path, student: bool, *extra: str) -> list[str]:
    import torch

    from medshift_fast.data import DOMAINS, simulate
    from medshift_fast.models import build_model
    from medshift_fast.models.student import Student, StudentConfig
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig

    torch.manual_seed(0)
    m = build_model("tiny", num_classes=5, model_channels=16, head_channels=16)
    run = save_run(w / "run", TrainConfig(image_size=16), m.config, DOMAINS, m.state_dict())
    if student:
        st = Student(StudentConfig(unet=m.config.to_dict(), pairs=((2, 4),)))
        st.init_from_teacher(m)
        run = save_run(w / "st", {"image_size": 16}, st.config.to_dict(), DOMAINS,
                       st.state_dict(), kind="student")
    data = w if student else simulate(w / "sim", subjects=3, views=6, size=16, progress=False)
    return ["evaluate", "--checkpoint", str(run), "--data", str(data), "--source", "real_low",
            "--target", "real_exposure", "--out", str(w / "ev"), "--no-progress", *extra]


def _edited_config(w: Path) -> list[str]:
    data = _pngs(w / "data", n=8)
    assert _quiet(_train(data, w / "run")) == 0
    cfg = json.loads((w / "run" / "config.json").read_text())
    cfg["train"]["batch_size"] = "2"
    (w / "run" / "config.json").write_text(json.dumps(cfg))
    return ["train", "--out", str(w / "run"), "--resume", "--steps", "2", "--no-progress"]


def _utility(w: Path, *extra: str, drop_label: bool = False) -> list[str]:
    import csv

    from medshift_fast.data import simulate

    data = simulate(w / "data", subjects=3, views=2, size=16, progress=False)
    if drop_label:  # the label of the training view
        rows = list(csv.DictReader(open(data / "manifest.csv")))
        (data / next(r["labels"] for r in rows if r["split"] == "train")).unlink()
    return ["utility", "--checkpoint", str(_run(w / "run")), "--data", str(data), "--source",
            "synthetic_low", "--target", "real_normal", "--out", str(w / "u"), "--no-progress",
            "--min-test-images", "1", *extra]


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
    Case("a wrong-typed value in a run's config.json (`\"batch_size\": \"2\"`), resumed",
         "train", _edited_config),
    Case("a folder with one bad file (pixels NaN) among good ones, without `--skip-bad`: "
         "nothing is written", "translate",
         lambda w: _translate(_run(w / "run"), w / "out", str(_folder_with_a_nan(w)))),
    Case("a valid PNG of 20000 x 20000 px", "translate", _huge_png),
    Case("`--resume` into a folder without an earlier run", "translate",
         lambda w: _translate(_run(w / "run"), w / "new", "--resume",
                              str(_pngs(w / "scans", ("a",), 1) / "a"))),
    Case("`--resume` with settings the earlier run did not use", "translate",
         lambda w: _resumed(w, "tau")),
    Case("`--resume` when an output was changed after its run wrote it", "translate",
         lambda w: _resumed(w, "output")),
    Case("`--input scans/` (flags are never abbreviated: not `--input-bits`)", "translate",
         lambda w: _translate(_run(w / "run"), w / "out", "--input", "scans/")),
    Case("a colour image in the dataset (train has no `--allow-rgb`)", "train", _rgb_in_data),
    Case("a teacher of more than two domains without `--pairs`", "distill", _five_domains),
    Case("a distilled student with the default baselines (SDEdit, inversion), before any data "
         "is read", "evaluate", lambda w: _evaluate(w, True)),
    Case("`--max-images 4` (FID-ENL0 / KID on n < 16)", "evaluate",
         lambda w: _evaluate(w, False, "--max-images", "4")),
    Case("a label folder that does not match the images (a view's label missing)", "utility",
         lambda w: _utility(w, drop_label=True)),
    Case("labels of the wrong kind (float maps for `--task segmentation`)", "utility",
         lambda w: _utility(w, "--task", "segmentation", "--label", "bone_mm")),
    Case("a run that does not know `--target`", "utility",
         lambda w: _utility(w, "--target", "real_low")),
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
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("medshift")]
    msg = lines[-1].split("error: ", 1)[-1] if lines else ""
    for p in sorted({tmp, str(Path(tmp).resolve())}, key=len, reverse=True):
        msg = msg.replace(p + "/", "").replace(p, ".")
    msg = re.sub(r"\d{8}T\d{6}Z-[0-9a-f]{4}", "<run id>", msg)  # a translate run's id
    return rc, msg


def _excerpt(msg: str) -> str:
    """The message, or its beginning and its end (what is wrong, and the fix) when long."""
    if len(msg) <= EXCERPT:
        return msg
    head = msg[:EXCERPT * 3 // 5].rsplit(" ", 1)[0]
    tail = msg[-(EXCERPT * 2 // 5):].split(" ", 1)[-1]
    return f"{head} ... {tail}"


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
