"""The `>>>` examples in the docstrings of the library, the application, the models and the data sets run and
print what they show (the command line holds none).

One test per module, under doctest's ELLIPSIS and NORMALIZE_WHITESPACE; an example marked `# doctest: +SKIP`
is skipped by doctest itself.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> source folder (models/ and datasets/ install as embtables.models and embtables.datasets)
FOLDERS = {
    "embtables": ROOT / "embtables",
    "embtables.models": ROOT / "models",
    "embtables.datasets": ROOT / "datasets",
}
SKIPPED = {"embtables.cli"}  # cli/__main__.py runs the command line when imported


def _module_names() -> list[str]:
    names = []
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if not any(name == s or name.startswith(s + ".") for s in SKIPPED):
                names.append(name)
    return names


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures: list[str] = []
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name, module=module):
        runner.run(test, out=failures.append)
    assert not failures, "".join(failures)
