"""The notebooks run headless, top to bottom, on tiny settings (committed without outputs)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), path.name


@pytest.mark.xdist_group("notebooks")
def test_quickstart_then_evaluate_notebooks_execute(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRPRESERVE_NB_TINY", "1")
    monkeypatch.setenv("ATTRPRESERVE_NB_OUT", str(tmp_path / "nb"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("01_quickstart", "02_evaluate_and_compare"):
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, errors
    assert (tmp_path / "nb" / "student_sswa.pt").is_file()
