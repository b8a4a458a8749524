"""Simulator throughput: images/s per domain at 64 and 256 px (CPU).

Every view is rendered once per domain, so images/s per domain = views/s. Rendering runs with
one intra-op thread, as ``simulate`` does (the PNG writer pool uses the second core).
Three measurements:

* ``projection``: material line integrals of one view (6 views per call), the analytic
  ellipsoid projector vs the anchor ``voxel_reference`` (the phantom voxelised to 128^3 once,
  then trilinear ray marching with ``grid_sample``, 2 samples per voxel along each ray).
* ``render``: projection + all five physics chains for a subject's views, no disk I/O.
* ``simulate``: ``medshift_fast.data.simulate`` end to end (16-bit PNGs, manifest, json).

    pytest benchmarks/bench_simulate.py                   # pytest-benchmark
    python benchmarks/bench_simulate.py [--sizes 64 256] --md FILE   # one-shot (wall + CPU)

Anchor: ``voxel_reference`` for the projection; render and simulate are reported as rates.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

import _harness as H
import pytest
import torch

from medshift_fast.data.projector import (
    Geometry,
    line_integrals,
    make_rays,
    project_volume,
    voxelize,
)
from medshift_fast.data.simulator import (
    SimConfig,
    render_domains,
    simulate,
    subject_line_integrals,
    subject_views,
)

SIZES = (64, 256)
VIEWS = 6


def _projection_case(provider: str, size: int):
    cfg = SimConfig(size=size, views=VIEWS, subjects=1)
    _, prims, _ = subject_line_integrals(cfg, 0)
    geom = Geometry(cfg.geometry, cfg.sod, cfg.fov)
    views = subject_views(cfg, 0)
    if provider == "analytic":
        return lambda: line_integrals(prims, views, size * cfg.ss, geom)
    O, D = make_rays(views, size * cfg.ss, geom)
    vol = voxelize(prims, 128, 280.0)
    return lambda: project_volume(vol, 280.0, O, D, 256)


def _render_case(size: int):
    cfg = SimConfig(size=size, views=VIEWS, subjects=1)

    def run():
        _, _, L = subject_line_integrals(cfg, 0)
        for v in range(cfg.views):
            render_domains(L[v], cfg, [0, 0, v])

    return run


def _simulate_case(size: int, subjects: int):
    tmp = tempfile.mkdtemp(prefix="bench_sim_")

    def run():
        simulate(f"{tmp}/ds", subjects=subjects, views=VIEWS, size=size, progress=False,
                 overwrite=True)

    return run, tmp


@pytest.fixture(autouse=True)
def _one_thread():
    """simulate() renders with one intra-op thread (its ops are small); measure the same way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("provider", ["analytic", "voxel_reference"])
def test_projection(benchmark, provider, size):
    benchmark.group = f"simulate_projection_{size}px"
    H.pedantic(benchmark, _projection_case(provider, size), rounds=3,
               per_second={"views_per_s": VIEWS}, provider=provider, size=size, views=VIEWS)


@pytest.mark.parametrize("size", SIZES)
def test_render(benchmark, size):
    benchmark.group = "simulate_render"
    H.pedantic(benchmark, _render_case(size), rounds=3,
               per_second={"images_per_s_per_domain": VIEWS}, size=size, views=VIEWS)


@pytest.mark.parametrize("size", SIZES)
def test_simulate_end_to_end(benchmark, size):
    benchmark.group = "simulate_end_to_end"
    subjects = _subjects(size)
    run, tmp = _simulate_case(size, subjects)
    try:
        H.pedantic(benchmark, run, rounds=2, warmup_rounds=0,
                   per_second={"images_per_s_per_domain": subjects * VIEWS}, size=size,
                   views=VIEWS, subjects=subjects)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _subjects(size):
    return 4 if size <= 64 else 2


# ---------------------------------------------------------------------------- one-shot runner
def run_all(sizes, reps):
    rows = []
    for size in sizes:
        res = H.time_interleaved({p: _projection_case(p, size)
                                  for p in ("voxel_reference", "analytic")}, reps=reps)
        group = [{"size": size, "what": "projection", "provider": p, "images": VIEWS,
                  **t.fields("s")} for p, t in res.items()]
        H.add_ratios(group, "voxel_reference", ("size", "what"), key="s")
        H.add_ratios(group, "voxel_reference", ("size", "what"), key="cpu_s",
                     name="vs_voxel_reference_cpu")
        rows += group
        t = H.time_one(_render_case(size), reps=reps)
        rows.append({"size": size, "what": "render 5 domains", "provider": "render",
                     "images": VIEWS, **t.fields("s")})
        subjects = _subjects(size)
        run, tmp = _simulate_case(size, subjects)
        try:
            t = H.time_one(run, reps=max(1, reps - 1))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append({"size": size, "what": "simulate end to end", "provider": "simulate",
                     "images": subjects * VIEWS, **t.fields("s")})
    for r in rows:
        r["images_per_s"] = r["images"] / r["s"]
        r["images_per_cpu_s"] = r["images"] / r["cpu_s"]
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    H.add_common_args(ap, reps=3, device=False)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # as simulate() does
    about = __doc__.split("\n    pytest")[0].split("\n", 1)[1]  # the docstring's description
    report = H.Report("Simulator throughput (CPU): images/s per domain", "cpu", about=about,
                      params={"views": VIEWS, "reps": args.reps}, argv=argv)
    rows = run_all(args.sizes, args.reps)
    report.table(rows, [
        ("size", "size", "{}"), ("what", "what", "{}"), ("provider", "provider", "{}"),
        ("wall s [IQR]", lambda r: H.spread(r, "s", 3), "{}"), ("CPU s", "cpu_s", "{:.3f}"),
        ("images/s per domain (wall)", "images_per_s", "{:.1f}"),
        ("(CPU)", "images_per_cpu_s", "{:.1f}"),
        ("vs voxel_reference (wall) [IQR]", lambda r: H.ratio(r, "vs_voxel_reference", 1), "{}"),
        ("(CPU)", lambda r: H.ratio(r, "vs_voxel_reference_cpu", 1), "{}")])
    report.note("Wall time includes time the scheduler gave to other jobs; the CPU column is "
                "this process's CPU time (one intra-op thread; simulate's PNG writer pool runs "
                "in threads of this process, so its CPU time is included).")
    report.write(args.md, args.json)


if __name__ == "__main__":
    main()
