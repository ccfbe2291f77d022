"""Homework in nbgrader's format: the course's notebooks are nbgrader source notebooks.

The markup (nbgrader's, cell metadata ``nbgrader``; https://nbgrader.readthedocs.io):

* an **implement-exercise** is a code cell with ``solution: true, grade: false``. Its code between
  ``### BEGIN SOLUTION`` and ``### END SOLUTION`` is the answer; what lies outside (imports, ``def`` lines,
  docstrings, a loop's numbered stage comments and its given lines) is the scaffold every student gets;
* the cell after it is an **autograded test cell** (``grade: true, solution: false, locked: true``, with
  ``points``): it imports its checker from :mod:`rlhf_lite.course.exercises` or
  :mod:`rlhf_lite.course.loop_exercises` itself and calls it on the student's function;
* a **written answer** (to a predict or tweak exercise) is a markdown cell with ``solution: true, grade: true``
  under "Your answers" at the end of the notebook, our answer inside the solution region.

In the course's own notebooks a solution is out of a learner's sight until asked for: its source is collapsed in
JupyterLab (``jupyter.source_hidden``) and shown as a form in Colab (``cellView: form`` and a ``#@title`` first
line). A student version (:func:`student_notebook`, what ``nbgrader generate_assignment`` gives with
:class:`rlhf_lite.course.homework.ShowExerciseCells`) replaces each solution region with nbgrader's stub (``# YOUR
CODE HERE`` / ``raise NotImplementedError()``, or ``YOUR ANSWER HERE``), shows every cell and clears the outputs.
``python -m rlhf_lite student-notebooks --out DIR`` writes them without nbgrader.
"""
from __future__ import annotations

import ast
import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_text
from ..models import REPO_ROOT

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
"""nbgrader's solution delimiters (``ClearSolutions.begin_solution_delimeter`` / ``end_solution_delimeter``)."""
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
"""nbgrader's stubs (``ClearSolutions.code_stub["python"]`` and ``text_stub``)."""
COLAB_TITLE = re.compile(r"^#\s*@title\b")
"""The first line of a Colab form cell: with ``cellView: form`` Colab shows this title and hides the code."""


def nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_solution(cell: dict) -> bool:
    """An implement-exercise: a code cell a student writes, graded by the test cell after it."""
    m = nbgrader(cell)
    return cell.get("cell_type") == "code" and bool(m.get("solution")) and not m.get("grade")


def is_answer(cell: dict) -> bool:
    """A written answer (manually graded)."""
    m = nbgrader(cell)
    return bool(m.get("solution")) and bool(m.get("grade"))


def is_test(cell: dict) -> bool:
    """An autograded test cell (it calls a checker)."""
    m = nbgrader(cell)
    return cell.get("cell_type") == "code" and bool(m.get("grade")) and not m.get("solution")


def source(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def clear_solution(text: str, stub: str) -> str:
    """nbgrader's ``ClearSolutions`` on one cell's source: every ``BEGIN``…``END`` region replaced by ``stub``
    (indented as the ``BEGIN`` line), or the whole source if it has no region."""
    lines, out, inside, found = text.split("\n"), [], False, False
    for line in lines:
        if "BEGIN SOLUTION" in line:
            if inside:
                raise ValueError(f"a solution region starts inside another one:\n{text}")
            inside = found = True
            indent = re.match(r"\s*", line).group(0)
            out += [indent + s for s in stub.split("\n")]
        elif "END SOLUTION" in line:
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"a solution region has no '{END}':\n{text}")
    return "\n".join(out) if found else stub


def without_title(text: str) -> str:
    """A cell's source without its Colab ``#@title`` first line."""
    first, _, rest = text.partition("\n")
    return rest if COLAB_TITLE.match(first) else text


def show_cell(cell: dict) -> None:
    """Undo what hides a solution from a learner (in place): the Colab form and title, JupyterLab's collapsed
    source."""
    md = cell.get("metadata", {})
    md.pop("cellView", None)
    jupyter = md.get("jupyter", {})
    jupyter.pop("source_hidden", None)
    if "jupyter" in md and not jupyter:
        del md["jupyter"]
    if cell.get("cell_type") == "code":
        cell["source"] = without_title(source(cell))


def student_notebook(nb: dict) -> dict:
    """The student version of a course notebook (nbformat JSON as a dict): solution regions replaced by nbgrader's
    stubs, every cell shown, outputs and execution counts cleared; nbgrader's metadata kept, so that ``grade`` and
    nbgrader find the exercises. The notebook passed in is not modified."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        m = nbgrader(cell)
        if m.get("solution"):
            cell["source"] = clear_solution(source(cell), CODE_STUB if cell["cell_type"] == "code" else TEXT_STUB)
        show_cell(cell)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            cell.get("metadata", {}).pop("execution", None)
    return nb


# ---------------------------------------------------------------------------------------------
# What a notebook asks: its exercises, read from the course's (instructor's) notebook
# ---------------------------------------------------------------------------------------------
@dataclass
class Exercise:
    """An implement-exercise of a course notebook, as the grader sees it."""
    grade_id: str
    """nbgrader's ``grade_id`` of the solution cell."""
    functions: list[str]
    """The functions the cell defines (what the checker calls)."""
    given: str
    """The scaffold: the cell with its solution regions replaced by the stub (what every student starts from)."""
    checks: list[tuple[str, str, list[str]]] = field(default_factory=list)
    """The test cell's checker calls: (module, checker, argument names), e.g.
    ``("rlhf_lite.course.exercises", "check_prefer_prob", ["my_prefer_prob"])``."""
    points: float = 0
    """The test cell's points."""


