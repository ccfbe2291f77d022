"""The GPT-2 profiles offline: a GPT-2-shaped local model (random weights, a few small layers, the real 50,257-token
tokenizer from ../shared/gpt2-tokenizer) through the gpt2 code path, and local Dolly- and HH-schema files through
the real-data path."""
import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from rlhf_lite.config import get_profile
from rlhf_lite.evaluate import kl_to_reference
from rlhf_lite.models import generate
from rlhf_lite.reward import score_responses


def test_base_model_override_for_gpt2_profiles_only(monkeypatch):
    monkeypatch.delenv("RLHF_LITE_BASE_MODEL", raising=False)
    assert get_profile("gpt2").base_model == "gpt2" and get_profile("gpt2", "/models/gpt2").base_model == "/models/gpt2"
    monkeypatch.setenv("RLHF_LITE_BASE_MODEL", "/models/gpt2")
    assert get_profile("gpt2-smoke").base_model == "/models/gpt2"  # the notebooks' way
    assert get_profile("tiny").base_model == "tiny"  # TinyWorld profiles always start from the shipped model
    with pytest.raises(ValueError, match="--base-model is for the GPT-2 profiles.*'smoke'"):
        get_profile("smoke", "/models/gpt2")


def test_gpt2_is_tinyworld_scaled_up():
    tiny, gpt2, hub = get_profile("tiny"), get_profile("gpt2"), get_profile("gpt2-hub")
    assert gpt2.data == "tinyworld" and gpt2.world == tiny.world  # the same world, prompts and judges
    assert (gpt2.reward.n_prompts, gpt2.ppo.steps, gpt2.ppo.batch_size) == (tiny.reward.n_prompts, tiny.ppo.steps,
                                                                            tiny.ppo.batch_size)
    assert hub.data == "dolly" and hub.reward.source == "hh-rlhf"


def test_small_gpt2_shape_has_the_real_tokenizer(small_gpt2):
    from rlhf_lite.models import load_base

    model, tok = load_base(str(small_gpt2))
    assert len(tok) == 50257 and tok.eos_token_id == tok.pad_token_id == 50256 and tok.padding_side == "left"
    assert model.config.vocab_size == 50257 and model.config.n_layer == 2


