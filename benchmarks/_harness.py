"""The machinery every ``benchmarks/bench_*.py`` shares, so that it exists once.

* machine info: device, CPU model / flags / clock from ``/proc/cpuinfo``, threads, versions
  (python, torch, triton, extra packages), GPU name on CUDA, load average, git commit;
* ``sync``: wait for the device;
* ``time_interleaved``: several providers timed in turns within every repetition (a load drift
  on a shared machine hits all of them alike), ``Timing`` with median / IQR / min of the
  per-call times; CUDA events on the GPU, ``perf_counter`` on the CPU, or this process's CPU
  time (``clock="cpu"``);
* ``add_ratios``: every row of a group against the group's anchor (anchor time / row time, and
  the IQR of the per-repetition paired ratios);
* ``md_table`` + ``Report``: the one writer of ``benchmarks/results/``: a markdown file (title,
  the exact command that produced it, machine, tables, notes) and a JSON file (the same machine
  info and every row), always written together;
* ``pedantic``: the pytest-benchmark side (device sync, machine info, derived figures).

Imported as ``_harness`` (``benchmarks/`` is on ``sys.path`` both when a script runs and when
pytest collects ``benchmarks/bench_*.py``). Nothing here touches CUDA unless asked for a
CUDA device.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Environment variables that change what a benchmark measures: recorded in the command line.
ENV_VARS = ("MEDSHIFT_BENCH_THREADS", "MEDSHIFT_FAST_BACKEND", "MEDSHIFT_FAST_TRITON_AUTOTUNE",
            "MEDSHIFT_TEST_GPU", "TRITON_INTERPRET", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


# ==================================================================================== machine
def resolve_device(name: str = "auto") -> str:
    """"auto" -> "cuda" when a CUDA device is visible, else "cpu"; other names pass through."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_threads(default: int = 1) -> int:
    """CPU threads for the benchmarks that pin them: ``MEDSHIFT_BENCH_THREADS`` or ``default``.

    One intra-op thread is the default where it matters: on a shared 2-core machine OpenMP
    spin-waits against other jobs make 2-thread timings meaningless."""
    return int(os.environ.get("MEDSHIFT_BENCH_THREADS", str(default)))


@contextlib.contextmanager
def num_threads(n: int | None):
    """Temporarily set torch's intra-op threads (``None`` or 0: leave them)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, Any]:
    """Model name, flags and the highest "cpu MHz" of /proc/cpuinfo (empty off Linux)."""
    out: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": set(),
                           "mhz": None}
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return out
    mhz = []
    for ln in lines:
        key, _, val = ln.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name" and out["model"] in (platform.processor(), platform.machine()):
            out["model"] = val
        elif key == "flags" and not out["flags"]:
            out["flags"] = set(val.split())
        elif key == "cpu MHz":
            with contextlib.suppress(ValueError):
                mhz.append(float(val))
    out["mhz"] = max(mhz) if mhz else None
    return out


def simd_fp32_lanes(flags: Iterable[str] | None = None) -> tuple[int, str]:
    """(fp32 lanes of the widest FMA unit, the flag that says so): avx512f 16, avx2/fma 8."""
    f = set(_cpuinfo()["flags"] if flags is None else flags)
    if "avx512f" in f:
        return 16, "avx512f"
    if "fma" in f or "avx2" in f:
        return 8, "avx2/fma"
    if "avx" in f:
        return 8, "avx (no FMA: counted as 8 lanes)"
    return 4, "sse (assumed)"


def cpu_fp32_peak(cores: int, fma_units: int = 2) -> dict[str, Any]:
    """Estimated fp32 peak of ``cores`` cores: clock x SIMD lanes x FMA units x 2 FLOP.

    Assumptions (recorded with the figure): the clock is the highest "cpu MHz" /proc/cpuinfo
    reports (a VM shows its nominal clock; turbo would raise the real peak), every core has
    ``fma_units`` FMA pipes of the widest vector width its flags name (2 on Xeon Gold /
    Platinum and desktop cores; 1 on some Xeon Silver/Bronze parts), and no frequency drop
    under AVX-512 load. Returns gflops=None when the clock is unknown."""
    info = _cpuinfo()
    lanes, why = simd_fp32_lanes()
    ghz = info["mhz"] / 1e3 if info["mhz"] else None
    gflops = ghz * lanes * fma_units * 2 * cores if ghz else None
    return {"gflops": gflops, "ghz": ghz, "lanes": lanes, "simd": why, "fma_units": fma_units,
            "cores": cores,
            "formula": f"{ghz or '?'} GHz x {lanes} fp32 lanes ({why}) x {fma_units} FMA units "
                       f"x 2 FLOP x {cores} core(s)"}


def package_versions(*dists: str) -> dict[str, str | None]:
    """Installed versions of distributions (by pip name), None when absent; imports nothing."""
    out: dict[str, str | None] = {}
    for d in dists:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = None
    return out


def load_average() -> str | None:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's HEAD commit (read-only; local changes are not reflected)."""
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None


