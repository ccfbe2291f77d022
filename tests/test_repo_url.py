import shutil

from rlhf_lite import REPO_URL
from rlhf_lite.models import REPO_ROOT
from rlhf_lite.tools.repo import repo_url_uses, set_repo_url


def test_setup_cells_badges_and_constant_name_one_repository():
    uses = repo_url_uses()
    notebooks = [k for k in uses if k.startswith("notebooks/")]
    assert len(notebooks) == 9 and all(len(uses[k]) == 1 for k in notebooks)  # one setup cell each
    assert len(uses["README.md"]) == 9  # a Colab badge per notebook
    assert {u for urls in uses.values() for u in urls} == {REPO_URL}


def test_repo_url_points_everything_at_a_fork(tmp_path):
    for part in ("notebooks", "rlhf_lite"):
        shutil.copytree(REPO_ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("saved", "__pycache__"))
    shutil.copy(REPO_ROOT / "README.md", tmp_path / "README.md")
    changed = set_repo_url("https://github.com/someone/rlhf-lite-fork/", root=tmp_path)
    assert len(changed) == 11
    uses = repo_url_uses(tmp_path)
    assert {u for urls in uses.values() for u in urls} == {"https://github.com/someone/rlhf-lite-fork"}
    assert len(uses["README.md"]) == 9
    assert set_repo_url("https://github.com/someone/rlhf-lite-fork", root=tmp_path) == []  # already there


def test_repo_url_rejects_what_colab_cannot_open(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="expected https://github.com/OWNER/NAME"):
        set_repo_url("https://gitlab.com/someone/rlhf-lite", root=tmp_path)
