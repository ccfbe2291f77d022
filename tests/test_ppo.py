"""PPO: the building blocks against values computed by hand, then the loop on the smoke profile."""
import math
from dataclasses import replace

import pytest
import torch

from rlhf_lite.config import get_profile
from rlhf_lite.models import Generation, load_base
from rlhf_lite.ppo import (
    AdaptiveKLController,
    FixedKLController,
    build_policy,
    compute_gae,
    kl_penalized_rewards,
    ppo_optimizer,
    ppo_policy_loss,
    ppo_step,
    ppo_value_loss,
    train_ppo,
)
from rlhf_lite.rollout import masked_mean, masked_whiten, response_logprobs, rollout_tensors


def test_masked_mean_and_whiten_by_hand():
    x, m = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([2.0])
    # mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1: the padded 100 is ignored
    assert masked_whiten(x, m).tolist() == [pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)]
    assert masked_whiten(x, m, shift_mean=False).tolist() == [pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)]


def test_kl_penalized_rewards_by_hand_either_padding():
    lp = torch.tensor([[0.0, 0.5, -0.2, 9.0], [7.0, 7.0, 0.1, 0.3]])
    ref = torch.zeros(2, 4)
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0],   # prompt, two response tokens, padding after
                         [0.0, 0.0, 1.0, 1.0]])  # left-padded prompt, response at the end
    r = kl_penalized_rewards(torch.tensor([2.0, -1.0]), lp, ref, mask, beta=0.1)
    assert r[0].tolist() == pytest.approx([0.0, -0.05, 0.02 + 2.0, 0.0])  # the score lands on the last response token
    assert r[1].tolist() == pytest.approx([0.0, 0.0, -0.01, -0.03 - 1.0])
    with pytest.raises(ValueError, match="no response token"):
        kl_penalized_rewards(torch.zeros(1), lp[:1], ref[:1], torch.zeros(1, 4), 0.1)


def test_gae_by_hand_rows_of_different_length():
    # row 0: response at t = 0, 1 then padding; row 1: prompt at t = 0, response at t = 1, 2, 3
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 9.0, 9.0], [9.0, 0.1, 0.2, 0.3]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: δ1 = 1 + 0 − 0.2 = 0.8 (the value after the last token is 0, not the pad's 9); A1 = 0.8
    #        δ0 = 0 + 0.2 − 0.5 = −0.3; A0 = −0.3 + 0.5 · 0.8 = 0.1
    assert adv[0].tolist() == pytest.approx([0.1, 0.8, 0.0, 0.0])
    assert ret[0].tolist() == pytest.approx([0.6, 1.0, 0.0, 0.0])
    # row 1: δ3 = 1 − 0.3 = 0.7; δ2 = 0.3 − 0.2 = 0.1, A2 = 0.1 + 0.35 = 0.45; δ1 = 0.2 − 0.1 = 0.1, A1 = 0.1 + 0.225
    assert adv[1].tolist() == pytest.approx([0.0, 0.325, 0.45, 0.7])
    assert ret[1].tolist() == pytest.approx([0.0, 0.425, 0.65, 1.0])


def test_policy_loss_first_minibatch_and_clipping_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0, 5.0]])
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    loss, stats = ppo_policy_loss(lp, lp.clone(), adv, mask, clip_range=0.2)
    assert stats["ratio"] == pytest.approx(1.0) and stats["approx_kl"] == 0.0 and stats["clipfrac"] == 0.0
    assert loss.item() == pytest.approx(0.0)  # −mean(A) over the two response tokens
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))  # ratios 1.5 and 0.5 against old log-probs 0
    loss, stats = ppo_policy_loss(new, torch.zeros(1, 3), adv, mask, clip_range=0.2)
    # token 1 (A = 1): max(−1.5, −1.2) = −1.2; token 2 (A = −1): max(0.5, 0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert stats["clipfrac"] == 1.0
    assert stats["approx_kl"] == pytest.approx((0.5 * math.log(1.5) ** 2 + 0.5 * math.log(0.5) ** 2) / 2)


