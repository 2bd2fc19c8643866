"""The package's structure, checked on every run: layers that follow the data path, no import cycle.

The layers are import-linter contracts in ``pyproject.toml`` (``[tool.importlinter]``; drawn in
``docs/design/layers.md``). On top of them, no two modules of dsmirror may import each other,
directly or through others, at any depth: a cycle inside one layer would still hide which module
is built on which. Imports inside functions and under ``TYPE_CHECKING`` count (grimp sees them all).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(no_cache=True, no_logo=True))"
)


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("dsmirror", cache_dir=None)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    succ = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    scc = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        scc.append(w)
                        if w == v:
                            break
                    if len(scc) > 1:
                        out.append(sorted(scc))
    return out


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    detail = []
    for scc in cycles:
        members = set(scc)
        edges = [
            f"  {a} -> {b}"
            for a in scc
            for b in sorted(graph.find_modules_directly_imported_by(a))
            if b in members
        ]
        detail.append("cycle: " + ", ".join(scc) + "\n" + "\n".join(edges))
    assert not cycles, "\n".join(detail)


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = _graph()
    graph.add_import(
        importer="dsmirror._core.errors", imported="dsmirror._pull", line_number=1, line_contents="x"
    )
    assert any("dsmirror._core.errors" in scc and "dsmirror._pull" in scc for scc in _cycles(graph))


def test_layer_contracts_are_kept() -> None:
    r = subprocess.run([sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout, r.stdout


def test_the_layer_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """The same contracts, over a copy of the package with one import going up: broken."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "dsmirror", copy / "dsmirror")
    errors = copy / "dsmirror" / "_formats" / "manifest.py"
    errors.write_text(errors.read_text() + "\nfrom dsmirror._pull import pull  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(copy)}
    r = subprocess.run(
        [sys.executable, "-c", LINT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0
    assert "dsmirror._formats.manifest -> dsmirror._pull" in r.stdout, r.stdout


def test_every_top_level_part_of_the_package_has_a_layer() -> None:
    """A new subpackage must be given a place in the layers (else the contract says nothing of it)."""
    import tomllib  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    named = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    pkg = ROOT / "src" / "dsmirror"
    parts = {p.stem for p in pkg.glob("*.py")} | {
        p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()
    }
    assert parts - named - {"__init__", "__main__"} == set()
