"""The package's imports point down: no cycles, and no module imports from a layer above it.

Layers, lowest first. A module may import from its own layer or any layer below it.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "g2rl_core"

LAYERS = [
    ("base", ["g2rl_core.errors", "g2rl_core.text", "g2rl_core.runlock", "g2rl_core.provenance"]),
    ("maths", ["g2rl_core.maths"]),
    ("config", ["g2rl_core.config", "g2rl_core.paths"]),
    ("data and models", ["g2rl_core.tracking", "g2rl_core.evaluation.verifier", "g2rl_core.evaluation.verify_helper",
                         "g2rl_core.evaluation.metrics", "g2rl_core.evaluation.benchmarks", "g2rl_core.models",
                         "g2rl_core.rollout", "g2rl_core.prompt_order", "g2rl_core.plan"]),
    ("evaluation and analysis", ["g2rl_core.evaluation.runner", "g2rl_core.analysis"]),
    ("engines", ["g2rl_core.engines"]),
    ("pipeline", ["g2rl_core.pipeline", "g2rl_core"]),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer whose longest matching prefix names ``module``."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it")
    return rank


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (at any depth, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def package_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def test_every_module_has_a_layer():
    for module in package_graph():
        layer_of(module)


def test_imports_only_point_down():
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in package_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(package_graph())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    "graph, has_cycle",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True), ({"a": {"b"}, "b": {"c"}, "c": set()}, False)],
)
def test_cycle_finder_can_fail(graph, has_cycle):
    assert (find_cycle(graph) is not None) == has_cycle


def test_layer_check_can_fail():
    assert layer_of("g2rl_core.pipeline.cli") > layer_of("g2rl_core.maths.features")
    assert layer_of("g2rl_core.engines.native") > layer_of("g2rl_core.evaluation.runner")