def test_value_loss_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    values, old = torch.tensor([[1.0, 0.0, 4.0]]), torch.tensor([[0.5, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_range_value=0.2)
    # token 1: (1 − 2)² = 1 vs (0.7 − 2)² = 1.69 -> 1.69; token 2: 1 vs 1 -> 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert stats["vf_clipfrac"] == 0.5


def test_kl_controllers_move_beta_the_right_way():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2
    assert c.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(current_kl=3.0, n_steps=100)  # error −0.5, clipped to −0.2
    assert c.value == pytest.approx(0.1 * (1 - 0.2 * 100 / 10000))
    c.update(current_kl=6.0, n_steps=100)  # on target: unchanged
    assert c.value == pytest.approx(0.1 * (1 - 0.2 * 100 / 10000))
    f = FixedKLController(0.05)
    f.update(100.0, 100)
    assert f.value == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_optimizer_gives_the_critic_its_own_learning_rate():
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf_lite.config import LoRAConfig, PPOConfig
    from rlhf_lite.models import add_lora_adapters
    from rlhf_lite.rollout import PolicyWithValue

    tiny = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    lm = add_lora_adapters(tiny, LoRAConfig(r=2), 0)
    policy = PolicyWithValue(lm, torch.nn.Linear(16, 1))
    opt = ppo_optimizer(policy, PPOConfig(lr=1e-4, vf_lr=5e-3))
    (adapters, lr_a), (head, lr_h) = [(g["params"], g["lr"]) for g in opt.param_groups]
    assert (lr_a, lr_h) == (1e-4, 5e-3) and len(head) == 2  # the head's weight and bias
    grouped = {id(p) for p in adapters + head}
    assert len(grouped) == len(adapters) + 2 == len(policy.trainable_parameters())  # every trainable one, once
    assert grouped == {id(p) for p in policy.trainable_parameters()}
    assert all("lora" in n for n, p in lm.named_parameters() if p.requires_grad)


def test_rollout_tensors_pad_prompts_left_and_responses_right():
    _, tok = load_base("tiny")
    eos = tok.eos_token_id
    prompts = ["a b c", "a"]
    p0, p1 = (tok(x, add_special_tokens=False)["input_ids"] for x in prompts)
    gens = [Generation("x", [5], True), Generation("y z", [6, 7, 8], False)]
    b = rollout_tensors(tok, prompts, gens)
    P = b["prompt_len"]
    assert P == max(len(p0), len(p1))
    # row 0: finished, so its EOS is a response token (and the reward is read there); row 1: unfinished, no EOS
    assert b["input_ids"][0, P:].tolist()[:2] == [5, eos] and b["mask"][0].tolist() == [1.0, 1.0, 0.0]
    assert b["input_ids"][1, P:].tolist() == [6, 7, 8] and b["mask"][1].tolist() == [1.0, 1.0, 1.0]
    assert b["attention_mask"][1, :P].tolist() == [0] * (P - len(p1)) + [1] * len(p1)  # prompts flush right
    assert b["attention_mask"][0, P + 2] == 0  # the pad after EOS has the same id as EOS but is masked
    assert b["finished"].tolist() == [True, False]


def test_response_logprobs_reads_the_previous_position_at_the_sampling_temperature():
    # P = 2 prompt positions, R = 2 response tokens; vocabulary of 3
    ids = torch.tensor([[0, 1, 2, 1]])
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, 2.0])  # position 1 predicts response token 0 (id 2)
    logits[0, 2] = torch.tensor([0.0, 4.0, 0.0])  # position 2 predicts response token 1 (id 1)
    lp = response_logprobs(logits, ids, prompt_len=2, temperature=2.0)
    # logits / 2: [0, 0, 1] -> log(e / (2 + e)); [0, 2, 0] -> log(e² / (2 + e²))
    assert lp.tolist() == [pytest.approx([math.log(math.e / (2 + math.e)), math.log(math.e ** 2 / (2 + math.e ** 2))])]


@pytest.fixture(scope="module")
def smoke_parts():
    """The smoke profile's reward model and a fresh LoRA policy on its SFT model (trained on first use: slow)."""
    from rlhf_lite.reward import load_reward_model
    from rlhf_lite.stages import reward_checkpoint, sft_checkpoint
    from rlhf_lite.world import world_from_config

    profile = get_profile("smoke")
    rm, _ = load_reward_model(reward_checkpoint(profile, progress=False))
    world = world_from_config(profile.world)

    def fresh_policy(cfg):
        sft, tok = load_base(str(sft_checkpoint(profile, progress=False)))
        return build_policy(sft, rm, cfg), tok

    return profile, rm, world, fresh_policy


