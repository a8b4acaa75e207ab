"""The package layers: base <- router / edge / cloud <- tools.

* ``edgeroute`` (the base: protocol, model contract, config types, models) imports
  nothing of ours outside itself, and never its own tools.
* ``router``, ``edge`` and ``cloud`` import the base and never the tools; edge workers
  and the cloud deployment never import the router (edge sites run without it).
  The router's application builder binds the cloud deployment, its one use of ``cloud``.
* ``edgeroute.tools`` (CLI, stack, bench, simulator, demo, chaos, load) sits on top.

``edgeroute/__main__.py`` is the ``python -m edgeroute`` entry point: it is never
imported by library code, so it may start the tools.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = "edgeroute.tools"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    here = _module(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _layer(module: str) -> str | None:
    if module == TOOLS or module.startswith(TOOLS + "."):
        return "tools"
    top = module.split(".")[0]
    return {"edgeroute": "base", "router": "router", "edge": "edge", "cloud": "cloud"}.get(top)


FORBIDDEN = {
    "base": {"router", "edge", "cloud", "tools"},
    "router": {"edge", "tools"},
    "edge": {"router", "cloud", "tools"},
    "cloud": {"router", "edge", "tools"},
    "tools": set(),
}
ALLOWED = {("router.app", "cloud.deployment")}


def _sources() -> list[Path]:
    paths: list[Path] = []
    for top in ("edgeroute", "router", "edge", "cloud"):
        paths.extend(p for p in (ROOT / top).rglob("*.py") if p.name != "__main__.py")
    return sorted(paths)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_from_its_layer_or_below(path: Path) -> None:
    module = _module(path)
    layer = _layer(module)
    assert layer is not None
    wrong = sorted(
        name for name in _imports(path)
        if _layer(name) in FORBIDDEN[layer] and (module, name) not in ALLOWED
        and not any(name.startswith(f"{a}.") for m, a in ALLOWED if m == module)
    )
    assert not wrong, f"{module} ({layer}) imports {wrong}"


def test_the_check_catches_a_wrong_import(tmp_path: Path) -> None:
    bad = ROOT / "edge" / "_layering_probe.py"
    bad.write_text("from edgeroute.tools import stack\nimport router.app\n")
    try:
        imported = {n for n in _imports(bad) if _layer(n) in FORBIDDEN["edge"]}
    finally:
        bad.unlink()
    assert {"edgeroute.tools", "router.app"} <= imported


def test_modules_stay_under_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these by concern: {long}"
