"""The house's import directions, checked on every module's source (nested imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mvh"
CORE = {"errors", "progress", "jobs", "__init__"}
# layer -> layers it may import (besides itself and the core modules); system.md's "import directions"
ALLOWED = {
    "cli": {"extractor", "store", "index", "interop", "overlap", "tasks", "pretrain", "serve"},
    "serve": {"tasks", "index", "store", "interop", "extractor"},
    "tasks": {"index", "store", "extractor"},
    "pretrain": {"extractor"},
    "extractor": {"store"},
    "index": {"store"},
    "interop": {"store"},
    "overlap": {"index", "store"},
    "store": set(),
    "core": set(),
    "__main__": {"cli"},
}
GPU_ONLY = {"mamba_ssm", "causal_conv1d"}


def _layer(module: str) -> str:
    """`mvh.store.store` -> "index"; `mvh.errors` -> "core"."""
    part = module.split(".")[1] if "." in module else "__init__"
    return "core" if part in CORE else part


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module top level) of every import in a file of the package."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    return _imports_in(path.read_text(), package)


def _imports_in(source: str, package: str) -> list[tuple[str, int, bool]]:
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno, id(node) in top))
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_house_directions(path: Path) -> None:
    source_layer = _layer(_module_name(path))
    allowed = ALLOWED[source_layer] | {source_layer, "core"}
    bad = [
        f"line {line}: {name} ({_layer(name)})"
        for name, line, _ in _imports(path)
        if name.split(".")[0] == "mvh" and _layer(name) not in allowed
    ]
    assert not bad, f"{path.relative_to(PACKAGE)} ({source_layer}) may import only {sorted(allowed)}: {bad}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_gpu_only_packages_are_never_imported_at_module_top(path: Path) -> None:
    imports = _imports(path)
    bad = [f"line {line}: {name}" for name, line, top in imports if top and name.split(".")[0] in GPU_ONLY]
    assert not bad, f"{path.relative_to(PACKAGE)} imports a GPU-only package at module level: {bad}"


def test_the_checker_sees_nested_and_relative_imports() -> None:
    """The rules above can fail: a nested index -> extractor import and a relative one are both found."""
    source = (
        "import numpy\ndef f():\n    from mvh.extractor.slide import open_slide\n    from ..tasks import st\n"
    )
    found = _imports_in(source, "mvh.index")
    assert found == [("numpy", 1, True), ("mvh.extractor.slide", 3, False), ("mvh.tasks", 4, False)]
    assert {_layer(name) for name, _, _ in found[1:]} == {"extractor", "tasks"}


LOCATION_SEAM = {"store/location.py", "store/backends.py"}


def _scheme_literals(source: str) -> list[tuple[int, str]]:
    """String constants that parse a URI scheme: `"://"` itself or a prefix ending in it (`"s3://"`).

    Parts of f-strings are text for people (`f"http://{host}"`), not tests of a URI: they are skipped.
    """
    tree = ast.parse(source)
    shown = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith("://")
        and id(node) not in shown
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_location_seam_parses_store_uris(path: Path) -> None:
    if str(path.relative_to(PACKAGE)) in LOCATION_SEAM:
        return
    found = _scheme_literals(path.read_text())
    assert not found, f"{path.relative_to(PACKAGE)} parses URIs {found}: ask mvh.store.location instead"


def test_the_uri_check_sees_a_scheme_test() -> None:
    source = 'def f(uri):\n    return "://" in uri or uri.startswith("s3://")\n'
    assert [value for _, value in _scheme_literals(source)] == ["://", "s3://"]
