"""The package's layers: each imports only from itself and the layers below it, no module imports
itself back through others, and the planning layer (all the Snakefile imports) loads without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gatedsae"
# Bottom to top. The command line (cli, and the package's own __main__) sits above everything.
LAYERS = ["core", "plan", "data", "activations", "saes", "training", "evaluation", "reporting", "cli"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else LAYERS.index("cli")


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> set[str]:
    """gatedsae modules `path` imports anywhere (functions included), except annotation-only imports."""
    tree = ast.parse(path.read_text())
    annotation_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
                       for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in annotation_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gatedsae"):
            for alias in node.names:  # `from gatedsae.plan import grid` imports the module gatedsae.plan.grid
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.add("relative")  # not allowed: every import names its layer
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("gatedsae")}
    return found


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {module: {imported for imported in _imports(path) if imported in MODULES or imported == "relative"}
         for module, path in MODULES.items()}


def test_every_module_sits_in_a_layer():
    for module in MODULES:
        parts = module.split(".")
        assert len(parts) == 1 or parts[1] in LAYERS or parts[1] == "__main__", f"{module} is in no layer"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = _layer(module)
    for imported in sorted(GRAPH[module]):
        assert imported != "relative", f"{module}: use absolute imports (gatedsae.<layer>.<module>)"
        assert _layer(imported) <= own, (f"{module} ({LAYERS[own]}) imports {imported} ({LAYERS[_layer(imported)]}), "
                                         f"a layer above it")


def test_no_import_cycles():
    visiting, done, cycles = [], set(), []

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(visiting[visiting.index(module):] + [module])
            return
        visiting.append(module)
        for imported in GRAPH.get(module, ()):
            if imported in MODULES and imported != module:
                visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(MODULES):
        visit(module)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_the_planning_layer_loads_without_torch():
    """What the Snakefile imports (config, layout, grid, estimates, the workflow) must parse a DAG fast."""
    code = ("import sys, gatedsae.plan.workflow, gatedsae.plan.estimates, gatedsae.plan.scheduling, "
            "gatedsae.plan.preflight, gatedsae.plan.grid, gatedsae.plan.cache, gatedsae.plan.architectures; "
            "heavy = sorted(m for m in ('torch', 'numpy', 'pandas', 'transformers') if m in sys.modules); "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the planning layer imported {result.stdout.strip()}"


LONGEST_MODULE = 450  # lines: past this a module holds more than one job; split it by concern


def test_no_module_is_too_long():
    long = {module: n for module, path in MODULES.items() if (n := len(path.read_text().splitlines())) > LONGEST_MODULE}
    assert not long, f"modules over {LONGEST_MODULE} lines (split them by concern): {long}"
