"""The package's dependency rules (docs/architecture.md), checked on every import statement, including the
lazy ones inside functions."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxalign"

# module path prefix -> packages it must not import
RULES = {
    "jaxalign/config.py": ("jaxalign.train", "jaxalign.methods", "jaxalign.rollout", "jaxalign.models"),
    "jaxalign/train/": ("jaxalign.methods",),
    "jaxalign/algorithms/": ("jaxalign.models", "jaxalign.train", "jaxalign.methods", "jaxalign.rollout"),
    "jaxalign/rollout/": ("jaxalign.train", "jaxalign.methods"),
    "jaxalign/models/": ("jaxalign.train", "jaxalign.methods", "jaxalign.rollout"),
}


def _imports(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _files():
    return sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("prefix, banned", sorted(RULES.items()))
def test_dependency_rule(prefix, banned):
    checked = 0
    for path in _files():
        relative = path.relative_to(PACKAGE.parent).as_posix()
        if not relative.startswith(prefix):
            continue
        checked += 1
        bad = [name for name in _imports(path) if name.startswith(banned)]
        assert not bad, f"{relative} imports {bad}, which the layering forbids ({prefix} must not import {banned})"
    assert checked, f"no module matches {prefix}"


def test_the_checker_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from jaxalign.methods.base import Method\n    import jaxalign.train.loop\n")
    assert {"jaxalign.methods.base", "jaxalign.train.loop"} <= set(_imports(module))
