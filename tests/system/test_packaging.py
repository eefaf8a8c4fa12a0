"""The server runs on its runtime dependencies alone (README command 1 installs no test extras)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tests/system/ -> the repository root


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0]).lower()


def _installed_with(declared: set[str]) -> set[str]:
    """The declared distributions and everything they require in turn (extras and markers aside)."""
    found, todo = set(), list(declared)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            todo.extend(_name(r) for r in requires(name) or [] if "extra ==" not in r)
        except PackageNotFoundError:
            continue
    return found


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Top-level modules imported, leaving out `if TYPE_CHECKING:` blocks (never run)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return names


def test_every_module_the_server_imports_comes_with_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    available = _installed_with({_name(spec) for spec in project["dependencies"]})
    distributions = packages_distributions()
    missing: dict[str, str] = {}
    for path in [*ROOT.joinpath("app").rglob("*.py"), *ROOT.joinpath("dimse_bridge").rglob("*.py")]:
        for top in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if top in {"app", "dimse_bridge", "migrations"} or top in sys.stdlib_module_names:
                continue
            if not {_name(d) for d in distributions.get(top, [top])} & available:
                missing[top] = str(path.relative_to(ROOT))
    assert not missing, f"imported but installed by no runtime dependency: {missing}"
