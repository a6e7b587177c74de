"""Imports run one way: the import graph of `src/wings`, read from the source with `ast`, has no circle and no
import from a lower layer into a higher one.

The layers, lowest first (a module may import its own layer and the layers below it, never one above):

    base        wings/threads.py, wings/commands.py (utilities anyone may import)
    data        wings/data/          files -> conversations -> indexed samples
    processor   wings/model/processing_wings.py (tokenizer + image processing + batch padding)
    model       wings/model/ (the rest), and wings/__init__.py (it registers the model with the Auto classes)
    jobs        wings/training/, wings/evaluation/, wings/serving/ (siblings: none imports another)
    analysis    wings/analysis/
    demo        wings/demo/
    entry       wings/cli.py (the command table) and src/wings_cli.py (the console script); they may import anything

A layer is the first folder under `src/wings` (its `__init__.py` included), except the processor, which is one file
of `model/`. Every `import` counts: at module level, inside functions, and under `if TYPE_CHECKING:` alike. Parent
packages that Python runs on the way (importing `wings.data.formats` runs `wings/__init__.py`) are not edges;
`importlib.import_module` with a name computed at run time (the command table) is not read.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "wings"

LAYERS = ("base", "data", "processor", "model", "jobs", "analysis", "demo", "entry")
JOBS = ("training", "evaluation", "serving")

# Edges that run back up or close a circle, each known and owned by a piece of work in progress: the work that removes
# the edge empties its entry (the test fails while an entry names an edge that no longer exists). Keys are
# (importing file relative to src/, imported module).
KNOWN_EDGES_UNTIL_THE_RENOVATION_ENDS: dict[tuple[str, str], str] = {}  # empty: no circle, nothing runs back up


@dataclass(frozen=True)
class Import:
    """One import statement's edge: the importing file, its line, the importing and the imported module."""

    file: str  # relative to src/
    line: int
    importer: str  # dotted module names
    module: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package and the console script beside it."""
    modules = {"wings_cli": SOURCE / "wings_cli.py"}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> tuple[int, str]:
    """(rank, name) of a module's layer; the name is the layer, or the job's folder for the jobs' layer."""
    parts = module.split(".")
    if module == "wings":
        return LAYERS.index("model"), "model"
    if module in ("wings_cli", "wings.cli"):
        return LAYERS.index("entry"), "entry"
    if module in ("wings.threads", "wings.commands"):
        return LAYERS.index("base"), "base"
    if module == "wings.model.processing_wings":
        return LAYERS.index("processor"), "processor"
    folder = parts[1]
    if folder in JOBS:
        return LAYERS.index("jobs"), folder
    if folder in LAYERS:
        return LAYERS.index(folder), folder
    raise AssertionError(f"{module}: no layer; add its folder to LAYERS in {Path(__file__).name}")


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import of a module of the package in `path`, wherever it stands in the file."""
    is_package = path.name == "__init__.py"
    file = path.relative_to(SOURCE).as_posix()
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importing module's package, `level` steps up
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from package import name`: the submodule when `name` is one, else the package itself
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            while name and name not in modules:  # `import wings.data.formats as f`, `from wings.x.y import Z`
                name = name.rpartition(".")[0]
            if name and name != module:
                found.append(Import(file, node.lineno, module, name))
    return found


def import_graph() -> list[Import]:
    modules = module_files()
    return [edge for module, path in modules.items() for edge in imported_modules(module, path, modules)]


def upward_imports(edges: list[Import]) -> list[str]:
    """Imports from a lower layer into a higher one, and between sibling jobs, as messages."""
    problems = []
    for edge in edges:
        (rank, name), (target_rank, target_name) = layer_of(edge.importer), layer_of(edge.module)
        if rank == LAYERS.index("entry"):
            continue
        if target_rank > rank:
            problems.append(f"{edge}: layer '{name}' may not import layer '{target_name}' above it")
        elif target_rank == rank and name != target_name:
            problems.append(f"{edge}: the jobs '{name}' and '{target_name}' do not import each other")
    return problems


def circles(edges: list[Import]) -> list[list[Import]]:
    """One circle through each strongly connected group of modules (Tarjan), as the imports that close it."""
    graph: dict[str, dict[str, Import]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, {}).setdefault(edge.module, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for group in groups:  # walk from the group's first module until a module repeats: that is a circle
        path, node = [group[0]], group[0]
        while True:
            node = next(target for target in sorted(graph[node]) if target in group)
            if node in path:
                path = path[path.index(node) :] + [node]
                break
            path.append(node)
        found.append([graph[a][b] for a, b in zip(path, path[1:])])
    return found


def known(edge: Import) -> bool:
    return (edge.file, edge.module) in KNOWN_EDGES_UNTIL_THE_RENOVATION_ENDS


def test_the_graph_reads_imports_at_module_level_inside_functions_and_relative_ones():
    edges = {(edge.file, edge.module) for edge in import_graph()}
    assert ("wings/model/builder.py", "wings.model.processing_wings") in edges  # `from .processing_wings import`
    assert ("wings/__init__.py", "wings.model") in edges  # `from .model import` in a package's __init__
    assert ("wings/cli.py", "wings.threads") in edges  # inside `main`
    assert all(layer_of(module) for module in module_files())


def test_the_checks_name_the_file_the_line_and_the_module_of_a_bad_import():
    back_up = Import("wings/data/dataset.py", 31, "wings.data.dataset", "wings.model.processing_wings")
    sideways = Import("wings/serving/engine.py", 7, "wings.serving.engine", "wings.evaluation.runner")
    down = Import("wings/demo/cli.py", 3, "wings.demo.cli", "wings.data.formats")
    assert upward_imports([back_up, sideways, down]) == [
        "wings/data/dataset.py:31 imports wings.model.processing_wings: layer 'data' may not import layer "
        "'processor' above it",
        "wings/serving/engine.py:7 imports wings.evaluation.runner: the jobs 'serving' and 'evaluation' do not "
        "import each other",
    ]
    a_to_b = Import("wings/evaluation/a.py", 1, "wings.evaluation.a", "wings.evaluation.b")
    b_to_c = Import("wings/evaluation/b.py", 2, "wings.evaluation.b", "wings.evaluation.c")
    c_to_a = Import("wings/evaluation/c.py", 3, "wings.evaluation.c", "wings.evaluation.a")
    assert circles([a_to_b, b_to_c, c_to_a, down]) == [[a_to_b, b_to_c, c_to_a]]
    assert circles([a_to_b, b_to_c]) == []


def test_no_import_runs_from_a_lower_layer_into_a_higher_one():
    edges = [edge for edge in import_graph() if not known(edge)]
    problems = upward_imports(edges)
    assert problems == [], "imports that run back up the layers (see this file's docstring for the order):\n" + (
        "\n".join(problems)
    )


def test_no_circle_between_modules():
    found = circles([edge for edge in import_graph() if not known(edge)])
    described = ["circle: " + "; ".join(str(edge) for edge in circle) for circle in found]
    assert described == [], "modules that import each other, in a circle:\n" + "\n".join(described)


def test_every_known_edge_still_exists():
    edges = {(edge.file, edge.module) for edge in import_graph()}
    gone = [key for key in KNOWN_EDGES_UNTIL_THE_RENOVATION_ENDS if key not in edges]
    assert gone == [], f"remove these from KNOWN_EDGES_UNTIL_THE_RENOVATION_ENDS, they are fixed: {gone}"
