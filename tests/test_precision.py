"""Precision and memory: heads and log-probs stay float32 under autocast (checked with the CPU's bf16 autocast), the
float32 head is nn.Linear exactly without it, and gradient accumulation gives the large batch's update."""
import random

import pytest
import torch
import torch.nn as nn

from rlhf_lite.config import DPOConfig, LoRAConfig, RewardConfig, SFTConfig
from rlhf_lite.data import format_prompt
from rlhf_lite.models import Float32Linear, dropout_off, in_float32, load_base
from rlhf_lite.runtime import MemoryMonitor, compute_dtype, micro_batches

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def test_float32_head_is_linear_exactly_without_autocast():
    torch.manual_seed(0)
    plain = nn.Linear(8, 5)
    head = in_float32(nn.Linear(8, 5))
    head.load_state_dict(plain.state_dict())
    x = torch.randn(3, 8)
    assert isinstance(head, Float32Linear) and torch.equal(head(x), plain(x))  # CPU results stay bit for bit
    assert list(head.state_dict()) == ["weight", "bias"]  # saved and loaded like the nn.Linear it was
    with torch.autocast(**BF16):
        assert plain(x).dtype == torch.bfloat16 and head(x).dtype == torch.float32
    assert in_float32(nn.Conv1d(1, 1, 1)).__class__ is nn.Conv1d  # anything but nn.Linear is left alone


def test_lm_head_reward_and_value_heads_and_logprobs_are_float32_under_autocast():
    from rlhf_lite.dpo import build_dpo_policy, encode_pairs_batch, sequence_logps
    from rlhf_lite.models import Generation
    from rlhf_lite.ppo import build_policy
    from rlhf_lite.reward import build_reward_model
    from rlhf_lite.rollout import response_outputs, rollout_tensors

    lm, tok = load_base("tiny")
    assert lm.lm_head.weight is lm.transformer.wte.weight  # still tied
    rm = build_reward_model(load_base("tiny")[0], RewardConfig(), LoRAConfig())
    policy = build_policy(lm, rm, __import__("rlhf_lite.config", fromlist=["PPOConfig"]).PPOConfig())
    prompts = [format_prompt("Name a colour."), format_prompt("Name two towns.")]
    gens = [Generation("Red", tok("Red", add_special_tokens=False)["input_ids"], True),
            Generation("Zenmouth and", tok("Zenmouth and", add_special_tokens=False)["input_ids"], False)]
    b = rollout_tensors(tok, prompts, gens)
    ids, attn, P = b["input_ids"], b["attention_mask"], b["prompt_len"]
    with torch.no_grad():
        exact_lp = response_outputs(policy, ids, attn, P, 1.0)[0]
        exact_rm = rm(ids, attn)
        with torch.autocast(**BF16):
            logits = policy.lm(input_ids=ids, attention_mask=attn).logits
            lp, ent = response_outputs(policy, ids, attn, P, 1.0, entropy=True)
            scores = rm(ids, attn)
            values = policy.value_head(rm.hidden(ids, attn))
            dpo = build_dpo_policy(load_base("tiny")[0], DPOConfig(), LoRAConfig())
            batch, _ = encode_pairs_batch(tok, [{"prompt": prompts[0], "responses": ["Red.", "Blue."],
                                                 "ranking": [0, 1]}], 64)
            seq = sequence_logps(dpo, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    for name, t in (("logits", logits), ("log-probs", lp), ("entropy", ent), ("reward", scores), ("values", values),
                    ("DPO log-probs", seq)):
        assert t.dtype == torch.float32, name
    # the body ran in bf16, so the numbers move a little, but the head added no rounding of its own
    assert (lp - exact_lp).abs().max() < 0.5 and (scores - exact_rm).abs().max() < 0.5


def test_micro_batches_split_a_batch_in_order():
    assert micro_batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert micro_batches([1, 2, 3], 0) == micro_batches([1, 2, 3], 3) == micro_batches([1, 2, 3], 8) == [[1, 2, 3]]


def test_memory_monitor_measures_the_device_the_model_is_on():
    model = nn.Linear(2, 2)
    assert MemoryMonitor(model).device == "cpu" and MemoryMonitor("cpu").device == "cpu"
    assert compute_dtype("cpu") == torch.float32  # QLoRA's compute dtype off the GPU


def _one_sgd_step(monkeypatch, train, lr=0.1):
    """Run ``train`` (one optimizer step) with plain SGD in place of AdamW/Adam: the parameters then move by
    lr × the gradient itself, so two runs agree exactly when their gradients do."""
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay=0.0: torch.optim.SGD(params, lr=lr))
    return train()


