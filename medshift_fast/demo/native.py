"""The demo's last section: a real radiograph translated at its native size.

pydicom-data's ``RG1_UNCI.dcm`` (a 1955 x 1841 chest CR, MONOCHROME1, 15 bits stored; installed
by ``make install``) goes through the same file pipeline as ``medshift translate --size native``
with the shipped one-step student: read with its VOI window, translated on its own pixel grid in
128-px tiles blended with a smooth window, written back as a derived DICOM of the same geometry.
The report shows the input and the output whole and a 100 %-zoom crop of both, with the time,
the tiles and the peak resident memory of the translating process (a child: the CLI itself).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["NATIVE_FILE", "cli_in_child", "native_section"]

NATIVE_FILE = "RG1_UNCI.dcm"
PAIR = ("real_low", "real_exposure")
CROP = (560, 1250, 256, 256)  # (y, x, h, w) of the 100 % crop: left lung field, ribs, vessels


# The child reports its own peak: VmHWM of its (post-exec) address space. getrusage's ru_maxrss
# would not do: at exec the kernel carries the pre-exec image's high-water mark over (with
# vfork, the PARENT's), so a child of a 2 GB process "peaks" at 2 GB whatever it does.
_CHILD = """import resource, sys
from medshift_fast.cli import main
rc = main(sys.argv[2:])
try:
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
except OSError:  # no /proc: getrusage (may include the pre-exec image)
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
open(sys.argv[1], "w").write(str(hwm))
sys.exit(rc)
"""


def cli_in_child(args: list[str]) -> tuple[int, str, float]:
    """Run ``medshift ARGS`` in a fresh Python process; (exit code, its stderr, its own peak
    resident memory in MB — the translation's, not the caller's)."""
    with tempfile.TemporaryDirectory() as d:
        peak_file = Path(d) / "peak_kb"
        p = subprocess.run([sys.executable, "-c", _CHILD, str(peak_file), *args],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = float(peak_file.read_text()) / 1024.0 if peak_file.is_file() else float("nan")
    return p.returncode, p.stderr, peak


def _figure(path: Path, x, y, crop=CROP) -> None:
    """Input and output whole (downsampled for the page) above, and below a 100 % crop of each
    placed pixel for pixel (``figimage``), in one display window: the crop's p1..p99 of the
    input (so that texture is visible at 1:1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ch, cw = min(crop[2], x.shape[0]), min(crop[3], x.shape[1])  # inside a smaller image
    cy, cx = min(crop[0], x.shape[0] - ch), min(crop[1], x.shape[1] - cw)
    lo, hi = (float(v) for v in np.percentile(x[cy:cy + ch, cx:cx + cw], (1, 99)))
    w_px, h_px = 2 * cw + 3 * 24, 2 * 24 + 380 + ch + 30
    fig = plt.figure(figsize=(w_px / 100, h_px / 100), dpi=100)
    for k, (img, name) in enumerate(((x, "input"), (y, "one-step student, native size"))):
        left = (24 + k * (cw + 24)) / w_px
        ax = fig.add_axes([left, 1 - (24 + 380) / h_px, cw / w_px, 380 / h_px])
        ax.imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="antialiased")
        ax.add_patch(plt.Rectangle((cx, cy), cw, ch, fill=False, ec="tab:orange", lw=1.2))
        ax.set_title(f"{name}, {img.shape[0]}x{img.shape[1]}", fontsize=8)
        ax.axis("off")
        a = np.clip((img[cy:cy + ch, cx:cx + cw] - lo) / max(hi - lo, 1e-6), 0, 1)
        fig.figimage(a, xo=24 + k * (cw + 24), yo=24, cmap="gray", vmin=0, vmax=1, origin="upper")
        fig.text((24 + k * (cw + 24)) / w_px, (24 + ch + 6) / h_px,
                 f"{'input' if k == 0 else 'student'}: 100 % crop", fontsize=8)
    fig.text(24 / w_px, 6 / h_px, f"crops: rows {cy}-{cy + ch}, columns {cx}-{cx + cw}, 1:1 "
             f"pixels, display window {lo:+.2f}..{hi:+.2f} (the input crop's p1..p99)",
             fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def native_section(out: Path, student_dir: Path | None, log, progress: bool = False,
                   overwrite: bool = True) -> tuple[list[str], dict]:
    """Translate RG1_UNCI at native size with the shipped student into OUT/native/.

    Returns (report lines, timing entries); a missing file or student gives a one-line note.
    """
    from ..data import probe_image, read_image

    if student_dir is None:
        return ["- Native-size translation skipped: no shipped student."], {}
    try:
        from pydicom.data import get_testdata_file

        src = get_testdata_file(NATIVE_FILE, download=False)
    except Exception:  # noqa: BLE001 - a missing optional dataset is a note, not a failure
        src = None
    if src is None:
        return [f"- Native-size translation skipped: pydicom-data's {NATIVE_FILE} is not "
                "installed (`pip install pydicom-data`)."], {}
    dest = out / "native"
    log(f"translating the real radiograph {NATIVE_FILE} at native size with the shipped "
        f"student ({PAIR[0]} -> {PAIR[1]}) -> {dest}")
    args = ["translate", "--checkpoint", str(student_dir), "--source", PAIR[0], "--target",
            PAIR[1], "--size", "native", "--out", str(dest),
            *(["--overwrite"] if overwrite else []), *([] if progress else ["--no-progress"]),
            str(src)]
    t0 = time.perf_counter()
    rc, stderr, peak = cli_in_child(args)
    seconds = time.perf_counter() - t0
    if rc != 0:
        return [f"- Native-size translation FAILED: {(stderr.strip().splitlines() or ['?'])[-1]}"
                ], {"native_s": seconds}
    (manifest,) = dest.glob("manifest-*.csv")
    row = next(r for r in csv.DictReader(open(manifest)) if r["status"] == "written")
    y_path = dest / row["output"]
    x, y = read_image(src), read_image(y_path)
    _figure(out / "native_rg1.png", x, y)
    spacing = probe_image(src).spacing_mm
    warned = [ln.split(f"{Path(src).name}: ", 1)[-1] for ln in stderr.splitlines()
              if "warning" in ln]
    lines = [
        f"`{NATIVE_FILE}` (pydicom-data: a {x.shape[0]}×{x.shape[1]} chest CR, MONOCHROME1, "
        + (f"{spacing:g} mm pixels, " if spacing else "")
        + f"read through its VOI window) translated {PAIR[0]} → {PAIR[1]} by the shipped "
        f"one-step student at its native size by `medshift translate --size native`, in "
        f"{seconds:.0f} s: working grid {row['working_size']} ({row['scale']}), tiles "
        f"{row['tiles']}; written back as a derived DICOM of the same geometry "
        f"(`native/{y_path.name}`). Peak resident memory of that process: {peak:.0f} MB.",
        "",
        *([f"It said so (one line): “{warned[0]}”.", ""] if warned else []),
        "The model learned 128-px simulated skull images, so a chest film's textures are at a "
        "scale it never saw: the section shows the pipeline at a real radiograph's size and "
        "bit depth, not a validated chest translation.",
        "",
        "![native](native_rg1.png)",
    ]
    return lines, {"native_s": seconds, "native_peak_mb": peak}
