"""The import structure: no circles, and the layers of ``[tool.importlinter]`` (pyproject.toml).

* :func:`test_no_import_circles`: no module of the repository's packages reaches itself
  through imports. Every import statement counts, a function-level (lazy) one too: a
  circle that only closes at call time is still two modules that cannot be understood,
  tested or moved apart. Imports under ``if TYPE_CHECKING:`` never run and are left out.
* :func:`test_import_contracts`: the contracts in pyproject.toml, checked by import-linter
  (https://import-linter.readthedocs.io): the framework never imports the app, its models,
  torch or the repository's tools; declarations never reach a client library.
* :func:`test_importing_the_framework_loads_no_client_library`: the same promise at run
  time, which also sees imports by name (``importlib.import_module``).

Run them alone with ``python -m pytest tests/test_import_contracts.py -q``, or the contracts
with ``lint-imports`` from the repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
# The repository's packages: the framework, the app's layers and the tools beside them.
PACKAGES = ("buildflow", "models", "processors", "schemas", "benchmarks", "infra")


def _env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout (not an installed copy)."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def _circles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative), each as one shortest circle through its first module, e.g.
    ``[a, b, a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in modules}
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    circles = []
    for component in sorted(components):
        first, members = component[0], set(component)
        # the shortest way back to `first` through one of its imports inside the component
        best: tuple[str, ...] | None = None
        for nxt in edges[first]:
            if nxt in members:
                chain = graph.find_shortest_chain(importer=nxt, imported=first)
                if chain is not None and (best is None or len(chain) < len(best)):
                    best = chain
        circles.append([first, *(best or component)])
    return circles


def test_no_import_circles() -> None:
    graph = grimp.build_graph(
        *PACKAGES, include_external_packages=False, exclude_type_checking_imports=True, cache_dir=None
    )
    modules = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    circles = _circles(graph, modules)

    def where(importer: str, imported: str) -> str:
        lines = graph.get_import_details(importer=importer, imported=imported)
        return ", ".join(f"line {d['line_number']}: {d['line_contents']}" for d in lines)

    report = "\n".join(
        " -> ".join(c) + "\n" + "\n".join(f"    {a} -> {b} ({where(a, b)})" for a, b in zip(c, c[1:]))
        for c in circles
    )
    assert not circles, (
        f"{len(circles)} import circle(s); put what both sides share in a module below both:\n{report}"
    )


def test_import_contracts() -> None:
    """import-linter's report names each broken contract, its import chain and the fix."""
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
            "--config",
            str(REPO / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout, r.stdout


# What `import buildflow` and the declarations may never load: each system's client library
# (its extra), the model layer and the app. duckdb is a core dependency and the local
# providers import it, but not the declarations (it costs import time every app pays).
_NEVER_AT_IMPORT = (
    "google",
    "confluent_kafka",
    "psycopg",
    "psycopg_pool",
    "duckdb",
    "ray",
    "fastapi",
    "uvicorn",
    "torch",
    "torchvision",
    "models",
    "processors",
    "schemas",
)


def test_importing_the_framework_loads_no_client_library() -> None:
    code = (
        "import sys\n"
        "import buildflow, buildflow.io\n"
        "from buildflow.io import *\n"
        "import buildflow.io.google.declarations, buildflow.io.kafka.declarations\n"
        "import buildflow.io.postgres.declarations, buildflow.io.local.declarations\n"
        f"never = set({_NEVER_AT_IMPORT!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & never))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"importing buildflow and its declarations loaded: {r.stdout.strip()}"
