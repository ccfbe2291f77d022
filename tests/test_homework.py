"""nbgrader's own workflow on the course: `homework` writes the course folder, `nbgrader generate_assignment` makes
the student version, `nbgrader autograde` grades a right and a wrong submission on `smoke` (needs the instructor
extra)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_lite.__main__ import main

pytest.importorskip("nbgrader")


def _nbgrader(course: Path, *args: str) -> str:
    nbgrader = shutil.which("nbgrader", path=str(Path(sys.executable).parent)) or "nbgrader"
    r = subprocess.run([nbgrader, *args], cwd=course, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "RLHF_LITE_PROFILE": "smoke"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


@pytest.mark.slow
def test_generate_assignment_and_autograde(tmp_path, capsys):
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    assert main(["homework", "--out", str(course), "--notebooks", "00"]) == 0
    assert "nbgrader generate_assignment 00_tour" in capsys.readouterr().out
    _nbgrader(course, "generate_assignment", "00_tour")
    release = json.loads((course / "release" / "00_tour" / "00_tour.ipynb").read_text())
    cells = {c["metadata"]["nbgrader"]["grade_id"]: c for c in release["cells"] if "nbgrader" in c["metadata"]}
    stub = "".join(cells["prefer-prob"]["source"])
    assert stub.startswith("import math") and "# YOUR CODE HERE\n    raise NotImplementedError()" in stub
    assert "cellView" not in cells["prefer-prob"]["metadata"] and "jupyter" not in cells["prefer-prob"]["metadata"]
    assert "".join(cells["answer-2"]["source"]).endswith("YOUR ANSWER HERE\n")
    assert cells["check-prefer-prob"]["metadata"]["nbgrader"]["locked"]
    bodies = {"alice": "return 1.0 / (1.0 + math.exp(-(score_a - score_b) / temperature))", "bob": "return 0.5"}
    for student, body in bodies.items():
        nb = json.loads(json.dumps(release))
        for c in nb["cells"]:
            grade_id = c["metadata"].get("nbgrader", {}).get("grade_id")
            if grade_id == "prefer-prob":
                c["source"] = "".join(c["source"]).replace("# YOUR CODE HERE\n    raise NotImplementedError()", body)
            if grade_id == "check-prefer-prob":  # a student who edits the test cell: autograde restores it
                c["source"] = "pass\n"
        folder = course / "submitted" / student / "00_tour"
        folder.mkdir(parents=True)
        (folder / "00_tour.ipynb").write_text(json.dumps(nb))
    _nbgrader(course, "autograde", "00_tour")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: {g.name: g.score for g in gb.find_submission_notebook("00_tour", "00_tour", s).grades}
                  for s in bodies}
    assert scores["alice"]["check-prefer-prob"] == 1 and scores["bob"]["check-prefer-prob"] == 0, scores
    _nbgrader(course, "generate_feedback", "00_tour")
    feedback = (course / "feedback" / "bob" / "00_tour" / "00_tour.html").read_text()
    assert "ExerciseError" in feedback
