"""Instructor mode: student versions of the notebooks.

Markdown cells tagged ``answer-key`` (the answers to the predict and tweak exercises, for instructors) are left out.
A code cell tagged ``solution`` holds the reference answer to an implement-it-yourself exercise; the cell after
it calls a checker from :mod:`rlhf_lite.course.exercises` (a function) or
:mod:`rlhf_lite.course.loop_exercises` (a training loop). The student version keeps every other cell as it is, clears
all outputs, and turns each solution cell into a stub: its imports and the ``def`` lines of its functions stay
(names and arguments are what the checker calls), the bodies become their numbered stage comments (a loop
exercise's scaffold), ``# YOUR CODE HERE`` and ``raise NotImplementedError``.
``python -m rlhf_lite student-notebooks --out DIR`` writes them.
"""
from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..files import write_text
from ..models import REPO_ROOT

SOLUTION_TAG = "solution"
ANSWER_KEY_TAG = "answer-key"
"""A markdown cell for instructors (the answers to the predict and tweak exercises): left out of student versions."""
STUB_LINES = ("# YOUR CODE HERE", "raise NotImplementedError")
STAGE = re.compile(r"^\s*# \d")
"""A numbered stage comment (``# 1. Tokenize …``) in a solution: the scaffold of a loop exercise, kept in the stub."""


def is_solution(cell: dict) -> bool:
    return cell.get("cell_type") == "code" and SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def _source(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def stub_source(source: str) -> str:
    """The stub of a solution cell: imports kept, each top-level function reduced to its signature (and
    docstring), its numbered stage comments (``# 1. …``, the scaffold of a loop exercise) and ``# YOUR CODE HERE`` /
    ``raise NotImplementedError``. Other statements are dropped."""
    tree = ast.parse(source)
    lines = source.splitlines()
    imports, functions = [], []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append("\n".join(lines[node.lineno - 1:node.end_lineno]))
        elif isinstance(node, ast.FunctionDef):
            first = node.body[0]
            has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                and isinstance(first.value.value, str)
            head_end = first.end_lineno if has_doc else first.lineno - 1
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            indent = " " * first.col_offset
            stages = [indent + line.strip() for line in lines[head_end:node.end_lineno] if STAGE.match(line)]
            functions.append("\n".join(lines[start - 1:head_end] + stages + [indent + s for s in STUB_LINES]))
    parts = ["\n".join(imports)] if imports else []
    return "\n\n".join(parts + (functions or [STUB_LINES[0]])) + "\n"


def defined_functions(source: str) -> list[str]:
    """Names of the top-level functions a (solution) cell defines."""
    return [n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]


def student_notebook(nb: dict) -> dict:
    """A student copy of a notebook (nbformat JSON as a dict): solution cells stubbed, answer keys left out, outputs
    and execution counts cleared. The notebook passed in is not modified."""
    nb = copy.deepcopy(nb)
    nb["cells"] = [c for c in nb["cells"] if ANSWER_KEY_TAG not in c.get("metadata", {}).get("tags", [])]
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)
        if is_solution(cell):
            cell["source"] = stub_source(_source(cell))
            cell["metadata"]["tags"] = [t for t in cell["metadata"]["tags"] if t != SOLUTION_TAG] + ["exercise"]
    return nb


CHECK_CALL = re.compile(r"\b(check_\w+)\(\s*(my_\w+)")


def exercise_checkers(nb: dict) -> list[tuple[str, str | None]]:
    """For each solution cell, each function it defines and the checker a later cell calls on it (None if
    no cell does): ``[(function, checker)]``."""
    cells = nb["cells"]
    calls = {fn: chk for c in cells if c["cell_type"] == "code" for chk, fn in CHECK_CALL.findall(_source(c))}
    return [(fn, calls.get(fn)) for c in cells if is_solution(c) for fn in defined_functions(_source(c))]


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
                         "solutions. "
                         "Pick another folder")
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


GRADE_TIMEOUT_S = 120
"""Time one exercise's checker may take in its own process before it counts as failed (an endless loop)."""


