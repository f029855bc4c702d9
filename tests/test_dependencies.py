"""voszoo's packages depend one way, read from every import statement in the source (module level, inside functions
and under ``TYPE_CHECKING`` alike) with ``ast``, so that a lazy import cannot hide an arrow pointing up."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

import voszoo

PACKAGE = Path(voszoo.__file__).resolve().parent

# package -> the voszoo modules it must never import (prefixes at dot boundaries)
FORBIDDEN = {
    "voszoo.models": ("voszoo.inference", "voszoo.evaluation", "voszoo.train", "voszoo.evaluate", "voszoo.benchmark"),
    "voszoo.memory": ("voszoo.models", "voszoo.inference", "voszoo.engine", "voszoo.data", "voszoo.evaluation"),
}
# the config-free layers are for pip users: within voszoo they may import only themselves and the constants
LAYERS_MAY_IMPORT = ("voszoo.layers", "voszoo.normalization")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def voszoo_imports(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """``(line, imported module, imported name or None)`` for every import of a voszoo module in ``path``."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name, None) for alias in node.names if alias.name.startswith("voszoo"))
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base) if node.level else str(node.module)
            if module.split(".")[0] == "voszoo":
                yield from ((node.lineno, module, alias.name) for alias in node.names)


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


SOURCES = sorted(PACKAGE.rglob("*.py"))


def is_submodule(module: str, name: str) -> bool:
    """Whether ``from module import name`` imports a submodule (``module`` a package with ``name`` in it)."""
    try:
        return importlib.util.find_spec(f"{module}.{name}") is not None
    except ModuleNotFoundError:  # ``module`` is not a package
        return False


def test_the_walk_sees_lazy_and_type_checking_imports() -> None:
    found = {(module, name) for _, module, name in voszoo_imports(PACKAGE / "models" / "aot.py")}
    assert ("voszoo.models.base", "FrameFeatures") in found  # under TYPE_CHECKING in aot.py
    found = {(module, name) for _, module, name in voszoo_imports(PACKAGE / "models" / "registry.py")}
    assert ("voszoo.hydra_compose", "compose_config") in found  # inside a function


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_packages_never_import_higher_ones(package: str) -> None:
    folder = PACKAGE / package.split(".")[1]
    files = sorted(folder.rglob("*.py"))
    assert files, f"no sources under {folder}"
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in files
        for line, module, _ in voszoo_imports(path)
        if within(module, FORBIDDEN[package])
    ]
    assert not wrong, "\n".join(wrong)


def test_layers_import_nothing_else_of_voszoo() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in sorted((PACKAGE / "layers").rglob("*.py"))
        for line, module, _ in voszoo_imports(path)
        if not within(module, LAYERS_MAY_IMPORT)
    ]
    assert not wrong, "\n".join(wrong)


def test_every_imported_name_exists_in_the_module_it_is_imported_from() -> None:
    """Also the imports that never run (``TYPE_CHECKING``): a name imported from a module that lacks it is a bug a
    type checker would report, and a reader would look for the class in the wrong file."""
    wrong = []
    for path in SOURCES:
        for line, module, name in voszoo_imports(path):
            if name is None or name == "*":
                continue
            if not hasattr(importlib.import_module(module), name) and not is_submodule(module, name):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} from {module}, which has none")
    assert not wrong, "\n".join(wrong)
