import ast
import inspect
import json
import os

import pytest

from rlhf_lite import config
from rlhf_lite.config import PROFILES, get_profile


def test_profiles_and_env(monkeypatch):
    assert set(PROFILES) == {"smoke", "tiny", "gpt2", "gpt2-smoke", "gpt2-hub", "gpt2-hub-smoke"}
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


def test_override_sets_each_kind_of_setting_and_leaves_the_profile_alone():
    p = get_profile("tiny")
    q = config.override(p, "reward.epochs=2 ppo.lr=1e-4 reward.lora=false lora.targets=c_attn,c_fc "
                           "sft.max_steps=10 n_eval_prompts=50")
    assert (q.reward.epochs, q.ppo.lr, q.reward.lora, q.lora.targets) == (2, 1e-4, False, ("c_attn", "c_fc"))
    assert (q.sft.max_steps, q.n_eval_prompts) == (10, 50)  # an optional setting (None by default) reads a number
    assert (p.reward.epochs, p.ppo.lr, p.reward.lora, p.n_eval_prompts) == (1, 3e-4, True, 200)
    assert config.override(p, "") == p


@pytest.mark.parametrize("text, message", [
    ("reward.epochs", "write SECTION.FIELD=VALUE"),
    ("rewards.epochs=2", "no settings section 'rewards'.*the sections are: world, pretrain, sft, reward"),
    ("reward.epoch=2", "reward has no setting 'epoch'.*epochs"),
    ("reward.epochs=2.5", "reward.epochs takes a whole number \\(now 1\\), got '2.5'"),
    ("reward.lora=yes", "takes true or false"),
    ("reward.lr=-1", "RewardConfig.lr must be greater than 0"),
    ("name=x", "the profile has no setting 'name'"),
])
def test_override_errors_name_the_setting(text, message):
    with pytest.raises(ValueError, match=message):
        config.override(get_profile("tiny"), text)


def test_settings_from_the_environment_and_the_command_line(monkeypatch, capsys):
    from rlhf_lite.__main__ import main

    monkeypatch.setenv("RLHF_LITE_SET", "reward.epochs=3")
    assert get_profile("tiny").reward.epochs == 3
    monkeypatch.delenv("RLHF_LITE_SET")
    assert main(["--set", "reward.epochs=0", "world", "--show", "1"]) == 2  # checked before any work
    assert "RewardConfig.epochs must be greater than 0" in capsys.readouterr().err
    assert main(["--set", "ppo.beta=0.1", "world", "--show", "1"]) == 2
    assert "ppo has no setting 'beta'" in capsys.readouterr().err
    assert main(["--profile", "smoke", "--set", "world.n_prompts=300", "world", "--stats"]) == 0
    assert json.loads(capsys.readouterr().out)["prompts"] == 300  # the command ran with the setting
    assert "RLHF_LITE_SET" not in os.environ  # and it ends with the command
