"""The package installs what the tree holds, and the console script answers."""

import subprocess
import sys
import tomllib
from pathlib import Path

import vardist

REPO = Path(__file__).resolve().parents[1]


def test_every_package_dir_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vardist").rglob("__init__.py")}
    on_disk.add("vardist_cli")
    assert on_disk == listed, f"pyproject packages differ from the tree: {on_disk ^ listed}"


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "vardist_cli.main", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"vardist {vardist.__version__}"
    helptext = subprocess.run([sys.executable, "-m", "vardist_cli.main", "--help"],
                              capture_output=True, text=True, check=True).stdout
    assert "search" in helptext


def test_selection_layer_imports_no_torch():
    code = "import sys, vardist.selection; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
