"""models/ and datasets/ ship as embtables.models and embtables.datasets, never as top-level packages."""

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"embtables": "embtables", "embtables.models": "models", "embtables.datasets": "datasets"}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for package, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    assert found == listed


def test_installed_project_has_no_top_level_models_or_datasets(tmp_path):
    code = (
        "import importlib.util, embtables.models, embtables.datasets; "
        "print(importlib.util.find_spec('models'), importlib.util.find_spec('datasets'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None"]


def test_wheel_maps_models_and_datasets_under_embtables(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "results", "demo_out"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("embtables-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "models" not in tops and "datasets" not in tops
    assert "embtables/models/__init__.py" in names and "embtables/datasets/__init__.py" in names
    assert "embtables/datasets/layout.py" in names
    for source in sorted((ROOT / "embtables" / "kernels" / "csrc").iterdir()):  # compiled on first use: shipped
        assert f"embtables/kernels/csrc/{source.name}" in names, source.name
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = "import embtables.datasets.layout as m, embtables.models; print(m.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True)
    assert re.match(re.escape(str(target)), out.stdout.strip())
