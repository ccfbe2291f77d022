"""Homework in nbgrader's format: every notebook's exercises are marked up as nbgrader reads them, solutions are out
of a learner's sight, the student versions keep the scaffold, and every student notebook runs up to its first
exercise (where the stub's checker asks for the missing code)."""
import ast
import json
import re
from pathlib import Path

import pytest

import rlhf_lite.course.exercises as exercises
import rlhf_lite.course.loop_exercises as loop_exercises
from rlhf_lite.__main__ import main
from rlhf_lite.course.student import (
    BEGIN,
    CODE_STUB,
    END,
    TEXT_STUB,
    clear_solution,
    course_imports,
    is_answer,
    is_solution,
    is_test,
    nbgrader,
    notebook_exercises,
    student_notebook,
    write_student_notebooks,
)

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
src = lambda c: "".join(c["source"]) if isinstance(c["source"], list) else c["source"]


def test_clear_solution_is_nbgraders_rule():
    """Each region becomes the stub at the BEGIN line's indentation; what lies outside stays; a cell without a region
    becomes the stub; an unclosed or nested region is an error."""
    cell = ("import torch\n\ndef my_f(x):\n    \"\"\"Doc.\"\"\"\n    # 1. First\n    ### BEGIN SOLUTION\n"
            "    y = x + 1\n    ### END SOLUTION\n    # 2. Then\n    ### BEGIN SOLUTION\n    return y\n"
            "    ### END SOLUTION\n")
    assert clear_solution(cell, CODE_STUB) == (
        "import torch\n\ndef my_f(x):\n    \"\"\"Doc.\"\"\"\n    # 1. First\n    # YOUR CODE HERE\n"
        "    raise NotImplementedError()\n    # 2. Then\n    # YOUR CODE HERE\n    raise NotImplementedError()\n")
    assert clear_solution("x = 1\n", TEXT_STUB) == TEXT_STUB
    with pytest.raises(ValueError, match="no '### END SOLUTION'"):
        clear_solution(f"{BEGIN}\nx = 1\n", CODE_STUB)
    with pytest.raises(ValueError, match="inside another"):
        clear_solution(f"{BEGIN}\n{BEGIN}\n{END}\n", CODE_STUB)


