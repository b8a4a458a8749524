"""Every shell and Python block of README.md and docs/*.md runs as written (issue 32).

Each document gets a fresh working folder holding what its blocks expect (``_prepare``: tiny
simulated data, tiny runs, input folders); its blocks run there in order, so a later block sees
what an earlier one wrote (a student distilled in one block is translated in the next). What is
changed, and only this:

* documented placeholders are replaced by the prepared paths (``PLACEHOLDERS``: ``ROOT`` the
  dataset, ``RUN`` a run, ``/data/`` the walkthrough's data folder);
* ``medshift <command>`` lines get budget flags appended (``TINY``: a few steps, a few images;
  argparse keeps the last value of a flag given twice; ``TINY_IF_ABSENT``: a small working size
  unless the command gives its own), so a documented 20000-step training runs 2 steps and the
  whole test stays within a few minutes;
* ``medshift`` and ``python`` are this interpreter's (a shim on PATH).

A block whose first line is ``# doc-test: skip - REASON`` (visible in the document) is reported
as skipped with that reason: GPU-only, TensorRT, multi-GPU torchrun, minutes-long compiles, the
test suite itself. Blocks without a language (diagrams) are not code. The list of blocks and how
each ran is printed at the end of the session (tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"^#\s*doc-test:\s*skip\s*-\s*(.+)$")
#: flags appended to each `medshift <command>` line: the test's budget, nothing else
TINY = {
    "train": ["--steps", "2", "--batch-size", "4", "--val-every", "0", "--sample-every", "0",
              "--no-progress"],
    "distill": ["--steps", "2", "--batch-size", "2", "--val-every", "0", "--max-images", "2",
                "--taus-per-image", "1", "--val-images", "1", "--solver-steps", "2",
                "--no-progress"],
    "translate": ["--no-progress"],
    "evaluate": ["--max-images", "4", "--allow-small-n", "--bootstrap", "20", "--tune-images",
                 "2", "--classical", "gaussian", "--taus", "0.6", "--steps", "2", "--no-c2st",
                 "--no-progress"],
}
#: flags appended only when the command does not give them (a documented --size stays)
TINY_IF_ABSENT = {"translate": {"--size": "32"}}
#: what each document's placeholders stand for (relative to its working folder)
PLACEHOLDERS = {"ROOT": "data", "RUN": "runs/r1", "/data/": "data/"}
TIMEOUT = 900  # seconds a block may run
#: one line per block, printed at the end of the session by tests/conftest.py
REPORT: list[str] = []


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document."""

    doc: str
    line: int
    lang: str
    code: str

    @property
    def skip(self) -> str | None:
        first = self.code.strip().splitlines()[0] if self.code.strip() else ""
        m = SKIP.match(first.strip())
        return m.group(1).strip() if m else None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _blocks() -> list[Block]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) in ("bash", "sh", "shell", "python"):
                out.append(Block(doc.relative_to(REPO).as_posix(),
                                 text[:m.start()].count("\n") + 1, m.group(1), m.group(2)))
    return out


BLOCKS = _blocks()


def _placeholders(code: str) -> str:
    for key, value in PLACEHOLDERS.items():
        pat = re.escape(key) if key.startswith("/") else rf"\b{key}\b"
        code = re.sub(pat, value, code)
    return code


