import ast
import inspect

import pytest

from rlhf_lite import config
from rlhf_lite.config import PROFILES, get_profile


def test_profiles_and_env(monkeypatch):
    assert set(PROFILES) == {"smoke", "tiny", "gpt2", "gpt2-smoke", "gpt2-hub"}
    monkeypatch.delenv("RLHF_LITE_PROFILE", raising=False)
    assert get_profile().name == "tiny"
    monkeypatch.setenv("RLHF_LITE_PROFILE", "gpt2")
    assert get_profile().name == "gpt2" and get_profile().base_model == "gpt2"
    assert get_profile("smoke").name == "smoke"  # an explicit name wins


def test_typo_lists_valid_profiles(monkeypatch):
    monkeypatch.setenv("RLHF_LITE_PROFILE", "tinny")
    with pytest.raises(ValueError, match=r"'tinny'.*RLHF_LITE_PROFILE.*smoke, tiny, gpt2, gpt2-hub, gpt2-smoke"):
        get_profile()


def test_profiles_are_copies():
    p = get_profile("tiny")
    p.world.n_prompts = 1
    assert get_profile("tiny").world.n_prompts != 1


def test_every_config_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(config))
    for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), f"{cls.name}.{node.target.id}"


def test_smoke_profiles_are_the_ci_sizes():
    assert [n for n in ("smoke", "tiny", "gpt2", "gpt2-smoke", "gpt2-hub") if get_profile(n).smoke] == \
        ["smoke", "gpt2-smoke"]
