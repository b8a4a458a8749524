"""How often the shipped teacher and student invent compact structures (issue 31).

The count is the one ``medshift translate`` writes per image into its manifest
(``translate.checks.count_hallucinations``: new compact structures of the output that the source
does not have beyond its noise, on the working grid). It is measured

* on the demo's data at the scale the runs learned (128 px): new subjects of the demo's
  simulator (``SUBJECTS``, never trained on), both shipped pairs, with the simulator's own
  pixel-aligned rendering of the target domain as a control (a true domain change, nothing
  invented: what the detector counts there is its false-alarm level);
* on pydicom-data's radiographs at native size (``--size native``, each run's own tiles): RG1_UNCI
  and RG3_UNCI whole (the student) and their 512² crops (teacher and student), pair
  real_low -> real_exposure.

It writes the ``hallucination-counts`` block of docs/native.md and the figures
docs/hallucination_rg1.png (100 % crops of RG1's lung masses: source, teacher, student, the
counted pixels outlined, and a 4x zoom of each) and docs/hallucination_rg1_flat.png (the
student on the whole RG1: its flat abdomen at 100 %). Needs the detector at
``medshift_fast/translate/hallucination.py`` (see ``translate.checks.count_hallucinations``).

    OMP_NUM_THREADS=1 python scripts/hallucination_numbers.py [--no-full-teacher]

Resumable: every row (and the figure's translations) is cached under ``runs/hallucination/``
as it is computed, so an interrupted run continues, and the teacher's whole-radiograph rows
(about an hour of one contended core each) can be added by a later run without
``--no-full-teacher``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
TEACHER = ROOT / "pretrained" / "demo128"
STUDENT = ROOT / "pretrained" / "demo128_lean_tex"  # measured on it (the demo's student until
# demo128_lean_dose: rerun with that name to score the new default)
PAIRS = (("synthetic_low", "real_normal"), ("real_low", "real_exposure"))
SUBJECTS = (40, 41)  # the demo's simulator trained the runs on subjects 0..39
DOC, FIG = ROOT / "docs" / "native.md", ROOT / "docs" / "hallucination_rg1.png"
FIG_FLAT = ROOT / "docs" / "hallucination_rg1_flat.png"
FLAT_BOX = (1630, 760, 320)  # (row, column, side) in RG1_UNCI: the abdomen below the diaphragm
CACHE = ROOT / "runs" / "hallucination"
FIG_BOX = (96, 96, 288)  # (row, column, side) of the 100 % crop inside RG1's 512² crop


def _detector():
    from medshift_fast.translate import hallucination

    return hallucination


def _count(x: torch.Tensor, y: torch.Tensor) -> dict:
    from medshift_fast.translate.checks import count_hallucinations

    return count_hallucinations(x[0, 0], y[0, 0])


def _translator(run: Path, src: str, tgt: str):
    from medshift_fast.translate import Translator

    return Translator(run, src, tgt, device="cpu")


def _precision(tr) -> str:
    """How this machine runs ``tr`` (``auto``: bf16 or fp32) -- part of every cache key, since
    bf16's rounding changes what is counted."""
    tr.engine  # noqa: B018 - a student resolves its precision here
    return "bf16" if tr.bf16 else "fp32"


def _cached(key: str, compute):
    """The JSON row cached under ``key``, or ``compute()`` cached now."""
    path = CACHE / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    row = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(path)
    return row


def demo_rows() -> list[dict]:
    """Counts per image on new subjects at 128 px: teacher, student, the true target."""
    prec = "-".join(_precision(_translator(STUDENT, *p)) for p in PAIRS)
    return _cached(f"demo_{TEACHER.name}_{STUDENT.name}_{prec}", _demo_rows)


def _demo_rows() -> list[dict]:
    from medshift_fast.data.simulator import SimConfig, render_subject

    cfg = SimConfig(subjects=40, views=6, size=128, seed=0)  # scripts/pretrain.sh's data
    views = [render_subject(cfg, s) for s in SUBJECTS]
    rows = []
    for src, tgt in PAIRS:
        xs = torch.cat([v[src] for v in views]).float()[:, None]
        ts = torch.cat([v[tgt] for v in views]).float()[:, None]
        outs = {"true target (simulator)": ts}
        for name, run in (("teacher", TEACHER), ("student", STUDENT)):
            tr = _translator(run, src, tgt)
            outs[name] = torch.cat([tr.translate(x[None]) for x in xs])
        for method, ys in outs.items():
            rows.append(_summary("demo, new subjects", "128 px (learned)", f"{src} -> {tgt}",
                                 method, [_count(x[None], y[None]) for x, y in zip(xs, ys)]))
    return rows


