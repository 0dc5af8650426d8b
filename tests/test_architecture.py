"""The package's shape: the pipeline's layers import downwards only.

Read from the source with ``ast``, so the rules hold for every module, imported by a test or not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sxai_plugins", "spaces_hub")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules of this project that ``path`` imports (``a.b`` for ``from a.b import c``; ``a.b.c``
    too when ``c`` is a module)."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt], nested: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package[: len(package) - node.level + 1] + ([base] if base else [])
                    )
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if _exists(candidate) else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    visit([c for c in children if isinstance(c, ast.AST)], nested)

    visit(ast.parse(path.read_text()).body, False)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _exists(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # a package's __init__ re-exports its modules: leave those edges to the modules themselves
        targets = {t for t in _imports(path, top_level_only) if t in modules and t != name}
        if path.name != "__init__.py":
            targets = {
                t
                for t in targets
                if not (modules[t].name == "__init__.py" and name.startswith(t + "."))
            }
        graph[name] = targets
    return graph


def test_library_modules_never_import_the_command_line() -> None:
    offenders = {
        name: sorted(t for t in targets if t.startswith("sxai_plugins.cli"))
        for name, targets in _graph(top_level_only=False).items()
        if not name.startswith("sxai_plugins.cli")
        and name != "spaces_hub.cli"
        and name not in ("spaces_hub.plugin", "sxai_plugins.__main__")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycle_between_modules() -> None:
    # at import time and inside functions alike: a function-level import that closes a circle is
    # a layering mistake hidden from the interpreter, not a fix
    assert _cycle(_graph(top_level_only=False)) is None


def test_the_core_never_imports_spaces_hub() -> None:
    graph = _graph(top_level_only=False)
    hub = {
        name: sorted(t for t in targets if t.startswith("spaces_hub"))
        for name, targets in graph.items()
        if name.startswith("sxai_plugins")
    }
    assert {k: v for k, v in hub.items() if v} == {}


@pytest.mark.parametrize("name", ["sxai_plugins.plugin.hookspecs"])
def test_the_spec_module_holds_only_specs_and_contract_types(name: str) -> None:
    import importlib
    import inspect

    module = importlib.import_module(name)
    own = [v for v in vars(module).values() if getattr(v, "__module__", None) == name]
    functions = [f for f in own if inspect.isfunction(f)]
    assert functions and all(f.__name__.startswith("sxai_") for f in functions)
    assert all(hasattr(f, "sxai_spec") for f in functions)  # every function is a hook spec


@pytest.mark.parametrize(
    "argv", [["--help"], ["backbones"], ["predict", "x.jpg", "--batch-size", "x"]]
)
def test_the_command_line_starts_without_the_heavy_libraries(argv: list[str]) -> None:
    import subprocess
    import sys

    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['sxai', *{argv!r}]\n"
        "try:\n    runpy.run_module('sxai_plugins', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'timm', 'captum', 'matplotlib', 'skimage', 'sklearn', 'scipy', 'huggingface_hub')\n"
        "print('HEAVY', *sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("HEAVY"))
    assert line == "HEAVY", f"`sxai {' '.join(argv)}` imported{line[5:]}"


def test_only_the_command_line_reaches_the_scale_out_engine() -> None:
    # the Ray engine is chosen on the command line (--engine ray) or imported by its user; the
    # library's own layers never lead there, so they never pull Ray in
    offenders = {
        name: sorted(t for t in targets if t.startswith("sxai_plugins.scale"))
        for name, targets in _graph(top_level_only=False).items()
        if not name.startswith(("sxai_plugins.scale", "sxai_plugins.cli"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


OPTIONAL = ("ray", "duckdb", "pyarrow")


def test_ray_duckdb_and_pyarrow_are_imported_inside_functions_only() -> None:
    found = {}
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        top = [
            alias.name
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in (
                node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
            )
            if alias.name.split(".")[0] in OPTIONAL
        ]
        if top:
            found[name] = top
    assert found == {}


@pytest.mark.parametrize(
    "code",
    [
        "import sxai_plugins",
        "import runpy, sys\nsys.argv = ['sxai', '--help']\n"
        "try:\n    runpy.run_module('sxai_plugins', run_name='__main__')\nexcept SystemExit:\n    pass",
        "import runpy, sys\nsys.argv = ['sxai', 'index', '--help']\n"
        "try:\n    runpy.run_module('sxai_plugins', run_name='__main__')\nexcept SystemExit:\n    pass",
    ],
)
def test_importing_sxai_and_its_help_never_import_ray_or_duckdb(code: str) -> None:
    import subprocess
    import sys

    probe = (
        f"{code}\nimport sys\n"
        f"print('LOADED', *sorted(m for m in {OPTIONAL!r} if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("LOADED"))
    assert line == "LOADED", f"{code!r} imported{line[6:]}"
