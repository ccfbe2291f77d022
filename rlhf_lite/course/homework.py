"""The course as an nbgrader course: ``python -m rlhf_lite homework --out DIR`` (needs the ``instructor`` extra).

It writes an nbgrader course folder whose ``source/`` holds one assignment per notebook (``source/05_ppo/05_ppo.ipynb``)
and an ``nbgrader_config.py`` that adds :class:`ShowExerciseCells` to ``nbgrader generate_assignment``: the
course's notebooks hide each solution from a learner (collapsed in JupyterLab, a form in Colab), and a student's
stub must not be hidden. Then nbgrader's own workflow applies, from that folder::

    nbgrader generate_assignment 05_ppo        # release/05_ppo/05_ppo.ipynb: the student version
    nbgrader collect 05_ppo                    # or copy submissions to submitted/STUDENT/05_ppo/
    RLHF_LITE_PROFILE=tiny nbgrader autograde 05_ppo
    nbgrader generate_feedback 05_ppo          # feedback/STUDENT/05_ppo/05_ppo.html

``autograde`` runs each submission from top to bottom in a kernel, so heavy cells load their saved results
(``RERUN = False``) and the profile decides the time: ``smoke`` for a quick check, ``tiny`` as the notebooks were
executed.
"""
from __future__ import annotations

import json
from pathlib import Path

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

from ..files import write_text
from ..models import REPO_ROOT
from .student import CODE_STUB, read_notebook, show_cell

CONFIG = '''\
# nbgrader's configuration for the rlhf-lite course (written by `python -m rlhf_lite homework`)
from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearMarkScheme, ClearOutput, ClearSolutions,
                                    ComputeChecksums, IncludeHeaderFooter, InstantiateTests, LockCells, SaveCells)

from rlhf_lite.course.homework import ShowExerciseCells

c = get_config()  # noqa: F821 (nbgrader's config loader defines it)
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = "rlhf-lite"
# nbgrader's own list, with the course's solutions un-hidden in the student version
c.GenerateAssignment.preprocessors = [IncludeHeaderFooter, InstantiateTests, LockCells, ClearSolutions,
                                      ShowExerciseCells, ClearOutput, CheckCellMetadata, ComputeChecksums, SaveCells,
                                      ClearHiddenTests, ClearMarkScheme, ComputeChecksums, CheckCellMetadata]
c.ExecutePreprocessor.timeout = 3600  # a notebook on `tiny` computing a cell whose saved result is missing
c.ClearSolutions.code_stub = {{"python": {stub!r}}}  # the stub `student-notebooks` writes too
'''


class ShowExerciseCells(Preprocessor):
    """nbgrader preprocessor: a student sees every cell. Removes what hides a solution in the course's notebooks
    (JupyterLab's collapsed source, Colab's form view and its ``#@title`` line): after ``ClearSolutions`` these
    cells hold the student's stub."""

    enabled = Bool(True)  # nbconvert runs a preprocessor only when enabled

    def preprocess_cell(self, cell, resources, index):
        show_cell(cell)
        return cell, resources


def write_course(out: str | Path, notebooks: list[str] | None = None) -> list[Path]:
    """An nbgrader course folder at ``out``: ``nbgrader_config.py`` and ``source/NN_name/NN_name.ipynb`` for each
    course notebook (or those whose names start with one of ``notebooks``, e.g. ``["00", "05"]``). Refuses a folder
    that already has a ``source/`` it did not write."""
    out = Path(out).resolve()
    paths = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if notebooks:
        paths = [p for p in paths if p.stem.startswith(tuple(notebooks))]
        if not paths:
            raise ValueError(f"no course notebook starts with {', '.join(notebooks)}; the notebooks are "
                             "00_tour … 08_trl_bridge")
    marker = out / ".rlhf-lite-course.json"
    if (out / "source").exists() and not marker.is_file():
        raise ValueError(f"{out} already has a source/ folder not written by `rlhf_lite homework`: pick another "
                         "folder")
    written = []
    for p in paths:
        target = out / "source" / p.stem / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, json.dumps(read_notebook(p), indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    write_text(out / "nbgrader_config.py", CONFIG.format(root=str(out), stub=CODE_STUB))
    write_text(marker, json.dumps([p.stem for p in paths]))
    return written


def homework_command(out: str, notebooks: list[str] | None = None) -> dict:
    """``homework``: :func:`write_course`, then what to run."""
    written = write_course(out, notebooks)
    names = [p.parent.name for p in written]
    print(f"nbgrader course written to {out}: {len(written)} assignments ({', '.join(names)})")
    print(f"next, in {out}: nbgrader generate_assignment {names[0]}, then release, collect, "
          f"`RLHF_LITE_PROFILE=tiny nbgrader autograde {names[0]}`, nbgrader generate_feedback {names[0]}")
    return {"written": [str(p) for p in written]}
