"""DPO and GRPO: the losses and index handling against hand-computed values, then short runs on `smoke`."""
import math
from dataclasses import replace

import pytest
import torch

from rlhf_lite.config import get_profile
from rlhf_lite.dpo import (
    build_dpo_policy,
    dpo_loss,
    encode_pairs_batch,
    implicit_reward_accuracy,
    sequence_logps,
    train_dpo,
)
from rlhf_lite.grpo import build_grpo_policy, group_advantages, grpo_loss, grpo_step, train_grpo
from rlhf_lite.models import load_base


def test_dpo_loss_by_hand():
    # pair 1: β(−3 − −4) = 0.5, β(−5 − −4) = −0.5, margin 1 -> log(1 + e^−1); pair 2: margin 0 -> log 2
    loss, s = dpo_loss(torch.tensor([-3.0, -2.0]), torch.tensor([-5.0, -1.0]), torch.tensor([-4.0, -2.0]),
                       torch.tensor([-4.0, -1.0]), beta=0.5)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, abs=1e-6)
    assert s["chosen_rewards"].tolist() == pytest.approx([0.5, 0.0])
    assert s["rejected_rewards"].tolist() == pytest.approx([-0.5, 0.0])
    assert s["margins"].tolist() == pytest.approx([1.0, 0.0])
    assert s["accuracy"].item() == pytest.approx(0.75)  # one right, one tie (half)
    # the gradient raises the chosen log-prob and lowers the rejected one, weighted by σ(−margin)
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    dpo_loss(pc, pr, torch.tensor([-4.0]), torch.tensor([-4.0]), 0.5)[0].backward()
    w = 0.5 * (1 - 1 / (1 + math.exp(-1)))  # β σ(−margin)
    assert pc.grad.item() == pytest.approx(-w, abs=1e-6) and pr.grad.item() == pytest.approx(w, abs=1e-6)
    # swapping chosen and rejected mirrors the margin: loss log(1 + e^1)
    assert dpo_loss(torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-4.0]),
                    0.5)[0].item() \
        == pytest.approx(math.log(1 + math.e), abs=1e-6)


@pytest.fixture(scope="module")
def smoke_sft():
    from rlhf_lite.stages import sft_checkpoint

    profile = get_profile("smoke")
    path = str(sft_checkpoint(profile, progress=False))
    return profile, path


@pytest.mark.slow
def test_sequence_logps_sum_response_tokens_with_eos(smoke_sft):
    _, path = smoke_sft
    lm, tok = load_base(path)
    recs = [{"prompt": "### Instruction:\nName a river.\n\n### Response:\n", "responses": ["The Nile.", "Water"],
             "finished": [True, False], "ranking": [0, 1]},
            {"prompt": "Hi", "responses": ["Hello there, friend.", "Go"], "finished": [True, True], "ranking": [1, 0]}]
    batch, counts = encode_pairs_batch(tok, recs, 64)
    assert counts == [2, 2]
    got = sequence_logps(lm, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    for i, (rec, j) in enumerate([(recs[0], 0), (recs[0], 1), (recs[1], 0), (recs[1], 1)]):
        p = tok(rec["prompt"], add_special_tokens=False)["input_ids"]
        r = tok(rec["responses"][j],
                add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if rec["finished"][j] else [])
        assert batch["response_mask"][i].sum().item() == len(r)  # EOS counted when the response ended
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logp = torch.log_softmax(lm(ids).logits[0, :-1].float(), -1)
        want = sum(logp[len(p) + k - 1, t].item() for k, t in enumerate(r))
        assert got[i].item() == pytest.approx(want, abs=1e-4), i  # right padding changes nothing


@pytest.mark.slow
def test_smoke_dpo_raises_implicit_reward_accuracy_on_held_out_pairs(world, smoke_sft):
    from rlhf_lite.feedback import variant_comparisons

    profile, path = smoke_sft
    lm, tok = load_base(path)
    train = variant_comparisons(world, world.splits["train"][:96], world.panel.train, tok)
    val = variant_comparisons(world, world.splits["validation"][:16], world.panel.train, tok, seed=1)
    cfg = replace(profile.dpo, eval_every=12, n_prompts=0)
    policy = build_dpo_policy(lm, cfg)
    before = implicit_reward_accuracy(policy, tok, world, val, world.panel.held_out, cfg)
    assert before == pytest.approx(0.5)  # π = π_ref: every implicit reward is 0, every pair a tie
    history = train_dpo(policy, tok, train, cfg, val, progress=False)
    after = implicit_reward_accuracy(policy, tok, world, val, world.panel.held_out, cfg)
    assert history["eval"][0]["accuracy"] == pytest.approx(0.5)
    assert history["train"][0]["loss"] == pytest.approx(math.log(2))
    assert history["eval"][-1]["accuracy"] > 0.55 and after > before + 0.05, (history["eval"], after)
    assert history["eval"][-1]["loss"] < history["eval"][0]["loss"]


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0]), 3, eps=0.0)
    # group 1: mean 2, std 1 -> [-1, 1, 0]; group 2: mean 2, std 2 -> [0, -1, 1]
    assert adv.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0, -1.0, 1.0])
    assert group_advantages(torch.tensor([5.0, 5.0]), 2).tolist() == [0.0, 0.0]  # all alike: nothing to learn
    assert group_advantages(torch.tensor([1.0, 3.0]), 2, scale=False).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


