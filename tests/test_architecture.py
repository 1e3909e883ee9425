"""The structure the plug-in core promises (issue 14), checked on the source: no import cycle
inside ssl_jax (imports inside functions count), no function over 120 lines (docstrings not
counted) and no module over 500 lines, and no test machinery read from the environment."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ssl_jax"
MAX_FUNCTION_LINES = 120
MAX_MODULE_LINES = 500


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: pathlib.Path, modules: dict) -> set[str]:
    """The ssl_jax modules ``name`` imports, anywhere in the file (functions included); ``from
    package import sub`` counts as importing the submodule when there is one."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> imported modules), or None. A package's
    ``__init__`` importing its own submodules is not a cycle unless a submodule imports back."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):  # a submodule importing its own package: the parent
                continue  # package's __init__ runs first anyway; count only sibling edges
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_inside_ssl_jax():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # The walker sees imports inside functions: this one is.
    assert "ssl_jax.evaluation.monitor" in graph["ssl_jax.hooks"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_evaluation_never_imports_the_training_loop():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("ssl_jax.evaluation"):
            assert "ssl_jax.train" not in _imports(name, path, modules), name


def _function_lengths(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                first = node.body[0]
                length -= first.end_lineno - first.lineno + 1
            yield node.name, node.lineno, length


def test_functions_and_modules_are_short_enough_to_read():
    too_long = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name}() has {n} lines"
        for path in _modules().values()
        for name, line, n in _function_lengths(path)
        if n > MAX_FUNCTION_LINES
    ]
    too_long += [
        f"{path.relative_to(PACKAGE.parent)} has {n} lines"
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not too_long, "\n".join(too_long)


@pytest.mark.parametrize("word", ["SSL_JAX_SIMULATE", "PYTEST", "pytest"])
def test_the_library_reads_no_test_machinery(word):
    offenders = [str(p) for p in _modules().values() if word in p.read_text()]
    assert not offenders, offenders