def grade_notebook(path: str | Path, timeout: float = GRADE_TIMEOUT_S) -> list[dict]:
    """Grade the implement-exercises of a student's notebook without running the whole notebook. Each exercise
    runs in a fresh Python process (:func:`rlhf_lite.course.sandbox.run_exercise`) with a time limit, several at
    once: the notebook's imports, the tiny tokenizer as ``tok`` for checkers that need one, the exercise (or
    solution) cell, then the checker calls of the cell after it. An exercise passes only when every checker call
    returned; anything else (a checker's explanation, a crash, ``exit()``, a killed process, the time limit) fails
    with its reason. Returns one row per exercise: ``{"cell", "functions", "checker", "passed", "message"}``."""
    cells = read_notebook(path)["cells"]
    imports = []
    for c in cells:
        if c["cell_type"] == "code":  # every import of the notebook, the exercise cells' own included
            try:
                tree = ast.parse(_source(c))
            except SyntaxError:  # notebook magics: not Python, not imports
                continue
            lines = _source(c).splitlines()
            imports += ["\n".join(lines[n.lineno - 1:n.end_lineno]) for n in tree.body
                        if isinstance(n, (ast.Import, ast.ImportFrom)) and n.col_offset == 0]
    rows, jobs = [], []
    for i, c in enumerate(cells):
        if not (is_solution(c) or "exercise" in c.get("metadata", {}).get("tags", [])):
            continue
        check_cell = next((_source(d) for d in cells[i + 1:]
                           if d["cell_type"] == "code" and CHECK_CALL.search(_source(d))), "")
        calls = CHECK_CALL.findall(check_cell)
        row = {"cell": i, "functions": defined_functions(_source(c)) if _parses(_source(c)) else [],
               "checker": ", ".join(sorted({chk for chk, _ in calls})) or None, "passed": False,
               "message": "" if calls else "no checker call (check_…(my_…)) follows this exercise"}
        rows.append(row)
        if calls:
            checks = [line.strip() for line in check_cell.splitlines() if CHECK_CALL.search(line)]
            jobs.append((row, {"imports": imports, "cell": _source(c), "needs_tok": "tok" in check_cell,
                               "checks": checks}))
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:  # each job waits on its own process
        for (row, _), outcome in zip(jobs, pool.map(lambda job: _run_isolated(job[1], timeout), jobs)):
            row.update(outcome)
    return rows


def _run_isolated(spec: dict, timeout: float) -> dict:
    """One exercise in its own Python process with a time limit; the outcome is what the process wrote to its
    result file, or the reason there is none."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        try:
            proc = subprocess.run([sys.executable, "-c", "from rlhf_lite.course.sandbox import run_exercise; "
                                   "run_exercise()"], input=json.dumps({**spec, "result": str(result)}),
                                  capture_output=True, text=True, timeout=timeout, cwd=tmp,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})  # one process per core
        except subprocess.TimeoutExpired:
            return {"passed": False, "message": f"the exercise did not finish within {timeout:.0f} s (an endless "
                                                "loop?); it was stopped"}
        if result.is_file():
            return json.loads(result.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return {"passed": False, "message": f"the exercise's process ended (exit code {proc.returncode}) before its "
                                            f"checker finished {tail[0][:200]}".rstrip()}


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


def student_notebooks_command(out: str, src: str | None = None) -> dict:
    """``student-notebooks``: :func:`write_student_notebooks`, with each notebook's exercises printed."""
    written = write_student_notebooks(out, src)
    for path in written:
        stubs = [fn for c in read_notebook(path)["cells"] if "exercise" in c.get("metadata", {}).get("tags", [])
                 for fn in defined_functions("".join(c["source"]))]
        print(f"{path}: " + (f"implement {', '.join(stubs)}" if stubs else "no implement-exercises"))
    print(f"student notebooks written to {out}: solutions replaced by '# YOUR CODE HERE' stubs, outputs cleared; "
          "the cell after each stub runs its checker")
    return {"written": [str(p) for p in written]}


def grade_command(notebooks: list[str]) -> dict:
    """``grade``: run every implement-exercise's checker in each notebook; a notebook that cannot be read fails alone.
    Fails (exit 1) unless every exercise passes."""
    total = passed = 0
    for path in notebooks:
        try:
            graded = grade_notebook(path)
        except (ValueError, OSError) as e:  # a damaged or missing notebook fails alone; the others are still graded
            total += 1
            print(f"✗ {path}: cannot grade it: {e}")
            continue
        if not graded:  # nothing to grade is not a pass: the exercise tags may have been stripped
            total += 1
            print(f"✗ {path}: no exercises to grade (no cell tagged 'exercise' or 'solution'); grade the student "
                  "version that student-notebooks wrote, with its cell tags")
            continue
        for row in graded:
            total, passed = total + 1, passed + row["passed"]
            name = ", ".join(row["functions"]) or f"cell {row['cell']}"
            detail = "" if row["passed"] else f"\n    {row['message']}"
            print(f"{'✓' if row['passed'] else '✗'} {path}: {name}{detail}")
    print(f"{passed}/{total} exercises pass their checkers")
    return {"passed": passed, "total": total, "exit": 0 if passed == total else 1}
