"""nbgrader's own workflow on the course: `homework` writes the course folder, `nbgrader generate_assignment` makes
the student version, `nbgrader autograde` grades a right and a wrong submission on `smoke` (needs the instructor
extra)."""
import json
from pathlib import Path

import pytest

from rlhf_lite.__main__ import main

pytest.importorskip("nbgrader")


def _api(course: Path):
    """nbgrader's API, configured as its command line would be from the course folder (nbgrader_config.py)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)


def _ok(result: dict) -> None:
    assert result["success"], result.get("error", "")[-3000:] + result.get("log", "")[-2000:]


@pytest.mark.slow
def test_generate_assignment_and_autograde(tmp_path, capsys, monkeypatch):
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    assert main(["homework", "--out", str(course), "--notebooks", "00"]) == 0
    assert "nbgrader generate_assignment 00_tour" in capsys.readouterr().out
    api = _api(course)
    _ok(api.generate_assignment("00_tour"))
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
    monkeypatch.setenv("RLHF_LITE_PROFILE", "smoke")  # the kernels autograde starts inherit it
    for student in bodies:
        _ok(api.autograde("00_tour", student))
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: {g.name: g.score for g in gb.find_submission_notebook("00_tour", "00_tour", s).grades}
                  for s in bodies}
    assert scores["alice"]["check-prefer-prob"] == 1 and scores["bob"]["check-prefer-prob"] == 0, scores
    _ok(api.generate_feedback("00_tour", "bob"))
    feedback = (course / "feedback" / "bob" / "00_tour" / "00_tour.html").read_text()
    assert "ExerciseError" in feedback