@functools.lru_cache(maxsize=4)
def _static_info(device: str) -> dict[str, Any]:
    ci = _cpuinfo()
    info: dict[str, Any] = {
        "device": device,
        "device_name": ci["model"],
        "cpu": ci["model"],
        "cpu_count": os.cpu_count(),
        "cpu_mhz": ci["mhz"],
        "simd": simd_fp32_lanes()[1],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{k: v for k, v in package_versions("triton", "numpy").items()},
        "git_commit": git_commit(),
    }
    try:
        import medshift_fast

        info["medshift_fast"] = medshift_fast.__version__
        info["backends"] = medshift_fast.available_backends()
    except Exception as exc:  # noqa: BLE001 - machine info must not stop a benchmark
        info["backends"] = f"unavailable: {type(exc).__name__}: {exc}"
    if torch.device(device).type == "cuda":
        info["device_name"] = info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def machine_info(device: str = "cpu", *packages: str) -> dict[str, Any]:
    """What produced a number: device (GPU name on CUDA, CPU model otherwise), CPU model, flags
    summary and clock, threads, python / torch / triton versions (and ``packages``, pip names),
    the package's backends, git commit, and the load average now."""
    info = dict(_static_info(str(device)))
    info["threads"] = torch.get_num_threads()
    info["loadavg"] = load_average()
    if packages:
        info.update(package_versions(*packages))
    return info


