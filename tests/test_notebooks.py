"""Every notebook runs from scratch on CPU; the exercises' checks are shared and fail until solved."""
import copy
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RUNNABLE = ["01_positive_incentive_noise", "02_from_information_to_loss", "03_injectors", "04_training",
            "05_solutions", "06_is_it_the_noise", "07_classify_your_images"]
N_EXERCISES = 7


def execute(name, allow_errors=False):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    fresh = copy.deepcopy(notebook)
    for cell in fresh.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(fresh, timeout=300, kernel_name="python3", allow_errors=allow_errors,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook, fresh


@pytest.mark.parametrize("name", RUNNABLE)
def test_notebook_runs_and_is_committed_with_outputs(name):
    committed, executed = execute(name)  # raises CellExecutionError on any failing cell (each asserts its claims)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.outputs or not _prints(c) for c in code), "committed without outputs: rerun and save it"
    assert committed.cells[0].cell_type == "markdown"  # the reasoning comes first
    sources = "\n".join(c.source for c in committed.cells)
    assert "import pini" in sources and "class TextNoiseInjector" not in sources  # no copy of pini.py


def _prints(cell):
    return "print(" in cell.source or "plt." in cell.source or cell.source.startswith("# check")


def check_cells(name):
    cells = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells
    return [c.source for c in cells if c.cell_type == "code" and c.source.startswith("# check")]


def test_exercise_and_solution_check_cells_are_identical():
    exercises, solutions = check_cells("05_exercises"), check_cells("05_solutions")
    assert len(exercises) == N_EXERCISES
    assert exercises == solutions


def test_exercise_checks_fail_until_solved():
    _, executed = execute("05_exercises", allow_errors=True)
    checks = [c for c in executed.cells if c.cell_type == "code" and c.source.startswith("# check")]
    assert len(checks) == N_EXERCISES
    for cell in checks:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert errors and errors[0].ename == "NotImplementedError", cell.source.splitlines()[0]
        assert not any(o.output_type == "stream" and "correct" in o.text for o in cell.outputs)
