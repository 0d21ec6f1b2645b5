"""The notebooks run headless, top to bottom, on tiny settings (committed without outputs)."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellControlSignal, DeadKernelError

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _execute(nb: nbformat.NotebookNode, name: str, cwd: Path) -> None:
    """Run ``nb`` top to bottom; on the first failing cell (error, timeout, dead kernel) fail the
    test with the notebook name, the cell's number and source and the error with its traceback.
    Afterwards every cell's outputs are checked too, so an error output that the client let pass
    (a ``raises-exception`` tag) also fails."""
    current = {"index": None}

    def on_cell_start(cell, cell_index):
        current["index"] = cell_index

    def errors(index: int) -> list[str]:
        return ["\n".join(out.get("traceback", [])) or f"{out.ename}: {out.evalue}"
                for out in nb.cells[index].get("outputs", []) if out.get("output_type") == "error"]

    def report(index: int | None, what: str) -> None:
        source = nb.cells[index].source if index is not None else "(before the first cell)"
        pytest.fail(f"{name}.ipynb, cell {index} failed:\n--- source ---\n{source}\n--- error ---\n"
                    f"{ANSI.sub('', what)}", pytrace=False)

    client = NotebookClient(nb, timeout=300, kernel_name="python3", on_cell_start=on_cell_start,
                            resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except (CellControlSignal, DeadKernelError) as error:  # CellExecutionError, CellTimeoutError
        index = current["index"]
        report(index, "\n".join(errors(index)) if index is not None and errors(index)
               else f"{type(error).__name__}: {error}")
    for index in range(len(nb.cells)):
        if errors(index):
            report(index, "\n".join(errors(index)))


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), path.name


def test_a_failing_cell_is_reported_with_its_source_and_error(tmp_path):
    cells = ["x = 20", "y = x + 1\nraise ValueError(f'broken at {y}')", "Path('after').write_text('ran')"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# a markdown cell counts too"))
    nb.cells[1].source = "from pathlib import Path\n" + nb.cells[1].source
    with pytest.raises(pytest.fail.Exception) as failure:
        _execute(nb, "broken", tmp_path)
    message = str(failure.value)
    assert "broken.ipynb, cell 2 failed" in message
    assert "raise ValueError(f'broken at {y}')" in message  # the cell's source ...
    assert "ValueError: broken at 21" in message and "\x1b[" not in message  # ... and its error, plain
    assert not (tmp_path / "after").exists()  # execution stopped at the failing cell


@pytest.mark.xdist_group("notebooks")
def test_quickstart_then_evaluate_notebooks_execute(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRPRESERVE_NB_TINY", "1")
    monkeypatch.setenv("ATTRPRESERVE_NB_OUT", str(tmp_path / "nb"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("01_quickstart", "02_evaluate_and_compare"):
        _execute(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4), name, tmp_path)
    assert (tmp_path / "nb" / "student_sswa.pt").is_file()
