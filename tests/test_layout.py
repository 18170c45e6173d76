"""The repository's shape: the method alone at the top, the machinery in one package, imports one way."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "experiments"


def imported_modules(source: str) -> set:
    """Every module a file imports, at any depth (imports inside functions count): dotted names,
    with `from experiments import datasets` giving experiments.datasets."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def package_graph(sources: dict) -> dict:
    """{module: the package's modules it imports} for {module name: source}."""
    return {name: {m for m in imported_modules(text) if m in sources and m != name} for name, text in sources.items()}


def cycle(graph: dict):
    """One import circle as a list of modules (first = last), or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def package_sources() -> dict:
    return {f"{PACKAGE}.{p.stem}": p.read_text() for p in sorted((REPO / PACKAGE).glob("*.py")) if p.stem != "__init__"}


def test_the_package_has_no_import_circle():
    assert cycle(package_graph(package_sources())) is None


def test_the_circle_check_finds_a_planted_circle():
    """datasets importing the downloader inside a function (which imports datasets) is a circle."""
    sources = package_sources()
    sources[f"{PACKAGE}.datasets"] += "\n\ndef planted():\n    from experiments import downloads\n"
    found = cycle(package_graph(sources))
    assert found is not None and {f"{PACKAGE}.datasets", f"{PACKAGE}.downloads"} <= set(found)


def test_pini_imports_nothing_of_the_project():
    names = imported_modules((REPO / "pini.py").read_text())
    assert not {n for n in names if n.split(".")[0] in {PACKAGE, "train"}}


# The notebooks teach the method, so they import pini alone; notebook 7 shows the command itself
# (`train.py --classify`), so it also runs the command's own functions.
COMMAND_NOTEBOOKS = {"07_classify_your_images.ipynb": {"train", PACKAGE, f"{PACKAGE}.classify"}}


def test_notebooks_import_pini_only():
    import json
    project = {PACKAGE, "train"} | {p.stem for p in (REPO / PACKAGE).glob("*.py")}
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
        allowed = COMMAND_NOTEBOOKS.get(notebook.name, set())
        assert not {n for n in imported_modules(code) if n.split(".")[0] in project and n not in allowed}, \
            notebook.name


def test_the_top_level_is_the_design():
    python = sorted(p.name for p in REPO.glob("*.py"))
    assert python == ["pini.py", "train.py"]
    for folder in ["notebooks", "tests", "benchmarks", "docs", PACKAGE]:
        assert (REPO / folder).is_dir(), folder
