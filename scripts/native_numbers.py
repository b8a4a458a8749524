"""The measured sections of docs/native.md (generated blocks; rerun this, never edit them).

    python scripts/native_numbers.py [--data DEMO_DATA] [--teacher-images 12]

1. ``tiled-vs-whole``: PSNR between the tiled (128-px tiles, overlap 32) and the whole-image
   translation of simulated radiographs at 256 and 384 px, for the shipped teacher and student:
   as shipped (with attention), without attention (their trained convolutions only: a local
   network), a random-weight local U-Net (the GroupNorm caveat), and with GroupNorm's
   statistics fixed too (strictly local: the tiling's own error).
2. ``demo-tiles``: the demo's metrics with tiles SMALLER than the 128-px test images (64-px
   tiles, overlap 16) against the whole-image translation, per pair, with paired bootstrap
   95 % intervals of the differences (``eval.stats``): how much attention context and per-tile
   statistics change the numbers, against the noise of the evaluation.
3. ``seams``: mean gradient magnitude on tile borders / elsewhere for a 2048² student
   translation, and docs/native_rg1.png (RG1_UNCI at native size, 100 % crop).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

TEACHER, STUDENT = ROOT / "pretrained" / "demo128", ROOT / "pretrained" / "demo128_student"
DOC = ROOT / "docs" / "native.md"


def _psnr(a, b) -> float:
    return 10 * math.log10(4.0 / max(float(((a - b) ** 2).mean()), 1e-20))


def _variants(run):
    """(name, LoadedRun) for the shipped run as is, without attention, strictly local."""
    import torch
    from torch import nn

    from medshift_fast.models.unet import AttentionBlock
    from medshift_fast.run import LoadedRun

    class Skip(nn.Module):
        def forward(self, x):
            return x

    class FixedNorm(nn.Module):
        def __init__(self, gn):
            super().__init__()
            self.gn = gn

        def forward(self, x):
            return x * self.gn.weight[None, :, None, None] * 0.5 + self.gn.bias[None, :, None,
                                                                                 None]

    def swap(m, cls, make):
        for mod in list(m.modules()):
            for name, child in list(mod.named_children()):
                if isinstance(child, cls):
                    setattr(mod, name, make(child))
        return m

    local = swap(copy.deepcopy(run.model), AttentionBlock, lambda c: Skip()).eval()
    strict = swap(copy.deepcopy(local), nn.GroupNorm, FixedNorm).eval()

    def wrap(net):
        return LoadedRun(None, net, run.model_config, run.domains, run.config, run.codec,
                         run.kind)

    out = [("as shipped (attention)", wrap(run.model)), ("no attention (trained)", wrap(local)),
           ("no attention, fixed norm stats", wrap(strict))]
    if run.kind == "flow":
        from medshift_fast.models import build_model

        torch.manual_seed(0)
        rnd = build_model("tiny", num_classes=5, attention_ds=(), mid_attention=False)
        with torch.no_grad():
            for p in rnd.parameters():
                if p.dim() > 1 and p.abs().sum() == 0:
                    p.normal_(0, 0.02)
        out.append(("random-weight local U-Net", LoadedRun.from_model(rnd.eval(), run.domains,
                                                                     image_size=128)))
    return out


def tiled_vs_whole() -> str:
    import torch

    from medshift_fast.data import read_image, simulate
    from medshift_fast.run import load_run
    from medshift_fast.translate import Translator

    rows = ["| network | path | side | PSNR tiled vs whole (dB) | PSNR whole vs source (dB) |",
            "|---|---|---|---|---|"]
    for side in (256, 384):
        d = Path(tempfile.mkdtemp())
        simulate(d, subjects=1, views=1, size=side, seed=side, progress=False)
        x = torch.from_numpy(read_image(next((d / "real_low").glob("*.png"))))[None, None]
        x = x[..., :, : side - 64]
        for kind, path in (("teacher", TEACHER), ("student", STUDENT)):
            for name, run in _variants(load_run(path)):
                whole = Translator(run, "real_low", "real_exposure", tile=None).translate(x)
                tiled = Translator(run, "real_low", "real_exposure", tile=128).translate(x)
                rows.append(f"| {name} | {kind} | {side}x{side - 64} | {_psnr(tiled, whole):.1f} "
                            f"| {_psnr(whole, x):.1f} |")
                print(rows[-1], flush=True)
    return "\n".join(rows)


def demo_tiles(data: Path, teacher_images: int) -> str:
    import numpy as np
    import torch

    from medshift_fast import eval as E
    from medshift_fast.data import FolderDataset
    from medshift_fast.eval import stats as S
    from medshift_fast.run import load_run
    from medshift_fast.translate import Translator

    pairs = (("synthetic_low", "real_normal"), ("real_low", "real_exposure"))
    fx = E.ENL0Features(batch_size=64)
    out = ["| pair | run | n | metric | whole (128) | 64-px tiles | tiled − whole [95 % CI] |",
           "|---|---|---|---|---|---|---|"]
    for src, tgt in pairs:
        def load(domain, split):
            ds = FolderDataset(data, size=128, split=split, domains=(domain,))
            return torch.stack([ds[i][0] for i in range(len(ds))]), [s.view_id for s in
                                                                      ds.samples]
        xs, keys = load(src, "test")
        xt, tkeys = load(tgt, "test")
        gt = xt[torch.tensor([tkeys.index(k) for k in keys])]
        ref, _ = load(tgt, "train")
        f_ref = fx(ref)
        nps_ref = E.noise_power_spectrum(ref)
        for kind, path, n in (("student", STUDENT, xs.shape[0]),
                              ("teacher", TEACHER, min(teacher_images, xs.shape[0]))):
            run = load_run(path)
            res = {}
            for how, tile in (("whole", None), ("tiled", 64)):
                tr = Translator(run, src, tgt, tile=tile, overlap=16 if tile else None)
                t0 = time.perf_counter()
                res[how] = torch.cat([tr.translate(xs[k:k + 8]) for k in range(0, n, 8)])
                print(f"{src}->{tgt} {kind} {how}: {time.perf_counter() - t0:.0f} s", flush=True)
            idx = S.bootstrap_indices(n)
            g = gt[:n]
            per = {h: np.array([float(E.psnr(res[h][i:i + 1], g[i:i + 1])) for i in range(n)])
                   for h in res}
            ssim = {h: np.array([float(E.ssim(res[h][i:i + 1], xs[i:i + 1])) for i in range(n)])
                    for h in res}
            feats = {h: fx(res[h]) for h in res}
            nps = {h: S.NPSStat(S.per_image_nps(res[h]), nps_ref.nps.numpy()) for h in res}
            fid = {h: S.FIDStat(feats[h], f_ref) for h in res}
            full = np.arange(n)
            metrics = [("PSNR vs true target (dB)", per["whole"].mean(), per["tiled"].mean(),
                        S.paired_mean_diff(per["tiled"], per["whole"], idx)),
                       ("SSIM vs source", ssim["whole"].mean(), ssim["tiled"].mean(),
                        S.paired_mean_diff(ssim["tiled"], ssim["whole"], idx)),
                       ("NPS distance", nps["whole"](full), nps["tiled"](full),
                        S.paired_stat_diff(nps["tiled"], nps["whole"], idx)),
                       ("FID-ENL0", fid["whole"](full), fid["tiled"](full),
                        S.paired_stat_diff(fid["tiled"], fid["whole"], idx))]
            agree = float(np.mean([_psnr(res["tiled"][i], res["whole"][i]) for i in range(n)]))
            out.append(f"| {src} → {tgt} | {kind} | {n} | PSNR tiled vs whole (dB) | – | – | "
                       f"{agree:.1f} (mean over images) |")
            for name, a, b, d in metrics:
                out.append(f"| {src} → {tgt} | {kind} | {n} | {name} | {a:.3f} | {b:.3f} | "
                           f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] |")
            print("\n".join(out[-5:]), flush=True)
    return "\n".join(out)


def seams() -> str:
    import numpy as np
    import torch

    from medshift_fast.data import read_image
    from medshift_fast.demo.native import NATIVE_FILE, _figure
    from medshift_fast.run import load_run
    from medshift_fast.translate import Translator
    from medshift_fast.translate.tiling import plan_grid

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_native import _radiograph

    tr = Translator(load_run(STUDENT), "real_low", "real_exposure")
    x = torch.from_numpy(_radiograph(2048, 2048))[None, None]
    t0 = time.perf_counter()
    y = tr.translate(x)[0, 0].numpy()
    dt = time.perf_counter() - t0
    g = plan_grid(y.shape, 128, 32, 4)

    def ratio(img):
        gy, gx = np.abs(np.diff(img, axis=0)), np.abs(np.diff(img, axis=1))
        rows = sorted({o - 1 for o in g.ys[1:]} | {o + 127 for o in g.ys[:-1]})
        cols = sorted({o - 1 for o in g.xs[1:]} | {o + 127 for o in g.xs[:-1]})
        mr = np.zeros(gy.shape[0], bool)
        mr[rows] = True
        mc = np.zeros(gx.shape[1], bool)
        mc[cols] = True
        on = np.concatenate([gy[mr].ravel(), gx[:, mc].ravel()])
        off = np.concatenate([gy[~mr].ravel(), gx[:, ~mc].ravel()])
        return on.mean() / off.mean()

    lines = [f"- 2048×2048 student translation ({g.n_tiles} tiles, {dt:.0f} s here): mean "
             f"gradient magnitude on tile borders ÷ elsewhere = {ratio(y):.3f} (target ≤ 1.05; "
             f"the input's own ratio on the same lines: {ratio(x[0, 0].numpy()):.3f})"]
    try:
        from pydicom.data import get_testdata_file

        src = get_testdata_file(NATIVE_FILE, download=False)
    except Exception:  # noqa: BLE001
        src = None
    if src is not None:
        xr = read_image(src)
        t0 = time.perf_counter()
        yr = tr.translate(torch.from_numpy(xr)[None, None])[0, 0].numpy()
        dt = time.perf_counter() - t0
        _figure(ROOT / "docs" / "native_rg1.png", xr, yr)
        lines.append(f"- {NATIVE_FILE} ({xr.shape[0]}×{xr.shape[1]}) at native size: "
                     f"{dt:.0f} s, {tr.last_plan.n_tiles} tiles; figure: native_rg1.png")
    return "\n".join(lines)


def main(argv=None) -> int:
    from _blocks import fill_block

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="the demo's simulated data (default: simulate it)")
    ap.add_argument("--teacher-images", type=int, default=12)
    ap.add_argument("--only", choices=("tiled-vs-whole", "demo-tiles", "seams"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if a.only in (None, "seams"):
        fill_block(DOC, "seams", seams(), required=True)
    if a.only in (None, "tiled-vs-whole"):
        fill_block(DOC, "tiled-vs-whole", tiled_vs_whole(), required=True)
    if a.only in (None, "demo-tiles"):
        data = Path(a.data) if a.data else None
        if data is None:
            from medshift_fast.data import simulate

            data = Path(tempfile.mkdtemp()) / "data"
            simulate(data, subjects=40, views=6, size=128, seed=0, progress=False)
        fill_block(DOC, "demo-tiles", demo_tiles(data, a.teacher_images), required=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