def _summary(data, scale, pair, method, counts: list[dict]) -> dict:
    n = len(counts)
    return {"data": data, "scale": scale, "pair": pair, "method": method, "images": n,
            "count": sum(c["count"] for c in counts) / n,
            "with_any": sum(c["count"] > 0 for c in counts),
            "area_px": sum(c["area_px"] for c in counts) / n,
            "max_z": max(c["max_z"] for c in counts)}


def radiographs(full_teacher: bool) -> tuple[list[dict], dict]:
    """Counts at native size on RG1 / RG3 (whole and 512² crops); the figure's images."""
    import tempfile

    from trust_table import RG1_CROP, rg, rg1_crop

    from medshift_fast.data.io import read_image

    src, tgt = PAIRS[1]
    with tempfile.TemporaryDirectory() as tmp:
        crop = read_image(rg1_crop(Path(tmp) / "rg1.dcm"))
    rg3 = read_image(rg("RG3_UNCI.dcm"))
    images = {"RG1_UNCI 512² crop (lung masses)": crop,
              "RG3_UNCI 512² crop": rg3[624:1136, 624:1136],
              "RG1_UNCI (1955×1841)": read_image(rg("RG1_UNCI.dcm")),
              "RG3_UNCI (1760×1760)": rg3}
    rows, fig = [], {"source": torch.from_numpy(crop)}
    for name, run in (("teacher", TEACHER), ("student", STUDENT)):
        tr = _translator(run, src, tgt)
        for k, (what, img) in enumerate(images.items()):
            if name == "teacher" and "crop" not in what and not full_teacher:
                continue
            x = torch.from_numpy(np.ascontiguousarray(img))[None, None]
            # the cache knows which run made it, and in which precision
            tag = f"radiograph{k}_{name}_{run.name}_{_precision(tr)}"
            keep = CACHE / f"{tag}.npy"  # the outputs, to look at

            def compute(x=x, tr=tr, what=what, name=name, keep=keep):
                t0 = time.perf_counter()
                if keep.is_file():  # translated before: count it again
                    y = torch.from_numpy(np.load(keep))[None, None]
                else:
                    y = tr.translate(x)
                    np.save(keep, y[0, 0].numpy())
                c = _count(x, y)
                print(f"{what} {name}: {c['count']} new structures "
                      f"({time.perf_counter() - t0:.0f} s, contended)", flush=True)
                return _summary(what, "native (tiled)", f"{src} -> {tgt}", name, [c])

            rows.append(_cached(tag, compute))
            if k in (0, 2) and (k == 0 or name == "student"):
                if not keep.is_file():  # a row cached before the outputs were kept
                    (CACHE / f"{tag}.json").unlink()
                    rows[-1] = _cached(tag, compute)
                if k == 0:
                    fig[name] = torch.from_numpy(np.load(keep))
                else:
                    fig["flat"] = (img, np.load(keep), FLAT_BOX)
    fig["box"], fig["crop_at"] = FIG_BOX, RG1_CROP
    return rows, fig


def _mask(source: torch.Tensor, output: torch.Tensor) -> np.ndarray:
    """The pixels the manifest's count counts (the detector's mask, in the same windows)."""
    from medshift_fast.translate.checks import count_windows

    det = _detector()
    m = np.zeros(tuple(source.shape), bool)
    for ry, rx in count_windows(*source.shape):
        m[ry, rx] = det.hallucination_mask(source[ry, rx], output[ry, rx])[0].numpy()
    return m


def _panel(img: np.ndarray, window: tuple[float, float], mask=None, zoom: int = 1):
    """One grey panel (``window`` -> 0..255), detected pixels outlined in red, ``zoom`` x."""
    from PIL import Image

    lo, hi = window
    g = np.clip((img - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    rgb = np.stack([g, g, g], -1)
    if mask is not None:
        m = mask
        rgb[m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1)
                  & np.roll(m, -1, 1))] = (255, 0, 0)
    im = Image.fromarray(rgb)
    return im.resize((im.width * zoom, im.height * zoom), Image.NEAREST) if zoom > 1 else im