def test_grpo_loss_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.9], [0.2, 0.4, 0.1]]))
    # on-policy and at the reference: ratio 1, KL 0 -> loss = −mean_i Â_i
    loss, s = grpo_loss(lp, lp, lp, torch.tensor([1.0, -3.0]), mask, 0.2, 0.1)
    assert loss.item() == pytest.approx(1.0) and s["ratio"] == pytest.approx(1.0) and s["kl_loss"] == pytest.approx(0.0)
    # row 1 ratio 2 on both tokens with Â = 1 -> clipped to 1.2; KL against ref = old: e^−log2 + log 2 − 1 per token
    new = lp.clone()
    new[0, :2] += math.log(2)
    loss, s = grpo_loss(new, lp, lp, torch.tensor([1.0, 0.0]), mask, 0.2, 0.1)
    kl = 0.5 + math.log(2) - 1
    assert loss.item() == pytest.approx((-1.2 + 0.1 * kl) / 2, abs=1e-6)  # row 2: Â 0, KL 0; mean over rows
    assert s["clipfrac"] == pytest.approx(2 / 5)


@pytest.mark.slow
def test_smoke_grpo_shares_the_rollout_and_raises_the_reward_model_score(world, smoke_sft):
    from rlhf_lite.data import render_prompt
    from rlhf_lite.models import generate
    from rlhf_lite.reward import load_reward_model, score_responses
    from rlhf_lite.stages import reward_checkpoint

    profile, path = smoke_sft
    rm, _ = load_reward_model(reward_checkpoint(profile, progress=False))
    lm, tok = load_base(path)
    cfg = replace(profile.grpo, steps=10, prompts_per_step=8, group_size=4, minibatch_size=8, lr=3e-3)
    policy = build_grpo_policy(lm, cfg)
    prompts = [render_prompt(tok, t.instruction, t.context) for t in world.splits["validation"][:64]]

    def mean_reward():
        gens = generate(policy.lm, tok, prompts, cfg.max_new_tokens, seed=123, batch_size=64)
        return sum(score_responses(rm, tok, prompts, [g.text for g in gens], [g.finished for g in gens])) / len(gens)

    opt = torch.optim.Adam(policy.trainable_parameters(), lr=cfg.lr)
    m, gens = grpo_step(policy, rm, tok, prompts[:4], cfg, opt)
    assert len(gens) == 16 and abs(m["first_ratio"] - 1) < 1e-5 and m["first_approx_kl"] < 1e-10 and abs(m["kl"]) < 1e-5
    policy = build_grpo_policy(load_base(path)[0], cfg)
    before = mean_reward()
    history = train_grpo(policy, rm, tok, world.splits["train"], cfg, world=world, progress=False)
    after = mean_reward()
    assert after > before + 0.1, (before, after)
    assert history[-1]["kl"] > 0 and all(math.isfinite(h["gold"]) for h in history)


@pytest.mark.slow
def test_dpo_command_saves_a_policy_that_diagnose_can_load(tmp_path, capsys):
    """`python -m rlhf_lite dpo`: notebook 07's DPO run as a command; its adapter is a policy like PPO's."""
    import json

    from rlhf_lite.__main__ import main
    from rlhf_lite.policy_stages import load_policy
    from rlhf_lite.stages import sft_checkpoint

    out = tmp_path / "dpo"
    assert main(["--profile", "smoke", "dpo", "--beta", "0.5", "--n-prompts", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "β = 0.5" in printed and "the first 16 ranked training prompts" in printed and "adapter saved" in printed
    history = json.loads((out / "history.json").read_text())
    assert history["eval"][0]["accuracy"] == pytest.approx(0.5)  # step 0: the policy is the reference
    assert len(history["train"]) == math.ceil(16 / get_profile("smoke").dpo.batch_size)
    profile = get_profile("smoke")
    policy, tok = load_policy(profile, out)
    sft, _ = load_base(str(sft_checkpoint(profile)))
    ids = tok(["### Instruction:\nName a town.\n\n### Response:\n"], return_tensors="pt")
    with torch.no_grad():
        with policy.disable_adapter():  # adapters off: the SFT model, DPO's reference
            assert torch.allclose(policy(**ids).logits, sft(**ids).logits, atol=1e-4)
        assert not torch.allclose(policy(**ids).logits, sft(**ids).logits, atol=1e-4)  # training moved it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["--profile", "smoke", "dpo", "--out", str(tmp_path / "mine")]) == 2
    assert "did not write" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").is_file()
