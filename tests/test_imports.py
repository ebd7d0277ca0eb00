"""The import layers (issue 19): every import of one of the project's modules by another, at module level or
inside a function (read with ast, nothing imported), goes down the layers or stays within one, and no modules
import each other in a circle. A new module belongs to its package's layer unless MODULE_LAYERS says otherwise."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fmtspec", "harness_tasks", "trainers", "model_adapters", "leaderboards")
# lowest first: a module may import its own layer and those below
LAYERS = ("core", "tasks", "training and scoring", "leaderboards", "pipeline", "cli")
PACKAGE_LAYERS = {"fmtspec": "pipeline", "harness_tasks": "tasks", "trainers": "training and scoring",
                  "model_adapters": "training and scoring", "leaderboards": "leaderboards"}
# a module or a subpackage (and all in it) whose layer is not its package's
MODULE_LAYERS = {
    "fmtspec.core": "core",  # what every package imports: errors, the atomic writer, the run folder, the schema
    # the commands
    "fmtspec.cli": "cli", "fmtspec.__main__": "cli", "fmtspec.diagnose_cli": "cli", "leaderboards.__main__": "cli",
}


def modules() -> dict[str, Path]:
    """Every module of the packages and of their subpackages (folders with an __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if not all((REPO.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
                continue  # a task's lm-eval hook file, a fixture builder: not in a package
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict) -> set[str]:
    """The project modules `path` imports anywhere in it (`from pkg import module` counts as the module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in out if name in known}


def layer(module: str) -> int:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):  # the longest prefix named in MODULE_LAYERS
        if ".".join(parts[:i]) in MODULE_LAYERS:
            return LAYERS.index(MODULE_LAYERS[".".join(parts[:i])])
    return LAYERS.index(PACKAGE_LAYERS[parts[0]])


def graph() -> dict[str, set[str]]:
    known = modules()
    # a package's __init__ is imported by every `from pkg.x import`: not an edge of its own
    return {m: {t for t in imports(p, known) if t != m and t not in PACKAGES and not m.startswith(f"{t}.")}
            for m, p in known.items()}


def test_imports_go_down_the_layers():
    upward = sorted(f"{m} ({LAYERS[layer(m)]}) imports {t} ({LAYERS[layer(t)]})"
                    for m, targets in graph().items() for t in targets if layer(t) > layer(m))
    assert not upward, "\n".join(upward)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iteratively)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def enter(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        return node, iter(sorted(edges[node]))

    for root in sorted(edges):
        if root in index:
            continue
        work = [enter(root)]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                work.append(enter(child))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_modules_import_each_other_in_a_circle():
    assert not circles(graph())


def test_the_walk_sees_function_level_imports_and_a_circle(tmp_path):
    """The checks can fail: a function-level import is an edge, and two modules importing each other are caught."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from trainers import train\n")
    b.write_text("import fmtspec.core.errors\nfrom fmtspec import experiment\n")
    known = modules()
    assert imports(a, known) == {"trainers", "trainers.train"}
    assert imports(b, known) == {"fmtspec", "fmtspec.core.errors", "fmtspec.experiment"}
    assert layer("trainers.train") > layer("harness_tasks.data") > layer("fmtspec.core.errors")
    assert layer("fmtspec.experiment") > layer("leaderboards.board") and layer("fmtspec.cli") > layer("fmtspec.experiment")
    assert "fmtspec.core.run_folder" in known and "harness_tasks.a2t.utils" not in known
    assert circles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}, "v": set()}) == [["x", "y", "z"]]
    assert circles({"x": {"y"}, "y": set()}) == []