# ===================================================================================== timers
def _quantile(sorted_v: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an ascending sequence."""
    pos = (len(sorted_v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_v[lo] + (sorted_v[hi] - sorted_v[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """median, q1, q3, min, max of ``values`` (nan for an empty list)."""
    v = sorted(values)
    if not v:
        return {k: math.nan for k in ("median", "q1", "q3", "min", "max")}
    return {"median": _quantile(v, 0.5), "q1": _quantile(v, 0.25), "q3": _quantile(v, 0.75),
            "min": v[0], "max": v[-1]}


@dataclass
class Timing:
    """Per-call seconds of one provider, one entry per repetition (in the order timed).

    ``cpu`` holds this process's CPU seconds per call for the same repetitions (CPU runs)."""

    samples: list[float]
    cpu: list[float] | None = None

    @property
    def median(self) -> float:
        return summary(self.samples)["median"]

    @property
    def q1(self) -> float:
        return summary(self.samples)["q1"]

    @property
    def q3(self) -> float:
        return summary(self.samples)["q3"]

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def min(self) -> float:
        return min(self.samples)

    def fields(self, unit: str = "ms") -> dict[str, Any]:
        """Row fields: <unit>, <unit>_q1, <unit>_q3, <unit>_min, reps, <unit>_samples
        (and cpu_<unit> when the process CPU time was recorded)."""
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
        s = summary(self.samples)
        out: dict[str, Any] = {unit: s["median"] * scale, f"{unit}_q1": s["q1"] * scale,
                               f"{unit}_q3": s["q3"] * scale, f"{unit}_min": s["min"] * scale,
                               "reps": len(self.samples),
                               f"{unit}_samples": [x * scale for x in self.samples]}
        if self.cpu:
            out[f"cpu_{unit}"] = summary(self.cpu)["median"] * scale
        return out


def time_interleaved(steps: Mapping[str, Callable[[], Any]], device: str = "cpu", reps: int = 10,
                     warmup: int = 1, inner: int = 1, clock: str = "wall",
                     no_grad: bool = False,
                     on_rep: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Time every step ``reps`` times, the steps taking turns within each repetition.

    Args:
        steps: {provider: no-argument callable}.
        device: "cpu" or "cuda" (CUDA events around each timed call, then a sync).
        reps: repetitions (one sample per provider each).
        warmup: untimed calls of every step first (compilation, allocator, caches).
        inner: calls per sample (the sample is their mean): for calls shorter than the timer's
            resolution or the launch overhead.
        clock: "wall" (perf_counter / CUDA events) or "cpu" (this process's CPU time,
            ``time.process_time``: with one thread the steadiest figure on a machine whose
            cores other jobs share; CPU only).
        no_grad: run everything under ``torch.no_grad()``.
        on_rep: called with the repetition index after each repetition (progress).

    The starting provider rotates from one repetition to the next, so no provider always runs
    right after the same other one. Returns {provider: Timing}.
    """
    cuda = torch.device(device).type == "cuda"
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if cuda and clock == "cpu":
        raise ValueError("clock='cpu' measures host CPU time: use it on the CPU only")
    names = list(steps)
    out = {k: Timing([], None if cuda else []) for k in names}
    ctx = torch.no_grad() if no_grad else contextlib.nullcontext()
    with ctx:
        for fn in steps.values():
            for _ in range(warmup):
                fn()
        sync(device)
        for r in range(reps):
            for k in names[r % len(names):] + names[:r % len(names)]:
                fn, t = steps[k], out[k]
                if cuda:
                    a = torch.cuda.Event(enable_timing=True)
                    b = torch.cuda.Event(enable_timing=True)
                    a.record()
                    for _ in range(inner):
                        fn()
                    b.record()
                    b.synchronize()
                    t.samples.append(a.elapsed_time(b) / 1e3 / inner)
                    continue
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(inner):
                    fn()
                w, c = time.perf_counter() - w0, time.process_time() - c0
                t.samples.append((c if clock == "cpu" else w) / inner)
                t.cpu.append(c / inner)
            if on_rep is not None:
                on_rep(r)
    return out


def time_one(step: Callable[[], Any], device: str = "cpu", **kw) -> Timing:
    """``time_interleaved`` of a single step."""
    return time_interleaved({"step": step}, device, **kw)["step"]


# ============================================================================== ratio tables
def add_ratios(rows: list[dict], anchor: str, by: Sequence[str], provider: str = "provider",
               key: str = "ms", name: str | None = None) -> list[dict]:
    """Add every row's speed-up over the anchor of its group, in place.

    Rows sharing the values of ``by`` form a group; its anchor is the row whose ``provider``
    field equals ``anchor``. Each row of the group gets ``name`` (default ``vs_<anchor>``), the
    anchor's time over the row's (> 1 means faster than the anchor): when both rows carry
    ``<key>_samples`` of the same length (timed in the same interleaved repetitions) it is the
    median of the per-repetition ratios, with ``<name>_iqr`` = their [q1, q3] -- a load drift
    hits both sides of each ratio alike --, else anchor[key] / row[key]. Rows without ``key``
    (errors) or groups without the anchor get None.
    """
    name = name or f"vs_{anchor}"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(_hashable(r.get(b)) for b in by), []).append(r)
    for rs in groups.values():
        a = next((r for r in rs if r.get(provider) == anchor and r.get(key)), None)
        for r in rs:
            r[name], iqr = paired_ratio(a, r, key) if a is not None else (None, None)
            if iqr is not None:
                r[f"{name}_iqr"] = iqr
    return rows


def paired_ratio(num: Mapping, den: Mapping, key: str = "ms"
                 ) -> tuple[float | None, list[float] | None]:
    """num over den, e.g. the anchor's time over a provider's: (median of the per-repetition
    ratios, [q1, q3] of them) when both carry ``<key>_samples`` of the same length, else
    (num[key] / den[key], None); (None, None) when either value is missing or zero."""
    if not num.get(key) or not den.get(key):
        return None, None
    sa, sr = num.get(f"{key}_samples"), den.get(f"{key}_samples")
    if sa and sr and len(sa) == len(sr):
        s = summary([x / y for x, y in zip(sa, sr)])
        return s["median"], [s["q1"], s["q3"]]
    return num[key] / den[key], None


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def ratio(row: Mapping, name: str, digits: int = 2) -> str:
    """"1.23x [1.10-1.35]": a ratio from ``add_ratios`` with its paired IQR ("-" if none)."""
    v = row.get(name)
    if v is None:
        return "-"
    iqr = row.get(f"{name}_iqr")
    s = f"{v:.{digits}f}x"
    return s + (f" [{iqr[0]:.{digits}f}-{iqr[1]:.{digits}f}]" if iqr else "")


def spread(row: Mapping, key: str = "ms", digits: int = 1) -> str:
    """"12.3 [11.9-13.0]": the median of ``key`` with its interquartile range."""
    if row.get(key) is None:
        return "-"
    q1, q3 = row.get(f"{key}_q1"), row.get(f"{key}_q3")
    s = f"{row[key]:.{digits}f}"
    return s + (f" [{q1:.{digits}f}-{q3:.{digits}f}]" if q1 is not None else "")


Column = tuple[str, "str | Callable[[Mapping], Any]", str]


def md_table(rows: Iterable[Mapping], columns: Sequence[Column]) -> str:
    """A markdown table: one line per row, ``columns`` = (header, key or callable, format).

    ``format`` is a ``str.format`` pattern applied to the value ("{:.2f}"; "{}" for text);
    missing values (None, absent key) print as "-"."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for _, key, fmt in columns:
            v = key(r) if callable(key) else r.get(key)
            if isinstance(v, (list, tuple)) and fmt == "{}":
                v = "x".join(map(str, v))
            cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


# ==================================================================================== writer
def command_line(argv: Sequence[str] | None = None) -> str:
    """The exact command that is running (paths relative to the working directory, which is
    named unless it is the repository root), with the environment variables that change a
    benchmark (``ENV_VARS``) in front. ``argv``: the arguments after the script (default:
    ``sys.argv[1:]``)."""
    argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]

    cwd = Path.cwd()

    def rel(p: str) -> str:  # symlinks kept (a venv's python is one)
        a = os.path.normpath(os.path.abspath(p))
        inside = a == str(ROOT) or a.startswith(str(ROOT) + os.sep)
        return os.path.relpath(a, cwd) if inside else a

    exe = rel(sys.executable)
    if argv and argv[0].endswith(".py"):
        argv[0] = rel(argv[0])
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ENV_VARS if k in os.environ]
    cmd = " ".join([*env, shlex.join([exe, *argv])])
    if cwd != ROOT:
        cmd = f"cd {shlex.quote(str(cwd))} && {cmd}"
    return cmd


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def machine_line(info: Mapping) -> str:
    """One markdown line describing the machine of a report."""
    if info.get("gpu"):
        dev = f"{info['gpu']} ({info.get('gpu_memory_gib', '?')} GiB, CUDA {info.get('cuda')})"
    else:
        mhz = f", {info['cpu_mhz'] / 1e3:.1f} GHz" if info.get("cpu_mhz") else ""
        dev = (f"CPU {info.get('cpu')} ({info.get('cpu_count')} logical CPUs{mhz}, "
               f"{info.get('simd')}, torch capability {info.get('cpu_capability')})")
    vers = ", ".join(f"{k} {info[k]}" for k in ("python", "torch", "triton") if info.get(k))
    return (f"{dev}; {info.get('threads')} torch thread(s); {vers}; backends "
            f"{_backends(info.get('backends'))}; git {info.get('git_commit') or '?'}; load "
            f"average {info.get('loadavg_start', info.get('loadavg'))} at start, "
            f"{info.get('loadavg_end', '-')} at end")


