"""The grader a student cannot fool: every trick tried on it fails, with the reason named, both at the static reading
of the answer and (with that reading off) at the fences of the sandbox behind it; nothing a student's code does
reaches the package, the grader or the next student."""
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlhf_lite.__main__ import main
from rlhf_lite.course.grader import answer_problems, grade_exercise, grade_notebook, package_digest
from rlhf_lite.course.student import course_imports, nbgrader, notebook_exercises, read_notebook, student_notebook

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "notebooks" / "00_tour.ipynb"
EXERCISES_PY = ROOT / "rlhf_lite" / "course" / "exercises.py"
WRONG = "def my_prefer_prob(score_a, score_b, temperature):\n    return 0.5\n"
RIGHT = ("import math\n\ndef my_prefer_prob(score_a, score_b, temperature):\n"
         "    return 1.0 / (1.0 + math.exp(-(score_a - score_b) / temperature))\n")
TRICKS = {  # name: (the student's cell, what the static reading says, what the sandbox says with that reading off)
    "rebinds the checker": (WRONG + "def check_prefer_prob(*a, **k):\n    pass\n", "got 0.50000", "got 0.50000"),
    "forges the result file": ("import os\nopen('result.json', 'w').write('{\"passed\": true}')\nos._exit(0)\n",
                               "imports os", "process ended (exit code 0)"),
    "patches json.dumps": ("import json\njson.dumps = lambda *a, **k: '{\"passed\": true}'\n" + WRONG,
                           "changes json.dumps", "sent something that is not data"),
    "patches torch.allclose": ("import torch\nt = torch\nt.allclose = lambda *a, **k: True\n" + WRONG,
                               "changes t.allclose", "got 0.50000"),
    "imports the reference": ("from rlhf_lite.world.labelers import prefer_prob\nmy_prefer_prob = prefer_prob\n",
                              "imports prefer_prob from rlhf_lite.world.labelers", None),
    "execs the shipped solution": (
        f"import json\nnb = json.load(open({str(TOUR)!r}))\n"
        "exec(''.join(next(c['source'] for c in nb['cells'] if 'def my_prefer_prob' in ''.join(c['source']))))\n",
        "uses exec()", "does not allow reading"),
    "rewrites the package": (f"open({str(EXERCISES_PY)!r}, 'a').write('# changed')\n" + WRONG, "uses open()",
                             "does not allow writing"),
    "starts a detached child": ("import subprocess\nsubprocess.Popen(['setsid', 'sleep', '900'])\n" + RIGHT,
                                "imports subprocess", "does not allow subprocess.Popen"),
    "forks": ("import os\nif os.fork() == 0:\n    import time\n    time.sleep(900)\n" + RIGHT, "imports os",
              "does not allow os.fork"),
    "kills the grader": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + RIGHT, "imports os",
                         "does not allow os.kill"),
    "allocates 2 GiB": ("x = bytearray(2 * 2**30)\n" + RIGHT, "more memory than grading allows",
                        "more memory than grading allows"),
    "prints 100 MB": ("print('x' * 10**8)\n" + RIGHT, "File too large", "File too large"),
    "exits": ("raise SystemExit(0)\n", "called exit()", "called exit()"),
    "reads Python's internals": ("my_prefer_prob = ().__class__.__base__\n", "reads ().__class__",
                                 "your function raised TypeError"),
}


@pytest.fixture(scope="module")
def tour():
    nb = read_notebook(TOUR)
    (ex,) = notebook_exercises(nb)
    return ex, course_imports(nb)


