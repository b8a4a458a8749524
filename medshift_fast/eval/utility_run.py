"""How the utility benchmark runs its work: the cached translations of the training views and
the (condition, seed) trainings, in worker processes or in-process (one thread each, so the
results do not depend on ``workers``). Every cached item is keyed by a SHA-256 of everything it
depends on (``digest``): the run's weight hash and settings, the images and labels, the budget,
``downstream.VERSION``, the seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def digest(*parts) -> str:
    """SHA-256 (hex) of tensors (shape and float32 bytes) and JSON-able values, in order."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            h.update(str(tuple(p.shape)).encode())
            h.update(p.detach().contiguous().float().numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()


def run_hash(run) -> str:
    """The SHA-256 of a run's weights (the one its config records, else of the file)."""
    from ..fileio import sha256_file

    want = (run.config.get("sha256") or {}).get("model.safetensors")
    return want or sha256_file(Path(run.path) / "model.safetensors")


def label_scale(y: torch.Tensor, task: str) -> float:
    """Regression targets are divided by the labels' 99th percentile (>= 1e-6)."""
    if task != "regression":
        return 1.0
    import numpy as np

    return max(float(np.percentile(y.numpy(), 99)), 1e-6)


CHUNK = 16  # images per translation job (fixed: a batch's numerics depend on its size)
_TRANSLATORS: dict = {}  # per worker process: the Translator of each (run, settings)


def _translate_job(args: dict) -> torch.Tensor:
    """Translate one chunk on one thread (a worker process, or in-process)."""
    from ..translate import Translator

    torch.set_num_threads(1)
    key = (args["run"], args["source"], args["target"], args["tau"], args["seed"])
    if key not in _TRANSLATORS:
        _TRANSLATORS.clear()
        _TRANSLATORS[key] = Translator(args["run"], args["source"], args["target"],
                                       tau=args["tau"], seed=args["seed"])
    gens = [torch.Generator().manual_seed(g) for g in args["generators"]]
    return _TRANSLATORS[key].translate(args["x"], generators=gens).cpu().clamp(-1, 1)


def translated(tr, x: torch.Tensor, run, cfg, cache: Path, progress,
               desc: str) -> torch.Tensor:
    """The translation of ``x`` by ``tr``'s run and settings, cached by the run's weights, its
    settings, the precision it resolves to and the images. Chunks of ``CHUNK`` images are
    translated on one thread each (in ``cfg.workers`` processes), image i with a generator
    seeded by (seed, i): the result does not depend on the number of workers or threads."""
    from ..fileio import load_safetensors, save_safetensors

    settings = {k: v for k, v in tr.describe().items() if k not in ("run", "mode")}
    tr.engine  # noqa: B018 - a student resolves its precision (auto: per machine) here
    settings["bf16"] = bool(tr.bf16)  # bf16's rounding changes the texture: not the same set
    key = digest("translate", run_hash(run), settings, x)
    path = cache / f"translated_{key[:24]}.safetensors"
    if path.is_file():
        t, meta = load_safetensors(path, "cached translation")
        if meta.get("key") == key and tuple(t["x"].shape) == tuple(x.shape):
            return t["x"]
    src, tgt = tr.domains
    jobs = [{"run": str(run.path), "source": src, "target": tgt, "tau": tr.settings.tau,
             "seed": cfg.seed, "x": x[k:k + CHUNK],
             "generators": [cfg.seed * 1_000_003 + i for i in range(k, min(k + CHUNK,
                                                                           x.shape[0]))]}
            for k in range(0, x.shape[0], CHUNK)]
    y = torch.cat(run_jobs(_translate_job, jobs, cfg.workers, progress, desc))
    save_safetensors(path, {"x": y}, {"key": key, "what": desc})
    return y


def run_jobs(fn, jobs: list, workers: int, progress, desc: str, on_done=None) -> list:
    """``[fn(a) for a in jobs]`` in ``workers`` spawned processes (or in-process, one thread,
    when ``workers`` is 1); ``on_done(i, result)`` as each finishes; results in job order."""
    import concurrent.futures as cf
    import multiprocessing as mp

    from tqdm.auto import tqdm

    out: list = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)

    def done(i, r):
        out[i] = r
        bar.update(1)
        if on_done is not None:
            on_done(i, r)

    try:
        if workers > 1 and len(jobs) > 1:
            ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
                futs = {pool.submit(fn, a): i for i, a in enumerate(jobs)}
                for f in cf.as_completed(futs):
                    done(futs[f], f.result())
        else:
            n_threads = torch.get_num_threads()
            try:
                for i, a in enumerate(jobs):
                    done(i, fn(a))
            finally:
                torch.set_num_threads(n_threads)
    finally:
        bar.close()
    return out


