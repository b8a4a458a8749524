"""The package's layering (STYLE.md): every module imports; no import cycle, lazy imports
included; nothing below ``train/`` imports it (only the CLI's commands and the demo may)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "medshift_fast"
KERNELS = Path(__file__).resolve().parents[1] / "kernels"
# may import medshift_fast.train: the commands above it
ABOVE_TRAIN = ("medshift_fast.cli", "medshift_fast.demo", "medshift_fast.train",
               "medshift_fast.__main__")


def _modules() -> dict[str, Path]:
    mods = {}
    for root, prefix in ((PKG, "medshift_fast"), (KERNELS, "medshift_fast.kernels")):
        for p in sorted(root.rglob("*.py")):
            rel = p.relative_to(root).with_suffix("")
            parts = [prefix, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """Every medshift_fast module ``name`` imports, at module level or inside functions."""
    pkg = name if _is_package(name) else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import sub" imports the submodule when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # "import medshift_fast.x.y" of a symbol: its module
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name and not name.startswith(t + "."):  # a parent package runs anyway
                out.add(t)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return comps


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_checker_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in GRAPH.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


@pytest.mark.parametrize("name", [n for n in MODULES if not n.startswith(ABOVE_TRAIN)])
def test_nothing_below_train_imports_it(name):
    bad = sorted(m for m in _reach(name) if m.startswith("medshift_fast.train"))
    assert not bad, f"{name} imports {bad} (directly or through other modules)"


def test_the_layers_the_issue_names_exist():
    for name in ("medshift_fast.run", "medshift_fast.models.codec", "medshift_fast.deploy",
                 "medshift_fast.demo", "medshift_fast.cli", "medshift_fast.translate"):
        assert name in MODULES, name
    for m in ("settings", "translator", "native", "tiling", "memory", "learned", "files",
              "manifest"):
        assert f"medshift_fast.translate.{m}" in MODULES, m
    for m in ("pipeline", "eval", "native"):
        assert f"medshift_fast.demo.{m}" in MODULES, m


# below translate/: what it is built on; none of these may import it (issue 27)
BELOW_TRANSLATE = ("medshift_fast.run", "medshift_fast.flow", "medshift_fast.models",
                   "medshift_fast.ops", "medshift_fast.data", "medshift_fast.kernels",
                   "medshift_fast.fileio", "medshift_fast.errors", "medshift_fast._backend",
                   "medshift_fast.env")


@pytest.mark.parametrize("name", [n for n in MODULES if n.startswith(BELOW_TRANSLATE)])
def test_nothing_below_translate_imports_it(name):
    bad = sorted(m for m in _reach(name) if m.startswith("medshift_fast.translate"))
    assert not bad, f"{name} imports {bad} (directly or through other modules)"


def test_the_top_level_is_the_public_face_and_the_ground_floor():
    """Loose top-level modules: the package face, the ground-floor helpers, the run format
    and the streaming wrapper; everything else lives in its folder."""
    top = {p.stem for p in PKG.glob("*.py")}
    assert top == {"__init__", "__main__", "_backend", "env", "errors", "fileio", "run",
                   "deploy"}, sorted(top)
    folders = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert folders == {"cli", "data", "demo", "eval", "export", "flow", "models", "ops", "train",
                       "translate"}, sorted(folders)


def test_old_public_import_paths_keep_working():
    code = ("import medshift_fast as ms\n"
            "from medshift_fast import Translator, load_run, FrameTranslator, LoadedRun\n"
            "assert ms.Translator is Translator and ms.translate.Translator is Translator\n"
            "import medshift_fast.demo as d\n"
            "assert callable(d.run_demo)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_every_module_imports():
    names = [n for n in MODULES if n != "medshift_fast.__main__"]
    code = ("import importlib, sys\n"
            f"for n in {names!r}:\n"
            "    importlib.import_module(n)\n"
            "print('ok', len(sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


# the public face: every public method / function here says what it does in one line at least
DOCUMENTED = ("medshift_fast.translate", "medshift_fast.cli", "medshift_fast.run",
              "medshift_fast.deploy", "medshift_fast.train.trainer", "medshift_fast.train.flow",
              "medshift_fast.train.distill_task", "medshift_fast.train.adversarial",
              "medshift_fast.train.autoencoder")


def _undocumented(name: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    scopes = [("", tree.body)] + [(f"{n.name}.", n.body) for n in tree.body
                                  if isinstance(n, ast.ClassDef) and not n.name.startswith("_")]
    for prefix, body in scopes:
        for fn in body:
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    not fn.name.startswith("_") and not ast.get_docstring(fn):
                out.append(f"{name}:{fn.lineno} {prefix}{fn.name}")
    return out


def test_the_public_face_is_documented():
    missing = [m for n, p in MODULES.items() if n.startswith(DOCUMENTED)
               for m in _undocumented(n, p)]
    assert not missing, missing
