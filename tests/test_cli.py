import json
import subprocess
import sys

import pytest

from rlhf_lite.world import CATEGORIES

pytestmark = pytest.mark.slow  # every test runs the CLI in a subprocess; the smoke stages train


def run(*args):
    return subprocess.run([sys.executable, "-m", "rlhf_lite", *args], capture_output=True, text=True, timeout=300)


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "pretrain" in r.stdout and "world" in r.stdout


def test_world_show_prints_every_category():
    r = run("world", "--show", "2")
    assert r.returncode == 0
    for c in CATEGORIES:
        assert r.stdout.count(f"=== {c} ") == 2, c
    record = json.loads(r.stdout.split("\n", 1)[1].split("\n===")[0])
    assert set(record) == {"instruction", "context", "response", "category"}


def test_world_stats_is_json():
    stats = json.loads(run("world", "--stats").stdout)
    assert stats["prompts"] == sum(stats["splits"].values()) and len(stats["panel"]) >= 6


def test_bad_profile_is_a_clear_error():
    r = run("--profile", "tinny", "world")
    assert r.returncode == 2 and "valid profiles are: smoke, tiny, gpt2, gpt2-hub, gpt2-smoke" in r.stderr


def test_sft_command_trains_evaluates_and_saves(tmp_path):
    r = run("sft", "--out", str(tmp_path / "sft"), "--n", "8")
    assert r.returncode == 0, r.stderr
    assert "win rate SFT vs base" in r.stdout
    metrics = json.loads((tmp_path / "sft" / "metrics.json").read_text())
    assert metrics["steps"] == 40 and 0 <= metrics["win_rate_vs_base_held_out"] <= 1
    lo, hi = metrics["win_rate_vs_base_ci"]  # the paired bootstrap's 95 % interval brackets the win rate
    assert 0 <= lo <= metrics["win_rate_vs_base_held_out"] <= hi <= 1
    lo, hi = metrics["demonstrations_win_rate_vs_base_ci"]
    assert 0 <= lo <= metrics["demonstrations_win_rate_vs_base"] <= hi <= 1 and "demonstrations vs base" in r.stdout
    from rlhf_lite.models import load_base
    model, tok = load_base(str(tmp_path / "sft" / "merged"))  # a plain model: the adapter is merged in
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_reward_command_trains_measures_and_saves(tmp_path):
    r = run("reward", "--out", str(tmp_path / "rm"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("accuracy_train_labelers", "accuracy_heldout_labelers", "panel_agreement", "gold_ceiling"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["comparisons"] > metrics["prompts"] == 48
    from rlhf_lite.reward import load_reward_model

    rm, _ = load_reward_model(tmp_path / "rm")
    assert rm.head.out_features == 1
    steps = len(json.loads((tmp_path / "rm" / "reward_model.json").read_text())["history"]["train"])
    r = run("reward", "--epochs", "2", "--lr", "1e-3", "--full", "--out", str(tmp_path / "rm2"))  # the overrides
    assert r.returncode == 0, r.stderr
    assert "full fine-tuning" in r.stdout
    saved = json.loads((tmp_path / "rm2" / "reward_model.json").read_text())
    assert len(saved["history"]["train"]) == 2 * steps and saved["lora"] is False


def test_ppo_command_checkpoints_and_resumes(tmp_path):
    r = run("ppo", "--out", str(tmp_path / "ppo"), "--steps", "2")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout.strip().splitlines()[-2])
    assert first["step"] == 2 and (tmp_path / "ppo" / "ppo_checkpoint.safetensors").is_file()
    assert (tmp_path / "ppo" / "adapter" / "adapter_config.json").is_file()
    r = run("ppo", "--out", str(tmp_path / "ppo"), "--steps", "3", "--resume")  # one more step after the checkpoint
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-2])["step"] == 3
    r = run("ppo", "--out", str(tmp_path / "fresh"), "--resume")
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    # --init: start from a saved policy, recorded in --out for --resume and for loading the result
    r = run("ppo", "--init", str(tmp_path / "nothing"), "--out", str(tmp_path / "next"))
    assert r.returncode == 2 and "--init" in r.stderr and "no policy adapter there" in r.stderr
    r = run("ppo", "--init", str(tmp_path / "ppo"), "--out", str(tmp_path / "next"), "--steps", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "next" / "start.json").read_text())["init"] == str((tmp_path / "ppo").resolve())
    r = run("ppo", "--out", str(tmp_path / "next"), "--steps", "2", "--resume")  # its start, as recorded
    assert r.returncode == 0, r.stderr
    r = run("ppo", "--init", str(tmp_path / "next"), "--out", str(tmp_path / "ppo"), "--steps", "3", "--resume")
    assert r.returncode == 2 and "not from" in r.stderr  # a run from another start is not continued from this one
    r = run("ppo", "--out", str(tmp_path / "fresh2"), "--steps", "1", "--reward-model", str(tmp_path / "ppo"))
    assert r.returncode == 2 and "not a saved reward model" in r.stderr
    r = run("ppo", "--init", str(tmp_path / "ppo"), "--out", str(tmp_path / "ppo"), "--resume")  # over itself
    assert r.returncode == 2 and "both name" in r.stderr
