"""Generic code (training, evaluation, experiments, reports, serving, the CLI and its config) knows models
only by their declared interface (``mp4sr.models.base``): it never names a model and never asks one
what it can do with ``getattr`` / ``hasattr``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mp4sr.models import REGISTRY

SRC = Path(__file__).resolve().parents[1] / "src" / "mp4sr"
GENERIC = sorted(
    [p for package in ("train", "evaluate", "experiment", "report", "serve") for p in (SRC / package).rglob("*.py")]
    + [SRC / "cli.py", SRC / "config.py", SRC / "stages.py"]
)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (of the module, a class or a function)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def _package_name_uses(tree: ast.AST) -> set[int]:
    """ids of the string constants that name the package (whose name is also its main model's): the
    name of its logger (``logging.getLogger("mp4sr")``) and of the module ``python -m`` runs."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "getLogger":
            ids.update(id(a) for a in node.args if isinstance(a, ast.Constant))
        if isinstance(node, (ast.List, ast.Tuple)):
            for flag, value in zip(node.elts, node.elts[1:]):
                if isinstance(flag, ast.Constant) and flag.value == "-m" and isinstance(value, ast.Constant):
                    ids.add(id(value))
    return ids


def _names_model(node: ast.AST) -> bool:
    """Whether an expression is a name or attribute that says 'model' (``model``, ``self.model``, ...)."""
    if isinstance(node, ast.Name):
        return "model" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "model" in node.attr.lower() or _names_model(node.value)
    return False


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC.parent)}:{node.lineno}"


def _model_names(tree: ast.AST) -> list[ast.Constant]:
    """The string constants equal to a registered model's name, but docstrings and the package's name."""
    allowed = _docstrings(tree) | _package_name_uses(tree)
    return [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value in REGISTRY and id(node) not in allowed]


def _probes(tree: ast.AST) -> list[ast.Call]:
    """The calls ``getattr(<model>, ...)`` / ``hasattr(<model>, ...)``."""
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"getattr", "hasattr"}
            and node.args and _names_model(node.args[0])]


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(SRC)))
def test_generic_code_names_no_model(path):
    found = [f"{_where(path, node)}: {node.value!r}" for node in _model_names(ast.parse(path.read_text(), str(path)))]
    assert not found, "model names in generic code (use the declared interface of mp4sr.models.base):\n" + "\n".join(found)


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(SRC)))
def test_generic_code_never_probes_a_model(path):
    found = [_where(path, node) for node in _probes(ast.parse(path.read_text(), str(path)))]
    assert not found, "getattr/hasattr on a model (use isinstance with mp4sr.models.base's classes):\n" + "\n".join(found)


def test_the_checks_see_what_they_look_for():
    """The checks above tell a model's name from a docstring and from the package's own name, and see a
    probe of a model (so that a change of the AST cannot blind them)."""
    tree = ast.parse('"""mp4sr"""\nx = "mp4sr"\nlogging.getLogger("mp4sr")\ncmd = [python, "-m", "mp4sr"]\n'
                     'getattr(self.model, "n_items", 0)\nhasattr(model, "tables")\ngetattr(e, "exit_code", 2)\n')
    assert [node.lineno for node in _model_names(tree)] == [2]
    assert sorted(node.lineno for node in _probes(tree)) == [5, 6]