def _backends(b) -> str:
    if isinstance(b, dict):
        return ",".join(k for k, v in b.items() if v) or "none"
    return str(b)


class Report:
    """A results file pair: markdown (title, command, machine, tables, notes) + JSON (machine
    info and every row). Build it while the benchmark runs, ``write`` it (again) at the end.

    Args:
        title: the markdown title.
        device: where it ran ("cpu" / "cuda"), for the machine info.
        packages: extra pip distributions whose versions matter (e.g. "pot", "onnxruntime").
        about: a paragraph under the title: what is measured and against which anchor.
        params: the settings of the run (recorded in the JSON and listed in the markdown).
        argv: the arguments to record after the script (default: ``sys.argv[1:]``); pass the
            ``argv`` a ``main(argv)`` was called with.
    """

    def __init__(self, title: str, device: str = "cpu", packages: Sequence[str] = (),
                 about: str = "", params: Mapping[str, Any] | None = None,
                 argv: Sequence[str] | None = None) -> None:
        self.title, self.about = title, about.strip()
        self.params = dict(params or {})
        self.command = command_line(argv)
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.info = machine_info(device, *packages)
        self.info["loadavg_start"] = self.info.pop("loadavg")
        self.sections: list[tuple[str | None, str]] = []
        self.rows: list[dict] = []
        self.notes: list[str] = []

    def table(self, rows: Sequence[dict], columns: Sequence[Column], heading: str | None = None,
              intro: str = "") -> str:
        """Add a table (and its rows to the JSON); returns the table's markdown."""
        known = {id(x) for x in self.rows}
        self.rows.extend(r for r in rows if id(r) not in known)
        text = md_table(rows, columns)
        self.sections.append((heading, (intro.strip() + "\n\n" if intro else "") + text))
        return text

    def text(self, body: str, heading: str | None = None) -> None:
        """Add a paragraph (e.g. a computed summary line) as its own section."""
        self.sections.append((heading, body.strip()))

    def note(self, body: str) -> None:
        """Add a note (listed under "Notes" at the end)."""
        self.notes.append(" ".join(body.split()))

    def markdown(self, partial: bool = False) -> str:
        out = [f"# {self.title}", ""]
        if self.about:
            out += [self.about, ""]
        out += ["Written by this command (do not edit by hand; rerun it):", "",
                f"    {self.command}", "",
                f"Run {self.started:%Y-%m-%d %H:%M} UTC. Machine: {machine_line(self.info)}.", ""]
        if self.params:
            out += ["Settings: " + ", ".join(f"{k} = {_fmt_param(v)}"
                                             for k, v in self.params.items()) + ".", ""]
        if partial:
            out += ["**Incomplete:** written while the run was still going (a cut-off run "
                    "keeps what it measured).", ""]
        for heading, body in self.sections:
            if heading:
                out += [f"## {heading}", ""]
            out += [body, ""]
        if self.notes:
            out += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return _jsonable({"title": self.title, "command": self.command,
                          "started_utc": self.started.isoformat(timespec="seconds"),
                          "machine": self.info, "params": self.params, "rows": self.rows,
                          "notes": self.notes})

    def checkpoint(self, md: str | Path | None = None,
                   json_path: str | Path | None = None) -> None:
        """Write the files so far, marked incomplete (after every case: a cut-off run keeps
        what it measured); nothing without a path."""
        if md is not None or json_path is not None:
            self.write(md, json_path, partial=True, quiet=True)

    def reset(self) -> None:
        """Drop the sections, rows and notes (to rebuild the tables from all rows so far)."""
        self.sections.clear()
        self.rows.clear()
        self.notes.clear()

    def write(self, md: str | Path | None = None, json_path: str | Path | None = None,
              partial: bool = False, quiet: bool = False) -> tuple[Path, Path] | None:
        """Write FILE.md and FILE.json together (either path implies the other: same name,
        other suffix). With neither, only print the markdown. Returns the two paths."""
        self.info["loadavg_end"] = load_average()
        text = self.markdown(partial)
        if not quiet:
            print(text, flush=True)
        if md is None and json_path is None:
            return None
        md = Path(md) if md is not None else Path(json_path).with_suffix(".md")
        js = Path(json_path) if json_path is not None else md.with_suffix(".json")
        for p in (md, js):
            p.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text)
        js.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        if not quiet:
            print(f"wrote {md} and {js}", flush=True)
        return md, js


