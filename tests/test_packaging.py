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


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    import re

    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_faiss_is_a_choice_of_one_flavour():
    """Was: faiss-cpu required and the gpu extra adding faiss-gpu-cu12 over it (both write
    faiss/). Now no FAISS in the base or test requirements; each extra names one flavour."""
    project = _project()
    extras = project["optional-dependencies"]
    faiss = {name: {n for n in _names(reqs) if n.startswith("faiss")}
             for name, reqs in [("base", project["dependencies"]), *extras.items()]}
    assert faiss.pop("cpu") == {"faiss-cpu"}
    gpu = faiss.pop("gpu")
    assert len(gpu) == 1 and next(iter(gpu)).startswith("faiss-gpu")
    assert all(not names for names in faiss.values()), faiss
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert '-e ".[cpu,test]"' in ci and '-e ".[cpu,test]"' in readme


def test_the_imported_faiss_is_the_one_installed_flavour():
    from importlib import metadata

    from vardist.selection.faiss_flavour import installed_flavours, load_faiss

    flavours = installed_flavours()
    assert len(flavours) == 1, flavours
    faiss = load_faiss()
    owned = {str(f.locate().resolve()) for f in metadata.distribution(flavours[0]).files or []}
    assert str(Path(faiss.__file__).resolve()) in owned


def test_two_faiss_flavours_are_refused_naming_both(monkeypatch):
    from importlib import metadata

    import pytest

    from vardist.selection import faiss_flavour

    class Dist:
        def __init__(self, name):
            self.metadata = {"Name": name}

    monkeypatch.setattr(metadata, "distributions",
                        lambda: [Dist("faiss-cpu"), Dist("faiss_gpu_cu12"), Dist("numpy")])
    faiss_flavour.load_faiss.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"faiss-cpu, faiss-gpu-cu12.*uninstall"):
            faiss_flavour.load_faiss()
    finally:
        faiss_flavour.load_faiss.cache_clear()


def test_requirements_match_what_the_code_imports():
    """pyyaml: only the cluster-file tests parse YAML, so only the test extra has it;
    huggingface_hub: the weights lookup uses it, so the base has it."""
    import re

    sources = [p.read_text() for d in ("vardist", "cli") for p in (REPO / d).rglob("*.py")]
    base = _names(_project()["dependencies"])
    assert not any(re.search(r"^\s*(import|from) yaml\b", s, re.M) for s in sources)
    assert "pyyaml" not in base and "pyyaml" in _names(_project()["optional-dependencies"]["test"])
    assert any("huggingface_hub" in s for s in sources) and "huggingface-hub" in base