def test_the_static_reading_names_what_an_answer_must_not_do():
    given = "import torch\n\nfrom rlhf_lite.data import build_sft_example\n"
    assert answer_problems("import torch\nfrom rlhf_lite.data import build_sft_example\ndef f():\n    pass\n", given,
                           []) == []
    assert answer_problems("from rlhf_lite.sft import sft_loss\n", given, []) == [
        "imports sft_loss from rlhf_lite.sft, which this exercise's scaffold does not give: the package's own "
        "implementation is what your answer is checked against; write it yourself"]
    assert "imports rlhf_lite.ppo" in answer_problems("import rlhf_lite.ppo as p\n", given, [])[0]
    torch_f = ["import torch.nn.functional as F"]
    assert "changes F.cross_entropy" in answer_problems("F.cross_entropy = None\n", given, torch_f)[0]
    assert "uses getattr" not in " ".join(answer_problems("x = getattr(torch, 'ones')\n", given, []))
    assert "not valid Python (line 1" in answer_problems("def f(:\n", given, [])[0]
    assert answer_problems("def f(x):\n    x.y = 1\n    return x\n", given, []) == []  # a local object is fine


@pytest.mark.slow
def test_every_trick_fails_with_its_reason(tour):
    """Each trick of the list, graded as `grade` grades it (static reading on), then with the static reading off:
    never a pass (except the reference import behind the fences, which the static reading reports), the package
    unchanged, no process left behind, and the grader still alive (this test's own process)."""
    ex, imports = tour
    before = package_digest()
    jobs = [(name, cell, static, reason) for name, (cell, *reasons) in TRICKS.items()
            for static, reason in zip((True, False), reasons)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        rows = list(pool.map(lambda j: grade_exercise(ex, j[1], imports, timeout=120, read_source=j[2]), jobs))
    for (name, _, static, reason), row in zip(jobs, rows):
        where = "static reading" if static else "sandbox"
        if reason is None:  # the reference, imported behind the fences: the static reading is what reports it
            continue
        assert not row["passed"], f"{name} passed the {where}: {row}"
        assert reason in row["message"], f"{name} ({where}): {row['message']}"
        assert len(row["message"]) < 3000
    assert package_digest() == before and "# changed" not in EXERCISES_PY.read_text()
    assert subprocess.run(["pgrep", "-f", "sleep 900"], capture_output=True).stdout == b""
    # the next student's untouched stub still fails
    stub = next(c for c in student_notebook(json.loads(TOUR.read_text()))["cells"]
                if nbgrader(c).get("grade_id") == ex.grade_id)
    row = grade_exercise(ex, "".join(stub["source"]), imports)
    assert not row["passed"] and "not implemented yet" in row["message"]


@pytest.mark.slow
def test_the_whole_process_group_ends_and_a_right_answer_is_not_held_up(tour):
    """A right answer that leaves a thread printing passes at once; an endless loop is stopped at the time limit."""
    ex, imports = tour
    t0 = time.monotonic()
    busy = ("import threading, time\n"
            "threading.Thread(target=lambda: [print('x') or time.sleep(1) for _ in range(900)]).start()\n")
    row = grade_exercise(ex, busy + RIGHT, imports, read_source=False)
    assert row["passed"] and time.monotonic() - t0 < 60, row
    t0 = time.monotonic()
    row = grade_exercise(ex, "def my_prefer_prob(a, b, t):\n    while True:\n        pass\n", imports, timeout=15)
    assert not row["passed"] and "did not finish within 15 s" in row["message"]
    assert time.monotonic() - t0 < 40


def _submission(tmp_path: Path, cell: str | None = None, strip_metadata: bool = False, test_cell: str | None = None,
                name: str = "00_tour.ipynb") -> Path:
    """A student's notebook 00: the student version, its exercise cell replaced by ``cell``."""
    nb = student_notebook(json.loads(TOUR.read_text()))
    for c in nb["cells"]:
        m = nbgrader(c)
        if cell is not None and m.get("grade_id") == "prefer-prob":
            c["source"] = cell
        if test_cell is not None and m.get("grade_id") == "check-prefer-prob":
            c["source"] = test_cell
        if strip_metadata:
            c["metadata"] = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.slow
def test_what_to_grade_comes_from_the_course_not_the_submission(tmp_path, capsys):
    # the stub left as it is, with the checker call commented out in the student's test cell
    rows = grade_notebook(_submission(tmp_path / "a", test_cell="# check_prefer_prob(my_prefer_prob)\n"))
    assert [r["passed"] for r in rows] == [False] and "not implemented yet" in rows[0]["message"]
    # nbgrader's metadata stripped: the cell is found by the function it defines, and graded on what it does
    rows = grade_notebook(_submission(tmp_path / "b", cell=RIGHT, strip_metadata=True))
    assert [r["passed"] for r in rows] == [True]
    rows = grade_notebook(_submission(tmp_path / "c", cell=WRONG, strip_metadata=True))
    assert [r["passed"] for r in rows] == [False]
    # no cells: every exercise of the course notebook is missing
    empty = tmp_path / "00_tour.ipynb"
    empty.write_text(json.dumps({"cells": []}))
    (row,) = grade_notebook(empty)
    assert not row["passed"] and "no cell of the notebook is exercise 'prefer-prob'" in row["message"]
    # a notebook the course does not have, and the command's count and exit code
    other = tmp_path / "mine.ipynb"
    other.write_text(json.dumps({"cells": []}))
    assert main(["grade", str(empty), str(other)]) == 1
    out = capsys.readouterr().out
    assert "no course notebook named mine.ipynb" in out and "0/2 exercises pass" in out


@pytest.mark.slow
def test_grade_passes_the_solutions_and_explains_stubs_and_mistakes(tmp_path, capsys, monkeypatch):
    """Notebook 04 (two functions and the grouped reward-model batch, a loop): the course's own solutions pass, the
    student version's stubs are waiting, a wrong answer gets the checker's explanation, and the command counts
    exercises and points."""
    from rlhf_lite.course import grader

    rm = ROOT / "notebooks" / "04_reward_model.ipynb"
    solutions = grade_notebook(rm)
    assert [r["passed"] for r in solutions] == [True, True, True]
    nb = student_notebook(json.loads(rm.read_text()))
    for c in nb["cells"]:  # pairs the wrong way round
        if nbgrader(c).get("grade_id") == "pairwise-loss":
            c["source"] = ("import torch.nn.functional as F\n\n"
                           "def my_pairwise_loss(chosen_rewards, rejected_rewards):\n"
                           "    return -F.logsigmoid(rejected_rewards - chosen_rewards).mean()\n")
    student = tmp_path / rm.name
    student.write_text(json.dumps(nb))
    rows = grade_notebook(student)
    assert [r["functions"] for r in rows] == [["my_pairwise_loss"], ["my_ranking_loss"], ["my_reward_batch_loss"]]
    assert not rows[0]["passed"] and "the sign is flipped" in rows[0]["message"], rows[0]
    assert all(not r["passed"] and "not implemented yet" in r["message"] for r in rows[1:]), rows
    graded = {str(rm): solutions, str(student): rows}  # the command prints and counts what grade_notebook found
    monkeypatch.setattr(grader, "grade_notebook", lambda path, *a, **k: graded[str(path)])
    assert main(["grade", str(rm)]) == 0 and "3/3 exercises pass their checkers (5/5 points)" in capsys.readouterr().out
    assert main(["grade", str(student)]) == 1
    out = capsys.readouterr().out
    assert "✗" in out and "my_pairwise_loss" in out and "0/3 exercises pass their checkers (0/5 points)" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged user is used only when grading runs as root")
def test_as_root_the_sandbox_is_unprivileged_where_it_can_be():
    """As root the sandbox runs as `nobody` if that user can run this Python; else the audit hook alone fences it in
    (a Python under /root, as on this course's CI, is not readable by `nobody`)."""
    from rlhf_lite.course.grader import _unprivileged_uid

    uid = _unprivileged_uid()
    assert uid is None or uid != 0


def test_a_submission_that_is_not_a_notebook_fails_alone(tmp_path, capsys):
    """A cell whose source is a number, or a file that is not JSON, is named; the command still grades the rest and
    fails."""
    numeric = tmp_path / "a" / "00_tour.ipynb"
    numeric.parent.mkdir()
    numeric.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": 42}]}))
    broken = tmp_path / "03_human_feedback.ipynb"
    broken.write_text("not json")
    assert main(["grade", str(numeric), str(broken)]) == 1
    out = capsys.readouterr().out
    assert "cell 0's source is 42, not text" in out and "is not a valid notebook (JSON error" in out
    assert "0/2 exercises pass" in out