def _comment_at(line: str) -> int:
    """Index of a shell comment's '#' outside quotes (len(line) if none)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return len(line)


def shell_script(code: str) -> tuple[str, list[str]]:
    """The block as run: placeholders replaced, continuation lines joined, TINY flags appended
    to every ``medshift <command>`` line (before its comment); and the commands changed."""
    lines = _placeholders(code).replace("\\\n", " ").splitlines()
    out, changed = [], []
    for line in lines:
        k = _comment_at(line)
        cmd, comment = line[:k].rstrip(), line[k:]
        words = cmd.split()
        if len(words) > 1 and words[0] == "medshift" and words[1] in TINY:
            extra = TINY[words[1]] + [a for flag, v in TINY_IF_ABSENT.get(words[1], {}).items()
                                      if flag not in words for a in (flag, v)]
            cmd = f"{cmd} {' '.join(map(shlex.quote, extra))}"
            changed.append(" ".join(cmd.split()))
        out.append(f"{cmd} {comment}".rstrip())
    return "\n".join(out) + "\n", changed


# ------------------------------------------------------------------------ what documents expect
def _sim(root: Path, subjects: int, size: int = 32) -> Path:
    from medshift_fast.data import simulate

    if not root.exists():
        simulate(root, subjects=subjects, views=6, size=size, progress=False)
    return root


def _untrained(path: Path, size: int, domains, data: str | None = None) -> Path:
    """A run of the tiny preset that was never trained (its output layer made non-zero)."""
    from utils import tiny_run

    return tiny_run(path, domains, size, data=data or "")


def _student(path: Path, teacher: Path, pair: tuple[int, int]) -> Path:
    from medshift_fast.models.student import Student, StudentConfig
    from medshift_fast.run import load_run, save_run

    t = load_run(teacher)
    st = Student(StudentConfig(unet=t.model.config.to_dict(), pairs=(pair,)))
    st.init_from_teacher(t.model)
    return save_run(path, {"image_size": t.image_size}, st.config.to_dict(), t.domains,
                    st.state_dict(), kind="student")


def _copy_images(src: Path, dst: Path, n: int, suffix: str = ".png", bits: int | None = None):
    from medshift_fast.data import read_image, write_png16

    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.png"))[:n]:
        img = read_image(p)
        if bits is None:
            write_png16(dst / f"{p.stem}{suffix}", img)
        else:  # b-bit data in a 16-bit container that does not say so
            from PIL import Image

            v = np.rint((img + 1) / 2 * (2**bits - 1)).astype(np.uint16)
            Image.fromarray(v).save(dst / f"{p.stem}.png")


def _dicoms(src: Path, dst: Path) -> None:
    from medshift_fast.data import read_image
    from medshift_fast.data.writers import write_image

    for k, p in enumerate(sorted(src.glob("*.png"))[:2]):
        write_image(dst / "case01" / f"img{k + 1:03d}.dcm", read_image(p), None, "dicom")


def _prepare(doc: str, w: Path, shared: Path) -> None:
    """Put into ``w`` what the blocks of ``doc`` expect (see each document)."""
    from medshift_fast.data import DOMAINS

    sim = _sim(shared / "sim", subjects=20)
    if doc == "README.md":  # your own data: folders are domains ("sim", "real")
        for d, src in (("sim", "synthetic_low"), ("real", "real_normal")):
            _copy_images(sim / src, w / "data" / d, 14)
        _copy_images(sim / "synthetic_low", w / "inputs", 2)
        _untrained(w / "runs" / "demo" / "run", 128, DOMAINS)  # what `make demo` trains
    elif doc == "docs/distill.md":  # a teacher trained at 64 px on a simulated set
        sim64 = _sim(shared / "sim64", subjects=4, size=64)
        _untrained(w / "runs" / "mine", 64, DOMAINS, data=str(sim64))
        _copy_images(sim64 / "synthetic_low", w / "scans", 2)
    elif doc == "docs/data.md":  # the X-DigiSkull release layout and a tree of DICOMs
        for folder, src in (("VIST/Low", "synthetic_low"), ("VIST/High", "synthetic_high"),
                            ("Azurion/Low", "real_low"), ("Azurion/Normal", "real_normal"),
                            ("Azurion/Exposure", "real_exposure")):
            _copy_images(sim / src, w / "data" / "X-DigiSkull" / folder, 6)
        _dicoms(sim / "synthetic_low", w / "data" / "sim_dicoms")
    elif doc == "docs/training.md":  # two domains, "low" and "high"
        for d, src in (("low", "real_low"), ("high", "real_exposure")):
            _copy_images(sim / src, w / "data" / d, 8)
        _copy_images(sim / "real_low", w / "scans", 2)
    else:  # evaluation, export, native: a run over the demo domains and its dataset
        shutil.copytree(sim, w / "data")
        _untrained(w / "runs" / "r1", 32, DOMAINS, data=str(w / "data"))
        _student(w / "runs" / "mine_fast", w / "runs" / "r1", (2, 4))
        _copy_images(sim / "real_low", w / "scans", 2)
        _copy_images(sim / "real_low", w / "scans12", 2, bits=12)
        (w / "runs" / "demo").mkdir(parents=True)
        os.symlink(w / "runs" / "r1", w / "runs" / "demo" / "run")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("docs_shared")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, shared):
    """{document: its working folder}, prepared on first use; a ``bin`` folder with the shims."""
    bin_ = tmp_path_factory.mktemp("docs_bin")
    for name, cmd in (("medshift", f'exec "{sys.executable}" -m medshift_fast "$@"'),
                      ("python", f'exec "{sys.executable}" "$@"')):
        (bin_ / name).write_text(f"#!/bin/bash\n{cmd}\n")
        (bin_ / name).chmod(0o755)
    made: dict[str, Path] = {}

    def get(doc: str) -> Path:
        if doc not in made:
            made[doc] = tmp_path_factory.mktemp(doc.replace("/", "_").replace(".", "_"))
            _prepare(doc, made[doc], shared)
        return made[doc]

    get.bin = bin_
    return get


def test_the_documents_have_blocks():
    assert any(b.doc == "README.md" and b.lang == "python" for b in BLOCKS)
    assert sum(b.lang == "bash" for b in BLOCKS) >= 8


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_documented_block_runs_as_written(block, workdirs, monkeypatch):
    if block.skip:
        REPORT.append(f"{block.id} [{block.lang}] skipped: {block.skip}")
        pytest.skip(f"{block.id}: {block.skip}")
    w = workdirs(block.doc)
    if block.lang == "python":
        code = _placeholders(block.code)
        monkeypatch.chdir(w)
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            exec(compile(code, block.id, "exec"), {"__name__": "__doc_block__"})
        finally:
            torch.set_num_threads(n)
        REPORT.append(f"{block.id} [python] ran in {w.name} (placeholders replaced)")
        return
    script, changed = shell_script(block.code)
    env = {**os.environ, "PATH": f"{workdirs.bin}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(["bash", "-eo", "pipefail", "-c", script], cwd=w, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: killed whole
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    REPORT.append(f"{block.id} [bash] {'ran' if proc.returncode == 0 else 'FAILED'} in "
                  f"{w.name}" + "".join(f"\n    $ {c}" for c in changed))
    assert proc.returncode == 0, (f"{block.id} failed (exit {proc.returncode}):\n{script}\n"
                                  f"--- stderr ---\n{err[-4000:]}\n--- stdout ---\n{out[-2000:]}")