@pytest.mark.slow
def test_first_minibatch_is_on_policy_and_kl_starts_at_zero(smoke_parts):
    profile, rm, world, fresh_policy = smoke_parts
    cfg = profile.ppo
    policy, tok = fresh_policy(cfg)
    prompts = [t.instruction for t in world.splits["train"][:8]]
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=cfg.lr)
    m, gens = ppo_step(policy, rm, tok, prompts, cfg, opt, FixedKLController(cfg.init_kl_coef))
    assert abs(m["first_ratio"] - 1) < 1e-5 and m["first_approx_kl"] < 1e-10  # dropout off, same temperature
    assert abs(m["kl"]) < 1e-5  # fresh LoRA (B = 0): the policy *is* the reference
    assert len(gens) == 8 and m["approx_kl"] > 0  # later minibatches are off-policy: the update did something
    # a second step: the policy has moved, but each step's first minibatch is still exactly on-policy
    m2, _ = ppo_step(policy, rm, tok, prompts, cfg, opt, FixedKLController(cfg.init_kl_coef), step=1)
    assert abs(m2["first_ratio"] - 1) < 1e-5 and m2["kl"] != 0.0


@pytest.mark.slow
def test_nan_reward_stops_with_a_message(smoke_parts):
    import copy

    profile, rm, world, fresh_policy = smoke_parts
    policy, tok = fresh_policy(profile.ppo)
    opt = torch.optim.Adam(policy.trainable_parameters())
    broken = copy.deepcopy(rm)
    with torch.no_grad():
        broken.head.bias.fill_(float("nan"))  # every score NaN
    with pytest.raises(FloatingPointError, match="PPO step 8: reward"):
        ppo_step(policy, broken, tok, ["a", "b"], replace(profile.ppo, no_eos_penalty=None), opt,
                 FixedKLController(0.1),
                 step=7)  # 0-based: the 8th iteration, logged as step 8


