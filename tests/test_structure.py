"""The shape of the code base (issue 33): short functions, test modules that do not import
each other, and the version read from one place."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

MAX_FUNCTION_LINES = 120


def _trees(folder: str):
    for path in sorted((REPO / folder).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def test_no_function_in_the_package_is_longer_than_120_lines():
    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for path, tree in _trees("artgen")
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_test_modules_share_helpers_not_each_other():
    """What several tests need lives in a helper module (conftest, tiny_*, media, fuzz,
    stylegan2_pickles), never in a test module that others import."""
    found = []
    for path, tree in _trees("tests"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                name = node.module.split(".")[-1]
                if name.startswith("test_") and Path(path).stem != name:
                    found.append(f"{path.name}: from {'.' * node.level}{node.module}")
    assert not found, found


def test_the_version_is_read_from_artgen_version_only():
    """No module imports the package root for __version__ (that closed an import cycle)."""
    found = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path, tree in _trees("artgen")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module == "artgen"
        and any(a.name == "__version__" for a in node.names)
    ]
    assert not found, found
    import artgen
    from artgen._version import __version__

    assert artgen.__version__ == __version__


def _imported(tree: ast.AST) -> list[str]:
    """Every absolute import in a module, lazy ones (inside functions) included."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


# The layers of issue 33, lowest first: a module imports its own package and lower layers
# only (artgen/_version.py and the package root's lazy names aside). Same-rank packages
# (video, train, eval) do not import each other.
LAYERS = {
    "core": 0,
    "models": 1,
    "interop": 2,
    "runs": 3,
    "style": 4,
    "video": 5,
    "train": 5,
    "eval": 5,
    "cli": 6,
    "testing": 7,  # tests and docs programs only: nothing in the library imports it
}


def _package(module: str) -> str:
    """'artgen.runs.gan' -> 'runs'; the package root and its top-level files -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def _artgen_imports(path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """Every artgen module (or package) this file imports, lazy ones and relative ones
    included, with its line."""
    rel = path.relative_to(REPO).with_suffix("")
    here = list(rel.parts[:-1] if rel.name != "__init__" else rel.parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            if base == "artgen":  # from artgen import x: a subpackage, or a root name
                found += [(node.lineno, f"artgen.{a.name}") for a in node.names]
            elif base.startswith("artgen."):
                found.append((node.lineno, base))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("artgen")]
    return found


def test_every_import_in_the_package_goes_down_lazy_ones_included():
    """The layers of docs/architecture.md: core -> models -> interop -> runs -> style ->
    {video, train, eval} -> cli -> testing. Inference (runs, style, video) never imports training."""
    assert {p.name for p in (REPO / "artgen").iterdir() if any(p.glob("*.py"))} - {
        "__pycache__",
        "weights_data",
    } == set(LAYERS), "a new package needs its place in LAYERS (and in architecture.md)"
    top = {p.stem for p in (REPO / "artgen").glob("*.py")}
    assert top == {"__init__", "__main__", "_version"}, "modules live in the packages"
    upward = []
    for path, tree in _trees("artgen"):
        rel = path.relative_to(REPO).as_posix()
        mine = rel.split("/")[1] if rel.count("/") > 1 else ""
        if mine == "":  # the package root (lazy names) and __main__: the top
            continue
        for line, name in _artgen_imports(path, tree):
            theirs = _package(name)
            if name == "artgen._version" or theirs == mine:
                continue
            if theirs == "" or LAYERS[theirs] >= LAYERS[mine]:
                if mine == "cli" and theirs == "":
                    continue  # the interfaces may use the package root's public names
                upward.append(f"{rel}:{line} ({mine}) imports {name}")
    assert not upward, upward


def test_only_the_interfaces_parse_argv_or_import_gradio():
    found = []
    for path, tree in _trees("artgen"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("artgen/cli/") or rel == "artgen/__main__.py":
            continue
        names = _imported(tree)
        found += [f"{rel}: {n}" for n in names if n.split(".")[0] in ("gradio", "argparse")]
    assert not found, found


def test_docs_programs_do_not_import_the_tests():
    """Experiment programs use the library and artgen.testing, never tests/ (issue 33)."""
    found = []
    for path in sorted((REPO / "docs").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py")):
        for name in _imported(ast.parse(path.read_text(encoding="utf-8"))):
            if name == "tests" or name.startswith("tests."):
                found.append(f"{path.name}: {name}")
    assert not found, found
