"""Simulator throughput: images/s per domain at 64 and 256 px (CPU).

Every view is rendered once per domain, so images/s per domain = views/s. Rendering runs with
one intra-op thread, as ``simulate`` does (the PNG writer pool uses the second core).
Three measurements:

* ``projection``: material line integrals of one view (6 views per call), the analytic
  ellipsoid projector vs the anchor ``voxel_reference`` (the phantom voxelised to 128^3 once,
  then trilinear ray marching with ``grid_sample``, 2 samples per voxel along each ray).
* ``render``: projection + all five physics chains for a subject's views, no disk I/O.
* ``simulate``: ``medshift_fast.data.simulate`` end to end (16-bit PNGs, manifest, json).

    pytest benchmarks/bench_simulate.py                  # pytest-benchmark
    python benchmarks/bench_simulate.py [--sizes 64 256] # one-shot table (process CPU + wall)
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time

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


def _rate(benchmark, key, n):
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info[key] = n / benchmark.stats.stats.median


def _info(benchmark, size, views):
    benchmark.extra_info.update(size=size, views=views, torch=torch.__version__,
                                machine=platform.processor() or platform.machine())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("provider", ["analytic", "voxel_reference"])
def test_projection(benchmark, provider, size):
    benchmark.group = f"simulate_projection_{size}px"
    fn = _projection_case(provider, size)
    _info(benchmark, size, VIEWS)
    benchmark.pedantic(fn, warmup_rounds=1, rounds=3, iterations=1)
    _rate(benchmark, "views_per_s", VIEWS)


@pytest.mark.parametrize("size", SIZES)
def test_render(benchmark, size):
    benchmark.group = "simulate_render"
    _info(benchmark, size, VIEWS)
    benchmark.pedantic(_render_case(size), warmup_rounds=1, rounds=3, iterations=1)
    _rate(benchmark, "images_per_s_per_domain", VIEWS)


@pytest.mark.parametrize("size", SIZES)
def test_simulate_end_to_end(benchmark, size):
    benchmark.group = "simulate_end_to_end"
    subjects = 4 if size <= 64 else 2
    run, tmp = _simulate_case(size, subjects)
    _info(benchmark, size, VIEWS)
    try:
        benchmark.pedantic(run, warmup_rounds=0, rounds=2, iterations=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = subjects * VIEWS
    _rate(benchmark, "images_per_s_per_domain", n)


def _time(fn, rounds=3):
    fn()
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = ap.parse_args()
    torch.set_num_threads(1)  # as simulate() does
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print("| size | what | wall s | CPU s | images/s per domain (wall) | (CPU) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        rows = []
        for prov in ("voxel_reference", "analytic"):
            w, c = _time(_projection_case(prov, size))
            rows.append((f"projection {prov}", w, c, VIEWS))
        w, c = _time(_render_case(size))
        rows.append(("render 5 domains", w, c, VIEWS))
        subjects = 4 if size <= 64 else 2
        run, tmp = _simulate_case(size, subjects)
        try:
            w, c = _time(run, rounds=2)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append(("simulate end to end", w, c, subjects * VIEWS))
        for name, w, c, n in rows:
            print(f"| {size} | {name} | {w:.3f} | {c:.3f} | {n / w:.1f} | {n / c:.1f} |")
        ratio = rows[0][1] / rows[1][1]
        print(f"| {size} | analytic vs voxel_reference projection | | | {ratio:.1f}x | |")


if __name__ == "__main__":
    main()