@pytest.mark.slow
def test_smoke_ppo_raises_the_reward_model_score(smoke_parts):
    from rlhf_lite.data import render_prompt
    from rlhf_lite.models import generate
    from rlhf_lite.reward import score_responses

    profile, rm, world, fresh_policy = smoke_parts
    cfg = replace(profile.ppo, steps=10, batch_size=16, minibatch_size=8, lr=3e-3)
    policy, tok = fresh_policy(cfg)
    tasks = world.splits["validation"][:64]
    prompts = [render_prompt(tok, t.instruction, t.context) for t in tasks]

    def mean_reward():
        gens = generate(policy.lm, tok, prompts, cfg.max_new_tokens, seed=123, batch_size=64)
        return sum(score_responses(rm, tok, prompts, [g.text for g in gens], [g.finished for g in gens])) / len(gens)

    before = mean_reward()
    history = train_ppo(policy, rm, tok, world.splits["train"], cfg, world=world, progress=False)
    after = mean_reward()
    assert after > before + 0.1, (before, after)
    assert history[-1]["kl"] > 0 and all(math.isfinite(h["gold"]) for h in history)


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_uninterrupted_run(smoke_parts, tmp_path):
    profile, rm, world, fresh_policy = smoke_parts
    cfg = profile.ppo  # 4 steps, a checkpoint every 2
    tasks = world.splits["train"]
    policy, tok = fresh_policy(cfg)
    full = train_ppo(policy, rm, tok, tasks, cfg, out_dir=tmp_path / "a", progress=False)
    weights = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" in k or "value_head" in k}

    class Disconnect(Exception):
        pass

    def cut(metrics, gens):
        if metrics["step"] == 3:  # after the checkpoint at step 2, before the one at step 4
            raise Disconnect

    policy, tok = fresh_policy(cfg)
    with pytest.raises(Disconnect):
        train_ppo(policy, rm, tok, tasks, cfg, out_dir=tmp_path / "b", progress=False, callback=cut)
    policy, tok = fresh_policy(cfg)  # a new session: fresh model, state from the checkpoint
    resumed = train_ppo(policy, rm, tok, tasks, cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    drop = ("time_s", "update_s")
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed] == \
        [{k: v for k, v in h.items() if k not in drop} for h in full]
    for k, v in policy.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k
    with pytest.raises(ValueError, match="different settings \\(lr\\)"):
        train_ppo(policy, rm, tok, tasks, replace(cfg, lr=1.0), out_dir=tmp_path / "b", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_ppo(policy, rm, tok, tasks, cfg, out_dir=tmp_path / "c", resume=True, progress=False)


@pytest.mark.slow
def test_trimmed_forward_equals_the_plain_one(smoke_parts):
    from rlhf_lite.models import generate, position_ids_from_mask
    from rlhf_lite.rollout import policy_logprobs, response_outputs, score_and_features

    profile, rm, world, fresh_policy = smoke_parts
    policy, tok = fresh_policy(profile.ppo)
    prompts = [t.instruction for t in world.splits["train"][:6]]
    gens = generate(policy.lm, tok, prompts, 12, seed=0)
    b = rollout_tensors(tok, prompts, gens)
    ids, attn, P = b["input_ids"], b["attention_mask"], b["prompt_len"]
    with torch.no_grad():
        plain = response_logprobs(policy.lm(input_ids=ids, attention_mask=attn,
                                            position_ids=position_ids_from_mask(attn)).logits,
                                  ids, P, 0.7)
        assert torch.allclose(policy_logprobs(policy, ids, attn, P, 0.7), plain * b["mask"], atol=1e-6)  # the spec
        rows = [0, 3]  # a subset: its padding columns are trimmed away
        lp, ent = response_outputs(policy, ids[rows], attn[rows], P, 0.7, entropy=True)
        lp_only, no_entropy = response_outputs(policy, ids[rows], attn[rows], P, 0.7)  # the updates' call
        assert no_entropy is None and torch.equal(lp_only, lp)  # entropy only where it is logged, same log-probs
        ref_fast = response_outputs(policy, ids[rows], attn[rows], P, 0.7, reference=True)[0]
        ref_plain = policy_logprobs(policy, ids[rows], attn[rows], P, 0.7, reference=True)
        scores, feats = score_and_features(rm, ids[rows], attn[rows], P)
        assert torch.allclose(scores, rm(ids[rows], attn[rows]), atol=1e-5)
        assert feats.shape == (2, ids.size(1) - P, rm.head.in_features)
    m = b["mask"][rows]
    assert torch.allclose(lp * m, plain[rows] * m, atol=1e-5) and torch.allclose(ref_fast * m, ref_plain, atol=1e-5)
    assert (ent * m >= 0).all() and lp.shape == m.shape


@pytest.mark.slow
def test_ptx_rows_do_not_change_the_minibatch_order(smoke_parts, monkeypatch):
    """PPO and PPO-ptx differ only in γ·(pretraining loss): the rows PPO-ptx draws come from a generator of their own,
    so the minibatches (and everything else) are the same as PPO's."""
    import rlhf_lite.rollout as rollout  # where the minibatches are drawn (rlhf_lite.rollout.minibatches)

    profile, rm, world, fresh_policy = smoke_parts
    prompts = [t.instruction for t in world.splits["train"][:8]]
    orders = []
    real = rollout.length_grouped_batches

    def record(*args, **kwargs):
        out = real(*args, **kwargs)
        orders[-1].append(out)
        return out

    monkeypatch.setattr(rollout, "length_grouped_batches", record)
    for gamma in (0.0, 1.0):
        orders.append([])
        cfg = replace(profile.ppo, ptx_coef=gamma)
        policy, tok = fresh_policy(cfg)
        opt = torch.optim.Adam(policy.trainable_parameters(), lr=cfg.lr)
        rows = torch.randint(0, len(tok), (16, 32), generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)  # the same rollout for both (sampling draws from the global generator)
        ppo_step(policy, rm, tok, prompts, cfg, opt, FixedKLController(cfg.init_kl_coef), ptx_rows=rows)
    assert orders[0] and orders[0] == orders[1]
