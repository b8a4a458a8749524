"""Run the trust cases of ``medshift translate`` (issue 31) and write their table into
docs/io_errors.md: real radiographs (pydicom-data's RG1_UNCI and RG3_UNCI, a 512² crop of RG1),
a 12-bit image in a 16-bit PNG and a CT slice, against the shipped runs and against a run
trained on other data -- each written, warned or refused naming the fix, with its exit status
and its one-line message.

    python scripts/trust_table.py          # fills the translate-trust block of docs/io_errors.md

tests/test_trust_table.py runs the same cases and checks that the block is what they print, so
the table can only say what the code does. Paths in messages are shown relative to the case's
temporary folder; the shipped runs are read from pretrained/.
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
DOC = ROOT / "docs" / "io_errors.md"
BLOCK = "translate-trust"
STUDENT = ROOT / "pretrained" / "demo128_lean_tex"  # measured on it (the demo's student until
# demo128_lean_dose; same network, so the same refusals and timings)
TEACHER = ROOT / "pretrained" / "demo128"
PAIR = ("real_low", "real_exposure")
OTHER = "a run trained on other data"


def rg(name: str) -> Path:
    """A pydicom-data radiograph (``SystemExit`` naming the package when it is missing)."""
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name, download=False)
    if p is None:
        raise SystemExit(f"{name} is missing: pip install pydicom-data")
    return Path(p)


#: (row, column) of the 512² crop of RG1_UNCI used in the docs: the right lung's masses
RG1_CROP = (800, 250)


def rg1_crop(path: Path, side: int = 512) -> Path:
    """The ``side``² crop of RG1_UNCI at ``RG1_CROP`` (lung masses, ribs), saved as a DICOM
    with its header."""
    import pydicom

    ds = pydicom.dcmread(rg("RG1_UNCI.dcm"))
    (r, c) = RG1_CROP
    a = ds.pixel_array[r:r + side, c:c + side].copy()
    ds.Rows, ds.Columns = a.shape
    ds.PixelData = a.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def png12(path: Path) -> Path:
    """RG1's 512² crop as 12-bit values (0..4095) in a 16-bit PNG that does not declare it
    (no sBIT): the common container mismatch."""
    import numpy as np
    from PIL import Image

    from medshift_fast.data import read_image

    x = read_image(rg1_crop(path.with_suffix(".dcm")))
    q = np.rint((x + 1.0) / 2.0 * 4095.0).astype(np.uint16)
    path.with_suffix(".dcm").unlink()
    Image.fromarray(q).save(path)
    return path


def ct(path: Path) -> Path:
    """pydicom's CT_small.dcm (an axial CT slice, Modality CT)."""
    import shutil

    from pydicom.data import get_testdata_file

    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(get_testdata_file("CT_small.dcm"), path))


def other_run(path: Path) -> Path:
    """A run trained on other data: native-grid crops of dark, low-contrast frames (the
    simulator's views with their intensities compressed into [-1, -0.4], as a fluoroscopy
    detector's raw frames look). Its weights are untrained (the trust cases decide before the
    network matters); its ``learned`` record is computed as ``medshift train`` computes it."""
    import numpy as np
    import torch

    from medshift_fast.data import DOMAINS, simulate
    from medshift_fast.data.io import read_image
    from medshift_fast.models import build_model
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig
    from medshift_fast.translate.learned import domain_stats, record

    data = simulate(path.with_name(path.name + "_data"), subjects=1, views=2, size=64,
                    progress=False)
    stats = {}
    for d in DOMAINS:
        imgs = [-1.0 + 0.3 * (read_image(f) + 1.0) for f in sorted((data / d).glob("*.png"))]
        stats[d] = domain_stats(imgs, {"png:16": len(imgs)})
    torch.manual_seed(0)
    m = build_model("tiny", num_classes=len(DOMAINS), model_channels=16, head_channels=16)
    learned = record("native", 32, None, 32, stats)
    assert np.isfinite(stats[PAIR[0]]["percentiles"]["50"])
    return save_run(path, TrainConfig(image_size=32), m.config, DOMAINS, m.state_dict(),
                    extra={"learned": learned})


#: the inputs: name -> (what it is, how to build it in a folder)
INPUTS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "rg1": ("RG1_UNCI (1955×1841 CR, 15-bit)", lambda w: rg("RG1_UNCI.dcm")),
    "rg3": ("RG3_UNCI (1760² CR, 10-bit)", lambda w: rg("RG3_UNCI.dcm")),
    "crop": ("512² crop of RG1_UNCI", lambda w: rg1_crop(w / "rg1_512.dcm")),
    "png12": ("12-bit values in a 16-bit PNG (no sBIT)", lambda w: png12(w / "rg1_12bit.png")),
    "ct": ("CT slice (CT_small.dcm)", lambda w: ct(w / "ct.dcm")),
}