def _signature(fn: ast.FunctionDef) -> str:
    return ast.dump(fn.args)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercises_are_nbgrader_cells_and_hidden_from_a_learner(path):
    """Every implement-exercise is an nbgrader solution cell, hidden in JupyterLab and Colab, followed by a locked
    test cell with points that imports its checker itself; every open exercise has a written-answer cell at the end,
    after the lesson's "What we found"."""
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    ids = [nbgrader(c)["grade_id"] for c in cells if nbgrader(c)]
    assert len(ids) == len(set(ids)), f"{path.name}: grade_ids repeat"
    solutions = [i for i, c in enumerate(cells) if is_solution(c)]
    assert solutions, f"{path.name}: no implement-exercise"
    for i in solutions:
        c = cells[i]
        assert c["metadata"]["jupyter"]["source_hidden"] and c["metadata"]["cellView"] == "form", path.name
        assert src(c).startswith("#@title Our solution:"), f"{path.name}: a Colab form needs its title first"
        assert BEGIN in src(c) and END in src(c)
        test = cells[i + 1]
        assert is_test(test) and nbgrader(test)["locked"] and nbgrader(test)["points"] > 0, f"{path.name} cell {i + 1}"
        tree = ast.parse(src(test))
        imported = {a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert called <= imported, f"{path.name}: the test cell must import {called - imported} itself"
    for ex in notebook_exercises(nb):
        assert ex.checks, f"{path.name}: no test cell after {ex.functions}"
        for module, checker, _ in ex.checks:
            assert callable(getattr(exercises if module.endswith(".exercises") else loop_exercises, checker, None))
    answers = [i for i, c in enumerate(cells) if is_answer(c)]
    found = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## What we found" in src(c))
    assert answers and min(answers) > found, f"{path.name}: the written answers belong after the lesson"
    assert all(cells[i]["metadata"]["jupyter"]["source_hidden"] and BEGIN in src(cells[i]) for i in answers)
    start = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## Exercises" in src(c))
    exercise_text = "\n".join(src(c) for c in cells[start:] if c["cell_type"] == "markdown" and not is_answer(c))
    open_ones = re.findall(r"^(?:\d+\. \*\*|\*\*\d+ · )(?:Predict, then run|Tweak and explain)", exercise_text, re.M)
    assert len(answers) == len(open_ones), f"{path.name}: {len(open_ones)} open exercises, {len(answers)} answer cells"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_version_keeps_the_scaffold(path):
    nb = json.loads(path.read_text())
    st = student_notebook(nb)
    assert json.loads(path.read_text()) == nb  # the original is untouched
    assert len(st["cells"]) == len(nb["cells"])
    for a, b in zip(nb["cells"], st["cells"]):
        assert nbgrader(a) == nbgrader(b) and a["cell_type"] == b["cell_type"]  # nbgrader and grade find them
        assert "cellView" not in b["metadata"] and not b["metadata"].get("jupyter", {}).get("source_hidden")
        if b["cell_type"] == "code":
            assert b["outputs"] == [] and b["execution_count"] is None and "execution" not in b["metadata"]
        if is_solution(a):
            assert "# YOUR CODE HERE" in src(b) and BEGIN not in src(b) and not src(b).startswith("#@title")
            ref = {f.name: _signature(f) for f in ast.parse(src(a)).body if isinstance(f, ast.FunctionDef)}
            got = {f.name: _signature(f) for f in ast.parse(src(b)).body if isinstance(f, ast.FunctionDef)}
            assert got == ref  # same functions, same arguments: the checker can call them
            given = [line for line in src(a).splitlines()[1:] if line.strip() and not line.strip().startswith("###")]
            inside = "\n".join(src(a).split(BEGIN)[i].split(END)[0] for i in range(1, src(a).count(BEGIN) + 1))
            kept = [line for line in given if line not in inside.splitlines()]
            assert all(line in src(b).splitlines() for line in kept)  # imports, def, docstring, stages, given lines
        elif is_answer(a):
            assert TEXT_STUB in src(b) and "Our answer" not in src(b)
        else:
            assert src(a) == src(b)


def test_the_ppo_loop_keeps_its_given_rollout():
    """The given lines of a loop exercise stay in the stub (the rollout of one PPO iteration)."""
    ppo = json.loads(next(p for p in NOTEBOOKS if p.name.startswith("05")).read_text())
    stub = next(src(c) for c in student_notebook(ppo)["cells"] if is_solution(c) and "my_ppo_iteration" in src(c))
    assert "    ro = rollout(policy, reward_model, tokenizer, prompts, cfg)\n    mask = ro.mask" in stub
    assert stub.count("raise NotImplementedError()") == 4  # stages 4, 5, 6, 7


def test_student_versions_are_what_nbgrader_generates():
    """`student-notebooks` and nbgrader's generate_assignment (ClearSolutions, then the course's ShowExerciseCells)
    give the same cells: one markup, two tools."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbgrader")
    from nbgrader.preprocessors import ClearOutput, ClearSolutions

    from rlhf_lite.course.homework import ShowExerciseCells

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for pp in (ClearSolutions(), ShowExerciseCells(), ClearOutput()):
            nb, _ = pp.preprocess(nb, {})
        ours = student_notebook(json.loads(path.read_text()))
        assert [c.source for c in nb.cells] == [src(c) for c in ours["cells"]], path.name
        assert [dict(c.metadata).get("jupyter") for c in nb.cells] == [c["metadata"].get("jupyter") for c in
                                                                        ours["cells"]]


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
    assert "implement my_dpo_loss, my_group_advantages; 4 written answers" in capsys.readouterr().out
    assert main(["student-notebooks", "--out", str(NOTEBOOKS[0].parent)]) == 2
    assert "would replace the solutions" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        write_student_notebooks(tmp_path / "x", src=tmp_path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_stub_asks_for_the_missing_code(path):
    """Each stub of the student version, run with the notebook's imports and then its test cell, makes the checker
    say the exercise is waiting to be done (a loop's given lines run first). The cells before the exercises are the
    course notebook's own (test_student_version_keeps_the_scaffold), which nbval runs."""
    from rlhf_lite.course.exercises import ExerciseError
    from rlhf_lite.models import load_base

    nb = json.loads(path.read_text())
    st = student_notebook(nb)
    tok = load_base("tiny")[1]
    for i, c in enumerate(st["cells"]):
        if not is_solution(c):
            continue
        ns = {"tok": tok}
        for line in course_imports(nb):
            exec(line, ns)
        exec(src(c), ns)
        with pytest.raises(ExerciseError, match="not implemented yet"):
            exec(src(st["cells"][i + 1]), ns)
