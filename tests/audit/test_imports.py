"""The audit's torch line and the package's import graph.

Everything that scores, reports or gates imports without torch; only what trains
models needs it. And no module of `service` imports, directly or round about, a
module that imports it back: not at module level, not under ``TYPE_CHECKING``,
not from inside a function.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "service"

TORCH_FREE = (
    "service.audit.attacks",
    "service.audit.attacks.adaptive",
    "service.audit.attacks.base",
    "service.audit.attacks.boundary",
    "service.audit.attacks.features",
    "service.audit.attacks.label_only",
    "service.audit.attacks.lira",
    "service.audit.attacks.queries",
    "service.audit.attacks.rmia",
    "service.audit.attacks.shadow",
    "service.audit.attacks.threshold",
    "service.audit.calibration",
    "service.audit.config",
    "service.audit.datasets",
    "service.audit.defense_aware",
    "service.audit.defenses",
    "service.audit.gate",
    "service.audit.labels",
    "service.audit.midput",
    "service.audit.oracle",
    "service.audit.plots",
    "service.audit.protocol",
    "service.audit.report",
    "service.audit.rows",
    "service.audit.scoring",
    "service.audit.seeds",
    "service.audit.splits",
    "service.audit.tuning",
    "service.audit.tuning_report",
    "service.audit.statistics",
    "service.audit.utility",
)
"""Audit modules that must import on an install without torch."""

NEEDS_TORCH = (
    "service.audit.architectures",  # the torch classifiers
    "service.audit.training",  # trains and exports them
    "service.audit.shadows",  # trains the paper's shadows
    "service.audit.population",  # trains the leave-one-out population
    "service.audit.target",  # the target's training recipe
    "service.audit.evaluation",  # runs the protocols, training on the way
    "service.audit.runner",  # the whole audit
    "service.audit.calibrate",  # `dynanoise calibrate`: trains its search populations
)
"""Audit modules allowed to need torch: those that train, and what drives them."""

# Torch made unimportable the way a missing install is: ``import torch`` raises
# ModuleNotFoundError. (``sys.modules["torch"] = None`` is not that: scipy's array-API
# helpers look torch up in sys.modules and then fail on the None.)
_PROBE = """
import importlib, importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if sys.argv[1] == "block":
    sys.meta_path.insert(0, NoTorch())
failed = {}
for module in sys.argv[2:]:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        failed[module] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"failed": failed, "torch_loaded": "torch" in sys.modules}))
"""


def _probe(mode: str, modules: tuple[str, ...]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, *modules],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def _audit_modules() -> set[str]:
    return {m for m in _modules(PACKAGE) if m.startswith("service.audit.")}


def test_every_audit_module_is_on_one_side_of_the_torch_line() -> None:
    assert not set(TORCH_FREE) & set(NEEDS_TORCH)
    assert _audit_modules() == set(TORCH_FREE) | set(NEEDS_TORCH)


def test_the_torch_free_audit_imports_without_torch() -> None:
    result = _probe("block", TORCH_FREE)
    assert result["failed"] == {}
    assert result["torch_loaded"] is False


def test_only_the_training_side_needs_torch() -> None:
    """Each module of NEEDS_TORCH really does (else it belongs in TORCH_FREE)."""
    result = _probe("block", NEEDS_TORCH)
    failed = result["failed"]
    assert isinstance(failed, dict)
    assert set(failed) == set(NEEDS_TORCH)
    assert all("torch" in reason for reason in failed.values()), failed


def test_the_torch_free_audit_does_not_load_torch_where_it_is_installed() -> None:
    """No silent ``try: import torch``: with torch installed, it stays unloaded."""
    pytest.importorskip("torch")
    result = _probe("allow", TORCH_FREE)
    assert result["failed"] == {}
    assert result["torch_loaded"] is False


# The import graph, from the source (ast), not from what happens to be imported.


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module and package under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(tree: ast.Module, *, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """The module's own imports (also under ``if``/``try``, ``TYPE_CHECKING`` included);
    with ``lazy`` also those inside functions and classes."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if lazy:
                    found.extend(
                        n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)
                    )
            else:
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                for case in getattr(node, "cases", []):
                    visit(case.body)

    visit(tree.body)
    return found


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path, *, lazy: bool) -> dict[str, set[str]]:
    """module -> the modules of the package that importing it runs first.

    ``from X import a`` depends on X, or only on X.a when that is a submodule and X is
    a package the importer lives in (already being imported); importing a submodule
    also runs its packages' ``__init__`` (those outside the importer's own).
    """
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        own = set(_ancestors(module)) | ({module} if is_package else set())
        named: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")), lazy=lazy):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
                continue
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            submodules = {f"{source}.{a.name}" for a in node.names} & modules.keys()
            named |= submodules
            if source not in own or len(submodules) < len(node.names):
                named.add(source)
        packages = {p for target in named for p in _ancestors(target)} - own
        graph[module] = ((named | packages) & modules.keys()) - {module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        cycle: list[str] = exc.args[1]
        return cycle
    return None


def test_the_graph_sees_the_imports_it_must() -> None:
    """Guards the cycle tests against passing on an empty graph."""
    eager = import_graph(PACKAGE, lazy=False)
    lazy = import_graph(PACKAGE, lazy=True)
    assert "service.audit.training" in eager["service.audit.shadows"]
    assert "service.audit.attacks" in eager["service.audit.protocol"]
    assert "service.audit.attacks.features" in eager["service.audit.attacks.lira"]
    assert "service.defense" in eager["service.audit.defenses"]
    assert "service.audit.plots" not in eager["service.audit.report"]
    assert "service.audit.plots" in lazy["service.audit.report"]


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-lazy"])
def test_no_import_cycle_in_the_package(lazy: bool) -> None:
    assert _cycle(import_graph(PACKAGE, lazy=lazy)) is None


def test_the_cycle_check_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    """The shape report.py and plots.py had: one imports the other at module level,
    the other imports it back inside a function."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plots.py").write_text("from .report import TITLES\n")
    (package / "report.py").write_text(
        "TITLES = {}\n\ndef render():\n    from .plots import draw\n"
    )
    assert _cycle(import_graph(package, lazy=False)) is None
    assert set(_cycle(import_graph(package, lazy=True)) or ()) == {"pkg.plots", "pkg.report"}
