"""The package's layering: libraries never import the layers that orchestrate them, and only the
key module builds or parses artifact paths."""

from __future__ import annotations

import ast
import re
from pathlib import Path


import attrcli
from attrcli import names

PACKAGE = Path(attrcli.__file__).parent

#: Bottom to top. A module may import its own layer and those below it, never one above.
LAYERS = (
    ("errors", "registry", "threads", "names", "progress", "devices"),
    ("store",),
    ("data",),
    ("models",),
    ("settings",),
    ("engine",),
    ("methods",),
    ("metrics",),
    ("plots",),
    ("stages",),
    ("cli", "api"),  # the command line and the Python API, side by side on top
)
RANK = {name: rank for rank, group in enumerate(LAYERS) for name in group}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "attrcli" and len(parts) > 1 else None


def _runtime_imports(tree: ast.Module, package: str = "attrcli") -> list[tuple[int, str]]:
    """Imports that run, as absolute module names (``from attrcli import stages`` is
    ``attrcli.stages``; relative imports resolved against ``package``, the module's package).
    Only the body of ``if TYPE_CHECKING:`` (exactly that test) is for type checkers only."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_module_has_a_layer() -> None:
    unknown = {_layer_of(p) for p in _modules()} - set(RANK) - {"__init__", "__main__"}
    assert not unknown, f"modules outside the layering: {sorted(unknown)}"


def test_no_import_reaches_up() -> None:
    upward = []
    for path in _modules():
        own = _layer_of(path)
        if own not in RANK:
            continue
        package = ".".join(("attrcli", *path.relative_to(PACKAGE).parts[:-1]))
        for line, module in _runtime_imports(ast.parse(path.read_text()), package):
            target = _top(module)
            if target in RANK and RANK[target] > RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from attrcli.cli import app\n"
        "if not TYPE_CHECKING:\n    from attrcli.cli import options\n"
        "def f():\n    from attrcli.stages import run\n"
        "from attrcli import plots\n"
        "from ..metrics import selection\n"
    )
    found = sorted(m for _, m in _runtime_imports(tree, "attrcli.data"))
    assert found == [
        "attrcli.cli.options", "attrcli.metrics.selection", "attrcli.plots", "attrcli.stages.run",
        "typing.TYPE_CHECKING",
    ]


PATH_PARSING = re.compile(r"rsplit\(|parents\[|[\"']\*/|\.partial[\"']|-of-[\\\"'{]|shard-\*")


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def test_only_the_key_module_parses_paths() -> None:
    offenders = []
    for path in _modules():
        if path.relative_to(PACKAGE).as_posix() == "store/keys.py":
            continue
        text = path.read_text()
        docs = _docstring_lines(ast.parse(text))
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if number not in docs and PATH_PARSING.search(code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "paths built or parsed outside attrcli/store/keys.py:\n" + "\n".join(offenders)


def test_the_vocabulary_mirrors_the_registries() -> None:
    from attrcli.methods import METHODS
    from attrcli.settings import SETTINGS

    assert sorted(names.SETTINGS) == sorted(SETTINGS.names())
    assert set(names.PAPER_METHODS) <= set(METHODS.names())