def _job(args: dict) -> dict:
    """One training + scoring (runs in a worker process, one thread)."""
    from .downstream import predict, scores, train_task

    torch.set_num_threads(1)
    budget = args["budget"]
    r = train_task(args["x"], args["y"], task=args["task"], budget=budget, seed=args["seed"],
                   scale=args["scale"], randomize=args["randomize"])
    p = predict(r["state"], args["x_test"], task=args["task"], budget=budget,
                scale=args["scale"])
    s = scores(p, args["y_test"], args["task"])
    return {"scores": s.double().tolist(), "loss": r["loss"], "pred": p[args["fig"]].clone()}


def train_all(conds, test, cfg, cache: Path, progress, log):
    """Train every (condition, seed) on binned views.

    Returns:
        {name: [[score per test view] per seed]}, {name: seed 0's prediction of the first test
        view}, (that view, its label) as binned.
    """
    from ..fileio import load_safetensors, save_safetensors
    from .downstream import VERSION, bin_views

    budget = cfg.budget()
    mask = cfg.task == "segmentation"
    x_test, y_test = bin_views(test.x, cfg.pool), bin_views(test.y, cfg.pool, mask)
    scale = label_scale(bin_views(conds[0].y, cfg.pool, mask), cfg.task)
    test_key = digest(x_test, y_test)
    jobs, keys, done = [], [], {}
    for c in conds:
        x, y = bin_views(c.x, cfg.pool), bin_views(c.y, cfg.pool, mask)
        data_key = digest(x, y)
        for s in range(cfg.seeds):
            key = digest("train", VERSION, data_key, test_key, budget.to_dict(), cfg.task,
                          scale, c.randomize, s)
            path = cache / f"trained_{key[:24]}.safetensors"
            if path.is_file():
                t, meta = load_safetensors(path, "cached training")
                if meta.get("key") == key:
                    done[(c.name, s)] = {"scores": t["scores"].tolist(), "pred": t["pred"],
                                         "loss": float(meta["loss"])}
                    continue
            jobs.append(((c.name, s), {"x": x, "y": y, "x_test": x_test, "y_test": y_test,
                                       "task": cfg.task, "budget": budget, "seed": s,
                                       "scale": scale, "randomize": c.randomize, "fig": 0}))
            keys.append((key, path))
    left = {c.name: sum(1 for (n, _), _ in jobs if n == c.name) for c in conds}

    def finish(i, r):
        (name, s), (key, path) = jobs[i][0], keys[i]
        done[(name, s)] = r
        save_safetensors(path, {"scores": torch.tensor(r["scores"], dtype=torch.float64),
                                "pred": r["pred"]}, {"key": key, "loss": repr(r["loss"])})
        left[name] -= 1
        if left[name] == 0:
            got = [sum(done[(name, k)]["scores"]) / len(done[(name, k)]["scores"])
                   for k in range(cfg.seeds)]
            log(f"[utility] trained {name}: {cfg.seeds} seeds, mean score "
                f"{sum(got) / len(got):.4g}")

    run_jobs(_job, [a for _, a in jobs], cfg.workers, progress, "train", finish)
    per_seed = {c.name: [done[(c.name, s)]["scores"] for s in range(cfg.seeds)] for c in conds}
    fig = {c.name: done[(c.name, 0)]["pred"] for c in conds}
    return per_seed, fig, (x_test[0], y_test[0])
