"""No import circle in the project's packages: the data and the imports flow one way.

Every import counts, at module level or inside a function (a lazy import hides a circle
from Python, not from a reader), except those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qllm_core", "qllm_integrations", "benchmarks")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package's ``__init__``)."""
    out: dict[str, tuple[Path, bool]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _imports(module: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The project modules that ``module`` imports."""
    found: set[str] = set()
    here = module.split(".") if is_package else module.split(".")[:-1]

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names if alias.name in known)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in known else target)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return (found & known) - {module}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, *modules[name], known) for name in modules}


def test_the_checker_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_relative_and_lazy_imports():
    graph = _graph()
    assert "qllm_core.config" in graph["qllm_core.engine"]
    assert "qllm_core.spec" in graph["qllm_integrations.engines"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package):
    circles = [c for c in _circles(_graph()) if c[0].split(".")[0] == package]
    assert not circles, f"import circles (break each by moving the shared part out): {circles}"


def test_the_packages_import_light_and_load_their_attributes_on_use():
    code = (
        "import sys, qllm_integrations, qllm_integrations.serve as serve\n"
        "assert not {'torch', 'fastapi', 'langchain_core'} & set(sys.modules), sys.modules\n"
        "assert 'create_app' in dir(serve) and callable(qllm_integrations.split_text)\n"
        "assert serve.ServeSettings.__name__ == 'ServeSettings'\n"
        "try:\n    serve.missing\nexcept AttributeError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "module 'qllm_integrations.serve' has no attribute 'missing'" in done.stdout