def _trained(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def _assert_same_update(a: dict, b: dict, before: dict):
    moved = max((a[k] - before[k]).abs().max().item() for k in a)
    assert moved > 1e-4  # the step did something
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4), k


@pytest.mark.slow
def test_sft_gradient_accumulation_gives_the_large_batch_update(monkeypatch):
    from rlhf_lite.data import load_instruction_dataset
    from rlhf_lite.sft import add_lora, train_sft

    data = {"train": list(load_instruction_dataset("tinyworld")["train"])[:12]}
    cfg = SFTConfig(batch_size=12, max_steps=1, warmup_steps=1, lr=0.5, eval_every=100, grad_clip=1e9)
    runs = []
    for micro in (0, 5):
        model, tok = load_base("tiny")
        model = add_lora(model, cfg, LoRAConfig())
        dropout_off(model)  # the same forward pass for the whole batch and for its parts
        before = _trained(model)
        _one_sgd_step(monkeypatch, lambda: train_sft(model, tok, data, cfg.__class__(**{**cfg.__dict__,
                                                                                         "micro_batch_size": micro}),
                                                     progress=False))
        runs.append(_trained(model))
    _assert_same_update(runs[0], runs[1], before)


def _records(n=6, k=3):
    rng = random.Random(0)
    words = ["red", "blue", "Zenmouth", "a baker", "carrot soup", "the cat", "forty", "yes"]
    return [{"prompt": format_prompt(f"Question {i}?"), "responses": [" ".join(rng.sample(words, 3)) for _ in range(k)],
             "ranking": rng.sample(range(k), k), "finished": [True] * k} for i in range(n)]


@pytest.mark.slow
def test_reward_model_gradient_accumulation_gives_the_large_batch_update(monkeypatch):
    from rlhf_lite.reward import build_reward_model, train_reward_model

    records, runs = _records(), []
    for micro in (0, 4):
        cfg = RewardConfig(batch_size=6, epochs=1, warmup_steps=1, lr=0.5, grad_clip=1e9, micro_batch_size=micro)
        lm, tok = load_base("tiny")
        rm = build_reward_model(lm, cfg, LoRAConfig())
        before = _trained(rm)
        _one_sgd_step(monkeypatch, lambda: train_reward_model(rm, tok, records, cfg, progress=False))
        runs.append(_trained(rm))
    _assert_same_update(runs[0], runs[1], before)


@pytest.mark.slow
def test_dpo_gradient_accumulation_gives_the_large_batch_update(monkeypatch):
    from rlhf_lite.dpo import build_dpo_policy, train_dpo

    records, runs = _records(), []
    records[2]["ranking"] = [[0, 1, 2]]  # a record whose responses all tie: no pair, so it counts for nothing
    for micro in (0, 4):
        cfg = DPOConfig(batch_size=6, warmup_steps=1, lr=0.5, grad_clip=1e9, micro_batch_size=micro)
        lm, tok = load_base("tiny")
        lm = build_dpo_policy(lm, cfg, LoRAConfig())
        before = _trained(lm)
        history = _one_sgd_step(monkeypatch, lambda: train_dpo(lm, tok, records, cfg, progress=False))
        runs.append((_trained(lm), history["train"][0]))
    _assert_same_update(runs[0][0], runs[1][0], before)
    assert runs[0][1]["loss"] == pytest.approx(runs[1][1]["loss"], abs=1e-6)  # the logged loss is the batch's
    assert runs[0][1]["accuracy"] == runs[1][1]["accuracy"]


def test_the_readme_memory_table_is_the_memory_plan_and_every_stage_fits_a_t4():
    from pathlib import Path

    from rlhf_lite.config import get_profile
    from rlhf_lite.tools.memory_plan import T4_GB, plan_table, stage_plan

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert plan_table() in readme, "README's memory table is stale: paste `python -m rlhf_lite memory-plan`"
    for name in ("gpt2", "gpt2-hub"):
        for row in stage_plan(get_profile(name)):
            assert row["total_gb"] < 0.75 * T4_GB, (name, row)  # a quarter of the card to spare
    # without micro-batches the reward model's K-choose-2 batch would not fit: accumulation is what makes it fit
    from dataclasses import replace

    gpt2 = get_profile("gpt2")
    whole = stage_plan(replace(gpt2, reward=replace(gpt2.reward, micro_batch_size=0)))
    assert next(r for r in whole if r["stage"] == "reward model")["total_gb"] > T4_GB
