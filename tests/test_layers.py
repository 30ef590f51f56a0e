"""The layering of the packages, checked by parsing every source file (nothing is imported).

    core (embtables, minus app/ and cli/)     imports no embtables.app, .cli, .models, .datasets
    embtables.models                          imports core only
    embtables.datasets                        imports core and itself
    embtables.app                             imports anything but embtables.cli
    embtables.stores <-/-> embtables.methods  neither imports the other
    argparse                                  only under embtables/cli/ (benchmarks/ are scripts, exempt)
    no import cycles                          explicit imports only, nested ones included
    every package's __init__.py               has a docstring saying what it "May import"

`from embtables.x import y` counts as an import of `embtables.x.y` when that is a module, else of `embtables.x`.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package name -> source folder (pyproject.toml's package-dir: models/ and datasets/ sit at the top)
FOLDERS = {
    "embtables": ROOT / "embtables",
    "embtables.models": ROOT / "models",
    "embtables.datasets": ROOT / "datasets",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join([package, *parts])] = path
    return mods


MODULES = _modules()


class Import(NamedTuple):
    module: str  # the importing module
    line: int
    target: str  # the imported module ("argparse", "embtables.plan", ...)

    def __str__(self) -> str:
        return f"{MODULES[self.module].relative_to(ROOT)}:{self.line} imports {self.target}"


def _imports(module: str) -> list[Import]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append(Import(module, node.lineno, sub if sub in MODULES else base))
    return sorted(set(found))  # `from m import a, b` is one import of m


IMPORTS = [imp for module in MODULES for imp in _imports(module)]


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _layer(name: str) -> str:
    for layer in ("embtables.app", "embtables.cli", "embtables.models", "embtables.datasets"):
        if _under(name, layer):
            return layer
    return "core" if _under(name, "embtables") else "external"


FORBIDDEN = {  # layer of the importer -> layers it may not import
    "core": {"embtables.app", "embtables.cli", "embtables.models", "embtables.datasets"},
    "embtables.models": {"embtables.app", "embtables.cli", "embtables.datasets"},
    "embtables.datasets": {"embtables.app", "embtables.cli", "embtables.models"},
    "embtables.app": {"embtables.cli"},
    "embtables.cli": set(),
}


def test_embtables_imports_name_existing_modules() -> None:
    bad = [str(i) for i in IMPORTS if _layer(i.target) != "external" and i.target not in MODULES]
    assert not bad, "imports of modules that do not exist:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports(layer: str) -> None:
    bad = [str(i) for i in IMPORTS if _layer(i.module) == layer and _layer(i.target) in FORBIDDEN[layer]]
    assert not bad, f"{layer} may not import {sorted(FORBIDDEN[layer])}:\n" + "\n".join(bad)


@pytest.mark.parametrize("importer, imported", [("embtables.stores", "embtables.methods"),
                                                ("embtables.methods", "embtables.stores")])
def test_stores_and_methods_are_independent(importer: str, imported: str) -> None:
    bad = [str(i) for i in IMPORTS if _under(i.module, importer) and _under(i.target, imported)]
    assert not bad, f"{importer} may not import {imported}:\n" + "\n".join(bad)


def test_argparse_only_in_cli() -> None:
    bad = [str(i) for i in IMPORTS if _under(i.target, "argparse") and _layer(i.module) != "embtables.cli"]
    assert not bad, "only embtables.cli parses arguments:\n" + "\n".join(bad)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.target in MODULES and i.target != i.module:
            graph[i.module].add(i.target)
    reach = {m: _reachable(graph, m) for m in graph}
    # strongly connected components of more than one module: the modules that reach each other
    components = sorted({tuple(sorted(w for w in reach[m] if m in reach[w])) for m in graph if m in reach[m]})
    report = []
    for component in components:
        report.append("cycle among " + ", ".join(component) + ":")
        report += [f"    {i}" for i in IMPORTS if {i.module, i.target} <= set(component) and i.target != i.module]
    assert not report, "\n".join(report)


PACKAGES = sorted(m for m, path in MODULES.items() if path.name == "__init__.py")


@pytest.mark.parametrize("package", PACKAGES)
def test_package_docstring_says_what_it_may_import(package: str) -> None:
    path = MODULES[package]
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
    assert "May import" in doc, f"{path.relative_to(ROOT)}: the docstring must say what the package May import"
