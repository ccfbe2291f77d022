"""Instructor mode: the student-notebook generator round-trips, every exercise has a checker, and every student
notebook runs up to its first exercise (where the stub's checker asks for the missing code)."""
import ast
import json
from pathlib import Path

import pytest

import rlhf_lite.course.exercises as exercises
import rlhf_lite.course.loop_exercises as loop_exercises
from rlhf_lite.__main__ import main
from rlhf_lite.course.student import (
    defined_functions,
    exercise_checkers,
    is_solution,
    stub_source,
    student_notebook,
    write_student_notebooks,
)

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
src = lambda c: "".join(c["source"]) if isinstance(c["source"], list) else c["source"]


def test_stub_keeps_imports_signatures_and_docstrings():
    solution = ('import torch\nfrom torch import nn\n\n@torch.no_grad()\ndef my_f(x, y=2, *, z):\n    """Doc."""\n'
                '    a = x + y\n    return a * z\n\ndef my_g(t):\n    return t\n\nprint("drop me")\n')
    stub = stub_source(solution)
    assert stub == ('import torch\nfrom torch import nn\n\n@torch.no_grad()\ndef my_f(x, y=2, *, z):\n    """Doc."""\n'
                    '    # YOUR CODE HERE\n    raise NotImplementedError\n\ndef my_g(t):\n    # YOUR CODE HERE\n'
                    '    raise NotImplementedError\n')
    assert defined_functions(stub) == ["my_f", "my_g"]
    ns = {}
    exec(stub, ns)
    with pytest.raises(NotImplementedError):
        ns["my_g"](1)


