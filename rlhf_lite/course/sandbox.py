"""The child process of ``grade`` (:func:`rlhf_lite.course.student.grade_notebook`): one exercise, isolated.

It reads a JSON spec on stdin (the notebook's imports, the student's cell, the checker calls, where to write the
result), runs them, and writes ``{"passed", "message"}`` to the result file only once all of them have run, so
``exit()`` in a student's cell, a crash or a kill can never count as a pass. It imports nothing heavy itself: the
exercise's own imports load what it needs.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path


def run_exercise() -> None:
    spec = json.loads(sys.stdin.read())
    ns: dict = {}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            for line in spec["imports"]:
                with contextlib.suppress(Exception):
                    exec(line, ns)
            if spec["needs_tok"]:
                from rlhf_lite.models import load_base  # only for checkers that take the tokenizer

                ns["tok"] = load_base("tiny")[1]
            exec(spec["cell"], ns)
            for line in spec["checks"]:
                exec(line, ns)
        outcome = {"passed": True, "message": out.getvalue().strip()}
    except SystemExit as e:
        outcome = {"passed": False, "message": f"the cell called exit() (SystemExit({e.code!r})) before its checker "
                                               "ran"}
    except BaseException as e:  # the checker's explanation, a crash in the student's cell, a KeyboardInterrupt
        explained = type(e).__name__ == "ExerciseError"  # rlhf_lite.course.exercises.ExerciseError
        message = str(e) if explained else f"the cell did not run: {type(e).__name__}: {e}"
        outcome = {"passed": False, "message": message}
    Path(spec["result"]).write_text(json.dumps(outcome))