def _fmt_param(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if not all(isinstance(x, int) for x in v) else shape_str(v)
    return str(v)


RATIO_NOTE = ("Every provider of a group is timed in the same interleaved repetitions; a "
              "ratio is the median over repetitions of the anchor's time / the provider's in "
              "that repetition (> 1: faster than the anchor), the bracket their interquartile "
              "range. Times are medians [IQR] over repetitions; absolute times on a shared, "
              "loaded CPU are inflated and noisy: quote the ratios.")


def add_output_args(ap) -> None:
    """The output flags every one-shot runner takes: ``--md FILE`` / ``--json FILE`` (either
    one writes both files)."""
    ap.add_argument("--md", help="write the markdown report here (and its .json beside it)")
    ap.add_argument("--json", help="write the JSON here (and its .md beside it)")


def add_common_args(ap, reps: int, threads: int | None = None, device: bool = True) -> None:
    """``--device`` (auto | cuda | cpu), ``--reps``, ``--threads`` and the output flags."""
    if device:
        ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--reps", type=int, default=reps, help="interleaved repetitions")
    ap.add_argument("--threads", type=int, default=threads,
                    help="torch CPU threads (0 or unset: torch's default)")
    add_output_args(ap)


def apply_threads(n: int | None) -> None:
    """Set torch's intra-op threads for the rest of the run (0 / None: leave the default)."""
    if n:
        torch.set_num_threads(int(n))


# ======================================================================== pytest-benchmark
def pedantic(benchmark, step: Callable[[], Any], device: str = "cpu", *, rounds: int,
             warmup_rounds: int = 1, iterations: int = 1, no_grad: bool = False,
             per_second: Mapping[str, float] | None = None, packages: Sequence[str] = (),
             **extra: Any) -> None:
    """``benchmark.pedantic`` of ``step`` with a device sync after every call.

    Records the machine info, ``extra`` and, once timed, every ``per_second`` figure as
    value / median seconds (e.g. {"images_per_s": batch, "tflops": flops / 1e12,
    "gb_per_s": bytes / 1e9}). Under ``--benchmark-disable`` the step runs once (a smoke test)
    and no figure is derived."""

    def run():
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            out = step()
        sync(device)
        return out

    benchmark.extra_info.update(machine_info(device, *packages), **_jsonable(extra))
    benchmark.pedantic(run, warmup_rounds=warmup_rounds, rounds=rounds, iterations=iterations)
    if benchmark.stats is not None:  # None under --benchmark-disable
        med = benchmark.stats.stats.median
        for k, v in (per_second or {}).items():
            benchmark.extra_info[k] = v / med