def _sheet(rows: list[list[tuple[str, object]]], path: Path) -> None:
    """Rows of (title, panel) pasted on white with their titles."""
    from PIL import Image, ImageDraw

    pad, head = 8, 18
    w = max(sum(p.width + pad for _, p in r) + pad for r in rows)
    h = sum(max(p.height for _, p in r) + head + pad for r in rows) + pad
    out = Image.new("RGB", (w, h), "white")
    draw, y = ImageDraw.Draw(out), pad
    for r in rows:
        x = pad
        for title, p in r:
            draw.text((x, y), title, fill="black")
            out.paste(p, (x, y + head))
            x += p.width + pad
        y += max(p.height for _, p in r) + head + pad
    out.save(path)


def figures(fig: dict, zoom: int = 4) -> None:
    """docs/hallucination_rg1.png: RG1's lung masses, source | teacher | student at 100 % in
    the displayed window with the counted pixels outlined; below, the middle (side / zoom)² of
    each, ``zoom`` x, in the source's local window: the texture each adds, which a count of
    compact structures does not measure. docs/hallucination_rg1_flat.png: the student on the
    whole RG1, its flat bright abdomen at 100 % in the local window (where it puts most of its
    counted structures)."""
    r, c, side = fig["box"]
    rr, cc = fig["crop_at"]
    z0, zs = side // 2 - side // (2 * zoom), side // zoom
    src = fig["source"].numpy()
    local = tuple(np.percentile(src[r + z0:r + z0 + zs, c + z0:c + z0 + zs], (1, 99))
                  + np.array([-0.05, 0.05]))
    top, bottom = [], []
    for name, title in (("source", f"RG1_UNCI rows {rr + r}-{rr + r + side}, cols "
                                   f"{cc + c}-{cc + c + side}, 100 %"),
                        ("teacher", "teacher (demo128), native; counted: red"),
                        ("student", f"student ({STUDENT.name}), native; counted: red")):
        img = fig[name].numpy()
        m = None if name == "source" else _mask(fig["source"], fig[name])
        cut = (slice(r, r + side), slice(c, c + side))
        top.append((title, _panel(img[cut], (-1.0, 1.0), None if m is None else m[cut])))
        mid = (slice(r + z0, r + z0 + zs), slice(c + z0, c + z0 + zs))
        bottom.append((f"its middle {zs}x{zs} px, {zoom}x, local window",
                       _panel(img[mid], local, zoom=zoom)))
    _sheet([top, bottom], FIG)
    if "flat" in fig:
        x, y, (fr, fc, fs) = fig["flat"]
        m = _mask(torch.from_numpy(x), torch.from_numpy(y))
        cut = (slice(fr, fr + fs), slice(fc, fc + fs))
        win = tuple(np.percentile(x[cut], (1, 99)) + np.array([-0.03, 0.03]))
        _sheet([[(f"RG1 rows {fr}-{fr + fs}, cols {fc}-{fc + fs}", _panel(x[cut], win)),
                 ("student, native (counted: red)", _panel(y[cut], win, m[cut]))]], FIG_FLAT)


def render(rows: list[dict]) -> str:
    head = ["| data | scale | pair | translation | images | new structures / image | "
            "images with any | area / image (px) | largest z |", "|---" * 9 + "|"]
    for r in rows:
        head.append(f"| {r['data']} | {r['scale']} | {r['pair']} | {r['method']} | "
                    f"{r['images']} | {r['count']:.2f} | {r['with_any']} | {r['area_px']:.1f} | "
                    f"{r['max_z']:.1f} |")
    return "\n".join(head) + "\n"


def main(argv=None) -> None:
    from _blocks import fill_block

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-full-teacher", action="store_true",
                    help="skip the teacher on the whole radiographs (minutes of CPU each)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = demo_rows()
    more, fig = radiographs(not a.no_full_teacher)
    rows += more
    figures(fig)
    fill_block(DOC, "hallucination-counts", render(rows), required=True)
    print(json.dumps({"rows": len(rows), "doc": str(DOC), "figure": str(FIG)}))


if __name__ == "__main__":
    main()
