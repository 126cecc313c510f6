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
