"""The gpt2-hub code path offline: a GPT-2-shaped local model (random weights, the real 50,257-token tokenizer from
../shared/gpt2-tokenizer) on the local files in Dolly's and HH-RLHF's schemas that the gpt2-hub-smoke profile names
(data/hub-smoke), through every command a Colab user's first run on real data goes through."""
import json
import math
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_gpt2_hub_smoke_runs_every_stage_offline(small_gpt2, tmp_path):
    """The gpt2-hub code path on local files in Dolly's and HH-RLHF's schemas (data/hub-smoke), as a Colab user's
    first run goes: sft, reward, ppo, dpo and the pipeline, each a command, offline."""
    runs = tmp_path / "runs"
    env = {**__import__("os").environ, "RLHF_LITE_RUNS": str(runs), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "rlhf_lite", "--profile", "gpt2-hub-smoke", "--base-model",
                            str(small_gpt2), *args, "--device", "cpu"], capture_output=True, text=True, timeout=900,
                           env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    out = run("sft", "--out", str(tmp_path / "sft"))
    assert "validation loss" in out and "2 of 58 examples were longer than max_length=512" in out
    assert json.loads((tmp_path / "sft" / "metrics.json").read_text())["final_validation_loss"] > 0
    assert "pairwise accuracy" not in run("reward", "--out", str(tmp_path / "rm"))  # no labeler panel on real data
    out = run("ppo", "--out", str(tmp_path / "ppo"))
    assert "RL prompts: 56 of 58 fit in 488 tokens" in out  # the two long Dolly contexts are left out
    assert (tmp_path / "ppo" / "adapter" / "adapter_config.json").is_file()
    assert "24 pairs" in run("dpo", "--out", str(tmp_path / "dpo"))  # micro-batches of 2 prompts, as gpt2-hub's 4
    out = run("pipeline", "--out", str(tmp_path / "pipeline"))
    assert "[5/5] evaluation" in out and "ppo_ptx" not in out  # no pretraining corpus, so no PPO-ptx
    m = json.loads((tmp_path / "pipeline" / "metrics.json").read_text())
    assert set(m) >= {"base", "sft", "ppo", "rm", "setup"} and "reward model" in m["setup"]["judge"]
    lo, hi = m["ppo"]["rm_winrate_vs_sft_ci"]
    assert 0 <= lo <= m["ppo"]["rm_winrate_vs_sft"] <= hi <= 1 and math.isfinite(m["ppo"]["kl_to_sft"])
    assert (tmp_path / "pipeline" / "winrates.png").is_file()


def test_hh_dialogues_reach_the_reward_model_in_the_policy_format(tmp_path):
    from rlhf_lite.config import get_profile as profile_of
    from rlhf_lite.stages import comparison_data

    data = comparison_data(profile_of("gpt2-hub-smoke"), progress=False)
    assert len(data["train"]) == 24 and len(data["validation"]) == 4
    for rec in data["train"] + data["validation"]:
        assert rec["prompt"].startswith("### Instruction:\n") and rec["prompt"].endswith("### Response:\n")
        assert "Human:" not in rec["prompt"].split("### Context:")[0]  # the last question is the instruction
    assert any("### Context:\nHuman: " in r["prompt"] for r in data["train"])  # earlier turns became the context


def test_prompts_too_long_for_the_context_are_left_out_and_counted(capsys):
    from types import SimpleNamespace

    from rlhf_lite.models import load_base
    from rlhf_lite.policy_stages import fitting_prompts

    _, tok = load_base("tiny")
    tasks = [SimpleNamespace(instruction="Name a colour.", context=""),
             SimpleNamespace(instruction="Summarise.", context="Zenmouth is a town. " * 200)]
    kept = fitting_prompts(tasks, tok, "alpaca", limit=256, max_new_tokens=64)
    assert kept == tasks[:1]
    assert "1 of 2 fit in 192 tokens, leaving 64 for the answer within 256; 1 longer ones are left out" in \
        capsys.readouterr().out
    with pytest.raises(ValueError, match="no prompt fits in 2 tokens.*raise sft.max_length"):
        fitting_prompts(tasks, tok, "alpaca", limit=66, max_new_tokens=64)