def _signature(fn: ast.FunctionDef) -> str:
    return ast.dump(fn.args)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_notebook_round_trips(path):
    nb = json.loads(path.read_text())
    st = student_notebook(nb)
    assert json.loads(path.read_text()) == nb  # the original is untouched
    keys = [c for c in nb["cells"] if "answer-key" in c["metadata"].get("tags", [])]
    assert keys and all(c["cell_type"] == "markdown" for c in keys), f"{path.name}: no answer key for instructors"
    assert not any("answer-key" in c["metadata"].get("tags", []) for c in st["cells"])  # students do not get them
    taught = [c for c in nb["cells"] if c not in keys]
    assert len(st["cells"]) == len(taught)
    restored = []
    for a, b in zip(taught, st["cells"]):
        if b["cell_type"] == "code":
            assert b["outputs"] == [] and b["execution_count"] is None and "execution" not in b["metadata"]
        if is_solution(a):
            assert "exercise" in b["metadata"]["tags"] and "solution" not in b["metadata"]["tags"]
            assert "# YOUR CODE HERE" in src(b)
            ref = {f.name: _signature(f) for f in ast.parse(src(a)).body if isinstance(f, ast.FunctionDef)}
            got = {f.name: _signature(f) for f in ast.parse(src(b)).body if isinstance(f, ast.FunctionDef)}
            assert got == ref  # same functions, same arguments: the checker can call them
            restored.append(src(a))  # an instructor pastes the solution back in
        else:
            assert src(a) == src(b) and a["cell_type"] == b["cell_type"]
            restored.append(src(b))
    assert restored == [src(c) for c in taught]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_exercises_with_checkers(path):
    nb = json.loads(path.read_text())
    pairs = exercise_checkers(nb)
    assert pairs, f"{path.name}: no implement-exercise (a code cell tagged 'solution')"
    for fn, checker in pairs:
        assert checker is not None, f"{path.name}: no cell calls a checker on {fn}"
        assert callable(getattr(exercises, checker, None) or getattr(loop_exercises, checker, None)), \
            f"{path.name}: {checker} is in neither rlhf_lite.course.exercises nor rlhf_lite.course.loop_exercises"
    text = "\n".join(src(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "## Exercises" in text and "Predict, then run" in text and "Tweak and explain" in text, path.name
    n_other = sum(1 for line in text[text.index("## Exercises"):].splitlines()
                  if ("Predict, then run" in line or "Tweak and explain" in line))
    assert len(pairs) + n_other >= 3, f"{path.name}: {len(pairs)} implement + {n_other} other exercises"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_unmodified_in_jupyterlab(path):
    """JupyterLab rewrites a kernelspec that differs from ipykernel's own, so a student's fresh clone would show
    every notebook as modified before anything ran."""
    spec = json.loads(path.read_text())["metadata"]["kernelspec"]
    assert spec == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}, path.name


def test_cli_writes_student_notebooks_and_refuses_the_solutions_folder(tmp_path, capsys):
    assert main(["student-notebooks", "--out", str(tmp_path / "student")]) == 0
    written = sorted(p.name for p in (tmp_path / "student").glob("*.ipynb"))
    assert written == [p.name for p in NOTEBOOKS] and not list((tmp_path / "student").glob("*.tmp"))
    assert "implement my_dpo_loss, my_group_advantages" in capsys.readouterr().out
    assert main(["student-notebooks", "--out", str(NOTEBOOKS[0].parent)]) == 2
    assert "would replace the solutions" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        write_student_notebooks(tmp_path / "x", src=tmp_path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.slow
def test_student_notebook_runs_up_to_its_first_exercise(path):
    """Execute the student version on `smoke` up to its first stub, then the stub and the checker after it: the
    lesson runs, and the checker says the exercise is waiting to be done."""
    import nbformat
    from nbclient import NotebookClient

    st = student_notebook(json.loads(path.read_text()))
    first = next(i for i, c in enumerate(st["cells"]) if "exercise" in c["metadata"].get("tags", []))
    check = next(i for i in range(first + 1, len(st["cells"])) if "check_" in src(st["cells"][i]))
    st["cells"] = st["cells"][:first + 1] + [st["cells"][check]]
    nb = nbformat.reads(json.dumps(st), as_version=4)  # as Jupyter reads it: list sources joined
    NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for i, c in enumerate(nb.cells[:-1]):
        errors = [o for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{path.name} cell {i}: {errors[0].ename}: {errors[0].evalue}"
    last = [o for o in nb.cells[-1].outputs if o.output_type == "error"]
    assert last and last[0].ename == "ExerciseError" and "not implemented yet" in last[0].evalue, last


@pytest.mark.slow
def test_grade_passes_the_solutions_and_explains_stubs_and_mistakes(tmp_path, capsys, monkeypatch):
    from rlhf_lite.course import student as student_module
    from rlhf_lite.course.student import grade_notebook

    ppo = next(p for p in NOTEBOOKS if p.name.startswith("05"))
    solutions = grade_notebook(ppo)
    assert [r["passed"] for r in solutions] == [True, True, True, True]
    write_student_notebooks(tmp_path, src=ppo.parent)
    student = tmp_path / ppo.name
    rows = grade_notebook(student)
    assert [r["functions"] for r in rows] == [["my_kl_penalized_rewards"], ["my_compute_gae"], ["my_ppo_policy_loss"],
                                              ["my_ppo_iteration"]]
    assert all(not r["passed"] and "not implemented yet" in r["message"] for r in rows)
    # a student fills in the GAE stub with a version that ignores the mask: the checker's explanation comes back
    nb = json.loads(student.read_text())
    cell = next(c for c in nb["cells"] if "def my_compute_gae" in src(c))
    cell["source"] = ("def my_compute_gae(rewards, values, mask, gamma, lam):\n"
                      "    from rlhf_lite.ppo import compute_gae\n"
                      "    return compute_gae(rewards, values, torch.ones_like(mask), gamma, lam)\n")
    student.write_text(json.dumps(nb))
    rows = grade_notebook(student)
    assert "padding" in rows[1]["message"] and not rows[1]["passed"]
    # the command prints and counts what grade_notebook found (graded above: each grading starts four processes)
    graded = {str(ppo): solutions, str(student): rows}
    monkeypatch.setattr(student_module, "grade_notebook", lambda path, *a, **k: graded[str(path)])
    assert main(["grade", str(ppo)]) == 0 and "4/4 exercises pass" in capsys.readouterr().out
    assert main(["grade", str(student)]) == 1
    out = capsys.readouterr().out
    assert "0/4 exercises pass" in out and "padding" in out and "my_compute_gae" in out


def test_grade_fails_a_notebook_with_nothing_to_grade_or_a_cell_that_is_not_text(tmp_path, capsys):
    """A notebook whose exercise tags were stripped (or that has no cells) is not a pass, and a cell whose source is
    a number is an error naming the cell, not a traceback; the other notebooks are still graded."""
    empty, untagged, numeric = tmp_path / "empty.ipynb", tmp_path / "untagged.ipynb", tmp_path / "numeric.ipynb"
    empty.write_text(json.dumps({"cells": []}))
    untagged.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": "def my_f():\n    pass\n",
                                               "outputs": [], "execution_count": None}]}))
    numeric.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": 42}]}))
    assert main(["grade", str(empty), str(untagged), str(numeric)]) == 1
    out = capsys.readouterr().out
    assert out.count("no exercises to grade") == 2 and "cell 0's source is 42, not text" in out
    assert "0/3 exercises pass" in out
