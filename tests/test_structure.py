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


def test_layers_the_library_keeps_lazy_imports_included():
    """The interfaces (artgen/cli, artgen/__main__) alone parse argv or import gradio; the
    models import no procedure or interface. (The full rule of issue 33, every layer only
    downward, waits for the package re-layout.)"""
    found = []
    for path, tree in _trees("artgen"):
        rel = path.relative_to(REPO).as_posix()
        names = _imported(tree)
        if not rel.startswith("artgen/cli/") and rel != "artgen/__main__.py":
            found += [f"{rel}: {n}" for n in names if n.split(".")[0] in ("gradio", "argparse")]
            found += [f"{rel}: {n}" for n in names if n.startswith("artgen.cli")]
        if rel.startswith("artgen/models/"):
            upward = ("artgen.style", "artgen.train", "artgen.runs.record", "artgen.video.pipeline")
            found += [f"{rel}: {n}" for n in names if n.startswith(upward)]
    assert not found, found