@dataclass(frozen=True)
class Case:
    """One input (a key of ``INPUTS``) against one run, with flags, and its documented
    outcome."""

    input: str
    run: str  # "student" | "teacher" | "other"
    flags: tuple[str, ...]
    expect: str  # written | warned | refused

    @property
    def what(self) -> str:
        return INPUTS[self.input][0]

    def build(self, w: Path) -> Path:
        return INPUTS[self.input][1](w)


_OTHER: dict[str, Path] = {}  # the run trained on other data: built once per process


def _run_dir(case: Case) -> Path:
    if case.run != "other":
        return {"student": STUDENT, "teacher": TEACHER}[case.run]
    if "run" not in _OTHER or not (_OTHER["run"] / "config.json").is_file():
        _OTHER["run"] = other_run(Path(tempfile.mkdtemp(prefix="medshift_other_")) / "other")
    return _OTHER["run"]


def argv(case: Case, w: Path) -> list[str]:
    steps = ["--steps", "1"] if case.run == "other" else []
    return ["translate", "--checkpoint", str(_run_dir(case)), "--source", PAIR[0],
            "--target", PAIR[1], "--out", str(w / "out"), "--no-progress", *steps,
            *case.flags, str(case.build(w / "in"))]


RUNS = {"student": f"shipped `{STUDENT.name}` (student)", "teacher": "shipped `demo128` (teacher)",
        "other": OTHER}
CASES = (
    Case("rg1", "student", (), "refused"),
    Case("rg1", "student", ("--size", "learned"), "warned"),
    Case("rg3", "student", (), "refused"),
    Case("rg3", "teacher", ("--size", "128"), "written"),
    Case("crop", "student", (), "warned"),
    Case("crop", "student", ("--size", "native"), "warned"),
    Case("png12", "student", (), "refused"),
    Case("png12", "student", ("--input-bits", "12"), "warned"),
    Case("crop", "other", (), "warned"),
    Case("crop", "other", ("--intensity", "match"), "written"),
    Case("png12", "other", (), "refused"),
    Case("ct", "other", ("--allow-modality", "CT"), "refused"),
    Case("ct", "other", ("--allow-modality", "CT", "--intensity", "as-is"), "written"),
)


def run_case(case: Case) -> tuple[int, str, list[str]]:
    """(exit status, outcome: written | warned | refused, the one-line messages with the
    command prefix cut and the temporary folder shown as '.')."""
    import torch

    from medshift_fast.cli import main

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        err = StringIO()
        with redirect_stderr(err), redirect_stdout(StringIO()):
            rc = main(argv(case, w))
        lines = err.getvalue().splitlines()
    keep = [ln.split(": ", 1)[1] for ln in lines
            if ln.startswith("medshift translate: ") and (": error: " in ln or ": warning: " in ln)]
    for p in sorted({tmp, str(Path(tmp).resolve()), str(ROOT / "pretrained"),
                     str(rg("RG1_UNCI.dcm").parent), str(_run_dir(case).parent)},
                    key=len, reverse=True):
        keep = [k.replace(p + "/", "").replace(p, ".") for k in keep]
    outcome = "refused" if rc else ("warned" if any(k.startswith("warning:") for k in keep)
                                    else "written")
    return rc, outcome, keep


HEADER = ["| input | run | flags | exit | outcome | the one-line message(s) |",
          "|---|---|---|---|---|---|"]


def row(case: Case, rc: int, outcome: str, lines: list[str]) -> str:
    """One case's row of the table."""
    text = "<br>".join(f"`{ln}`" for ln in lines) or "-"
    flags = " ".join(case.flags) or "-"
    return (f"| {case.what} | {RUNS[case.run]} | `{flags}` | {rc} | {outcome} | "
            f"{text.replace('|', '/')} |")


def render(results) -> str:
    """The markdown table of ``[(case, rc, outcome, lines)]``."""
    return "\n".join(HEADER + [row(*r) for r in results]) + "\n"


def results():
    return [(c, *run_case(c)) for c in CASES]


def main() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from _blocks import fill_block

    res = results()
    bad = [(c.what, c.flags, c.expect, o) for c, _, o, _ in res if o != c.expect]
    if bad:
        raise SystemExit(f"cases not as documented: {bad}")
    fill_block(DOC, BLOCK, render(res), required=True)
    print(json.dumps({"cases": len(CASES), "doc": str(DOC)}))


if __name__ == "__main__":
    main()
