"""The command line is a table over library functions: one way in for settings (``--set``, the flags its aliases),
the profile passed as an object, and each command's report computed by a function that returns its numbers."""
import functools

import pytest

import rlhf_lite.commands as commands
from rlhf_lite.__main__ import COMMANDS, main, parser
from rlhf_lite.config import get_profile


@pytest.fixture
def called(monkeypatch):
    """What a command function receives when the CLI calls it (the work itself is skipped)."""
    seen = {}

    def fake(name):
        @functools.wraps(getattr(commands, name))  # the real signature, which the CLI reads to pass arguments
        def fn(profile, **kwargs):
            seen.update(profile=profile, **kwargs)
            return {}
        return fn

    for name in ("ppo", "sft", "reward", "world", "dpo"):
        monkeypatch.setattr(commands, name, fake(name))
    return seen


def test_flags_are_aliases_of_set_fields(called, capsys):
    assert main(["--profile", "smoke", "ppo", "--beta", "0.1", "--steps", "3", "--seed", "7"]) == 0
    ppo = called["profile"].ppo
    assert (ppo.init_kl_coef, ppo.steps, ppo.seed) == (0.1, 3, 7)
    assert "ppo.init_kl_coef=0.1" in capsys.readouterr().err  # the settings changed, said once
    assert main(["--profile", "smoke", "--set", "ppo.init_kl_coef=0.1", "--set", "ppo.steps=3", "--set", "ppo.seed=7",
                 "ppo"]) == 0
    assert called["profile"].ppo == ppo  # the flag and --set are the same setting


def test_the_full_flag_stands_for_two_settings(called):
    smoke = get_profile("smoke")
    assert main(["--profile", "smoke", "sft", "--full", "--epochs", "2"]) == 0
    sft = called["profile"].sft
    assert (sft.lora, sft.lr, sft.epochs) == (False, smoke.sft.lr / 4, 2)
    assert main(["--profile", "smoke", "reward", "--full", "--shuffled", "--lr", "0.01"]) == 0
    reward = called["profile"].reward
    assert (reward.lora, reward.grouped, reward.lr) == (False, False, 0.01)


def test_the_profile_reaches_the_command_as_an_object_not_through_the_environment(called, monkeypatch):
    monkeypatch.delenv("RLHF_LITE_SET", raising=False)
    assert main(["--profile", "smoke", "--set", "world.n_prompts=300", "world", "--stats"]) == 0
    assert called["profile"].world.n_prompts == 300 and called["stats"] is True
    import os

    assert "RLHF_LITE_SET" not in os.environ


def test_every_command_names_a_function_with_its_options():
    import importlib
    import inspect

    p, aliases = parser()
    for name, (target, _, options) in COMMANDS.items():
        module, _, fn_name = target.partition(":")
        params = inspect.signature(getattr(importlib.import_module(f"rlhf_lite.{module}"), fn_name)).parameters
        for names, alias, kw in options:
            dest = kw.get("dest") or names[0].lstrip("-").replace("-", "_")
            if alias is None and dest not in ("profile", "base_model"):  # both read by the CLI itself
                assert dest in params, f"{name}: option {names[0]} has no parameter {dest}"
    assert all(isinstance(a, str) and "." in a or callable(a) for a in aliases.values())


def test_world_stats_are_returned_as_printed(capsys):
    stats = commands.world(get_profile("smoke"), stats=True)
    assert stats["prompts"] == sum(stats["splits"].values()) and '"prompts"' in capsys.readouterr().out


@pytest.mark.slow
def test_the_sft_report_is_a_function_with_its_interval(tmp_path, capsys):
    from dataclasses import replace

    prof = get_profile("smoke")
    prof = replace(prof, sft=replace(prof.sft, max_steps=6))
    m = commands.sft(prof, out=str(tmp_path / "sft"), n=8)
    lo, hi = m["win_rate_vs_base_ci"]
    assert m["n_test_prompts"] == 8 and 0 <= lo <= m["win_rate_vs_base_held_out"] <= hi <= 1
    assert f"{m['win_rate_vs_base_held_out']:.1%}" in capsys.readouterr().out
    assert (tmp_path / "sft" / "metrics.json").is_file()