@pytest.mark.slow
def test_gpt2_smoke_pipeline_runs_offline_end_to_end(small_gpt2, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    env = {**__import__("os").environ, "RLHF_LITE_RUNS": str(runs), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-m", "rlhf_lite", "pipeline", "--profile", "gpt2-smoke", "--base-model",
                        str(small_gpt2), "--out", str(out), "--device", "cpu"],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[1/7] continued_pretraining" in r.stdout and "[7/7] evaluation" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["setup"]["profile"] == "gpt2-smoke" and m["setup"]["base_model"] == str(small_gpt2)
    assert m["setup"]["device"] == "cpu" and m["setup"]["precision"] == "fp32"
    for name in ("sft.winrate_vs_base_ci", "ppo.winrate_vs_sft_ci", "ppo_ptx.winrate_vs_sft_ci"):
        group, key = name.split(".")
        lo, hi = m[group][key]
        assert 0 <= lo <= m[group][key.removesuffix("_ci")] <= hi <= 1, name
    assert all(math.isfinite(m[k]["pretrain_loss"]) for k in ("base", "sft", "ppo", "ppo_ptx"))
    assert m["runtime_s"]["continued_pretraining"] > 0
    # continued pretraining learned something of TinyWorld's corpus, in GPT-2's own tokenizer, and was cached
    (base,) = list((runs / "cache").glob("base-gpt2-smoke-*"))
    card = json.loads((base / "training.json").read_text())
    assert card["final_heldout_loss"] < card["heldout_loss_before"]
    assert json.loads((base / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    sft = list((runs / "cache").glob("sft-gpt2-smoke-*"))
    assert len(sft) == 1 and (sft[0] / "lora" / "adapters.safetensors").is_file()


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_real_data_path_on_local_dolly_and_hh_files(small_gpt2, tmp_path, monkeypatch):
    from rlhf_lite.policy_stages import ppo_stage
    from rlhf_lite.stages import comparison_data, reward_checkpoint, sft_checkpoint

    monkeypatch.setenv("RLHF_LITE_RUNS", str(tmp_path / "runs"))
    dolly = _write_jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": f"Name a colour number {i}.", "context": "", "response": "Red is a colour.",
         "category": "brainstorming"} for i in range(16)])
    hh = _write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": f"\n\nHuman: How do I boil egg {i}?\n\nAssistant: Put it in boiling water for eight minutes.",
         "rejected": f"\n\nHuman: How do I boil egg {i}?\n\nAssistant: Figure it out yourself."} for i in range(20)])
    smoke = get_profile("gpt2-smoke")
    prof = replace(get_profile("gpt2-hub", str(small_gpt2)), data=str(dolly), sft=smoke.sft,
                   reward=replace(smoke.reward, source=str(hh), n_prompts=16, n_eval_prompts=4),
                   ppo=replace(smoke.ppo, steps=2, batch_size=4, minibatch_size=2), max_new_tokens=8)
    sft_dir = sft_checkpoint(prof, progress=False, device="cpu")  # no continued pretraining: real data
    assert json.loads((sft_dir / "history.json").read_text())["n_train_examples"] == 15  # one of 16 held out
    data = comparison_data(prof, progress=False)
    assert len(data["train"]) == 16 and len(data["validation"]) == 2  # a tenth of the file held out
    assert data["train"][0]["prompt"].startswith("### Instruction:\nHow do I boil egg")  # the policy's format
    rm_dir = reward_checkpoint(prof, progress=False)
    metrics = json.loads((rm_dir / "reward_model.json").read_text())["metrics"]
    assert "accuracy_heldout_labelers" in metrics and "panel_agreement" not in metrics  # no panel on real data
    policy, tok, rm, history = ppo_stage(prof, progress=False)
    assert len(history) == 2 and all("gold" not in h for h in history)  # no gold judge: the reward model only
    # the evaluation real data allows: reward-model score and KL to the SFT model, on the data's prompts
    prompts = [f"### Instruction:\nName a colour number {i}.\n\n### Response:\n" for i in range(4)]
    gens = generate(policy.lm, tok, prompts, max_new_tokens=8, seed=0)
    scores = score_responses(rm, tok, prompts, [g.text for g in gens])
    kl = kl_to_reference(policy, tok, prompts, gens)
    assert len(scores) == 4 and all(math.isfinite(float(s)) for s in scores) and math.isfinite(float(kl))
    assert torch.is_tensor(policy.value_head.weight)


@pytest.mark.slow
def test_a_restored_sft_model_sits_on_the_base_it_was_trained_on(small_gpt2, tmp_path, monkeypatch):
    """gpt2-smoke's SFT adapters were trained on GPT-2 after continued pretraining: restored from the saved
    adapters, the SFT model is the trained one bit for bit (not the adapters merged into the raw hub model)."""
    from safetensors.torch import load_file

    from rlhf_lite.course.saved import restore_stages, save_stages
    from rlhf_lite.stages import sft_checkpoint

    monkeypatch.setenv("RLHF_LITE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path / "saved"))
    prof = get_profile("gpt2-smoke", str(small_gpt2))
    trained = sft_checkpoint(prof, progress=False)
    weights = load_file(str(trained / "model.safetensors"))
    assert save_stages(prof)[0] == trained.name
    import shutil

    shutil.rmtree(trained)  # a fresh runs folder, but continued pretraining still cached beside it
    assert restore_stages(prof) == [trained.name]
    restored = load_file(str(trained / "model.safetensors"))
    assert restored.keys() == weights.keys() and all(torch.equal(restored[k], weights[k]) for k in weights)