def _checker_calls(test_source: str) -> list[tuple[str, str, list[str]]]:
    tree = ast.parse(test_source)
    modules = {a.asname or a.name: n.module for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("check_"):
            args = [a.id for a in node.args if isinstance(a, ast.Name)]
            if node.func.id not in modules or len(args) != len(node.args) or node.keywords:
                raise ValueError(f"test cell call {ast.unparse(node)}: a checker imported in the same cell, called "
                                 "with names only")
            calls.append((modules[node.func.id], node.func.id, args))
    return calls


def defined_functions(text: str) -> list[str]:
    """Names of the top-level functions a cell defines."""
    return [n.name for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)]


def notebook_exercises(nb: dict) -> list[Exercise]:
    """The implement-exercises of a course notebook, each with the checker calls of the test cell after it."""
    cells, found = nb["cells"], []
    for i, c in enumerate(cells):
        if not is_solution(c):
            continue
        text = without_title(source(c))
        ex = Exercise(nbgrader(c)["grade_id"], defined_functions(text), clear_solution(text, CODE_STUB))
        test = next((d for d in cells[i + 1:] if is_test(d)), None)
        if test is not None:
            ex.checks, ex.points = _checker_calls(source(test)), nbgrader(test).get("points", 0)
        found.append(ex)
    return found


def course_imports(nb: dict) -> list[str]:
    """The top-level import statements of a course notebook's code cells, but not those of ``rlhf_lite``: the names
    an answer may use without importing them (``torch``, ``F``, ``math``). What it uses from ``rlhf_lite`` the exercise
    cell imports itself, in its scaffold."""
    out = []
    for c in nb["cells"]:
        if c.get("cell_type") != "code":
            continue
        text = clear_solution(without_title(source(c)), CODE_STUB) if is_solution(c) else source(c)  # scaffolds too
        try:
            tree = ast.parse(text)
        except SyntaxError:  # notebook magics
            continue
        for n in tree.body:
            module = n.module if isinstance(n, ast.ImportFrom) else None
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else []
            if isinstance(n, (ast.Import, ast.ImportFrom)) and not any(
                    (m or "").split(".")[0] == "rlhf_lite" for m in [module, *names]):
                out.append(ast.unparse(n))
    return list(dict.fromkeys(out))


def read_notebook(path: str | Path) -> dict:
    """A notebook file as nbformat JSON; a damaged file is an error naming it and the line."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a valid notebook (JSON error at line {e.lineno}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a notebook: it is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or \
            not all(isinstance(c, dict) and "cell_type" in c for c in nb["cells"]):
        raise ValueError(f"{path} is not a notebook: expected a JSON object with a list of cells (nbformat 4), got "
                         f"{json.dumps(nb)[:60]}")
    for i, c in enumerate(nb["cells"]):
        src = c.get("source", "")
        if not (isinstance(src, str) or isinstance(src, list) and all(isinstance(line, str) for line in src)):
            raise ValueError(f"{path} is not a valid notebook: cell {i}'s source is {json.dumps(src)[:40]}, not text "
                             "(a string or a list of strings)")
        if not isinstance(c.get("metadata", {}), dict) or not isinstance(nbgrader(c), dict):
            raise ValueError(f"{path} is not a valid notebook: cell {i}'s metadata is not an object")
    return nb


def write_student_notebooks(out: str | Path, src: str | Path | None = None) -> list[Path]:
    """Write the student version of every ``NN_*.ipynb`` in ``src`` (default: the course's notebooks) to ``out``.
    Refuses to write into the folder it reads from (that would overwrite the solutions), and to replace a notebook
    in ``out`` that an earlier run of this function did not write (a student's own work)."""
    src = Path(src) if src else REPO_ROOT / "notebooks"
    out = Path(out)
    paths = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {src}; pass --src with the course's notebooks folder")
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the notebooks folder itself: the student versions would replace the "
                         "solutions. Pick another folder")
    out.mkdir(parents=True, exist_ok=True)
    marker = out / ".rlhf-lite-student-notebooks.json"  # the notebooks an earlier run wrote here: safe to replace
    ours = set(json.loads(marker.read_text())) if marker.is_file() else set()
    clash = [p.name for p in paths if (out / p.name).exists() and p.name not in ours]
    if clash:
        raise ValueError(f"--out {out} already holds {', '.join(clash[:3])}{' …' if len(clash) > 3 else ''}, not "
                         "written by student-notebooks (a student's work?); pick another folder or move them away")
    written = []
    for p in paths:
        nb = read_notebook(p)
        target = out / p.name
        write_text(target, json.dumps(student_notebook(nb), indent=1, ensure_ascii=False) + "\n")  # never half-written
        written.append(target)
        write_text(marker, json.dumps(sorted(ours | {t.name for t in written})))
    return written


def student_notebooks_command(out: str, src: str | None = None) -> dict:
    """``student-notebooks``: :func:`write_student_notebooks`, with each notebook's exercises printed."""
    written = write_student_notebooks(out, src)
    for path in written:
        nb = read_notebook(path)
        stubs = [fn for ex in notebook_exercises(nb) for fn in ex.functions]
        n_written = sum(1 for c in nb["cells"] if is_answer(c))
        print(f"{path}: " + (f"implement {', '.join(stubs)}" if stubs else "no implement-exercises") +
              f"; {n_written} written answers")
    print(f"student notebooks written to {out}: solution regions replaced by '# YOUR CODE HERE' stubs and written "
          "answers by 'YOUR ANSWER HERE', outputs cleared; the cell after each stub runs its checker")
    return {"written": [str(p) for p in written]}
