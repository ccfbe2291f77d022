"""Checkers for the three loop exercises: one SFT step (notebook 02), the grouped reward-model batch (04) and one
PPO iteration (05).

A pure function is checked by comparing its output on hand-made tensors (:mod:`rlhf_lite.course.exercises`). A
training loop has no single output, so each checker here runs the learner's loop on a small real setup (the tiny
model, a few TinyWorld prompts) next to the package's own code, and checks, in this order, the things a wrong loop
breaks: what went into the model, the loss, how the weights moved, and that training goes the right way. The
first broken invariant is explained in words. Each checker takes a few seconds on a CPU.
"""
from __future__ import annotations

import copy
import random
import warnings

import torch
import torch.nn.functional as F

from ..config import PPOConfig, RewardConfig
from ..data import IGNORE_INDEX, SFTCollator, build_sft_example, render_prompt
from ..feedback import ranking_to_pairs
from ..models import dropout_off, load_base, pad_batch
from ..ppo import FixedKLController, build_policy, ppo_optimizer, ppo_step
from ..reward import _records_loss, build_reward_model, encode_records
from ..world import build_world
from ..world.fluency import garble, shuffle_words
from .exercises import ExerciseError, _call

MAX_LENGTH = 256


def _tasks(n: int, offset: int = 0) -> list:
    """``n`` TinyWorld training tasks of different lengths (so a batch needs padding)."""
    tasks = build_world(seed=0, n_prompts=200).splits["train"]
    return tasks[offset:offset + n]


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _copy(model):
    """A deep copy of a model (transformers warns about a deprecated attribute that copying reads: not ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(model)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


# ---------------------------------------------------------------------------------------------
# 1. One SFT step (notebook 02)
# ---------------------------------------------------------------------------------------------
def _sft_setup():
    model, tok = load_base("tiny")
    dropout_off(model)  # the same forward pass every time: the learner's step and ours can be compared exactly
    model.train()
    pairs = [(render_prompt(tok, t.instruction, t.context), t.demonstration or t.response) for t in _tasks(4)]
    return model, tok, pairs


def _reference_sft_step(model, tok, pairs, opt) -> tuple[float, dict]:
    """What :func:`rlhf_lite.sft.train_sft` does in one step (without its scheduler and gradient clipping)."""
    from ..sft import sft_loss

    batch = SFTCollator(tok.pad_token_id)([build_sft_example(tok, p, r, MAX_LENGTH) for p, r in pairs])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, T, V]
    loss = sft_loss(logits, batch["labels"])
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item(), batch


def _sft_opt(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def _check_sft_batch(got: dict, want: dict, tok) -> None:
    """The padded batch: shapes, padding side, the attention mask and the label mask, each explained."""
    if not isinstance(got, dict) or not {"input_ids", "attention_mask", "labels"} <= set(got):
        keys = list(got)[:5] if isinstance(got, dict) else ""
        raise ExerciseError("return (loss, batch) where batch is the dict you fed the model: {'input_ids', "
                            f"'attention_mask', 'labels'}}; got {type(got).__name__} {keys}")
    B, T = want["input_ids"].shape
    for k in ("input_ids", "attention_mask", "labels"):
        if not torch.is_tensor(got[k]) or tuple(got[k].shape) != (B, T):
            raise ExerciseError(f"batch['{k}'] should be a [{B}, {T}] tensor (4 examples padded to the longest), got "
                                f"{tuple(got[k].shape) if torch.is_tensor(got[k]) else type(got[k]).__name__}")
    ids, attn, labels = (got[k].cpu().long() for k in ("input_ids", "attention_mask", "labels"))
    lengths = want["attention_mask"].sum(1).tolist()
    short = min(range(B), key=lengths.__getitem__)
    if not torch.equal(ids, want["input_ids"]):
        n = lengths[short]
        if torch.equal(ids[short, T - n:], want["input_ids"][short, :n]):
            raise ExerciseError("the batch is padded on the left. For training, pad on the right (as SFTCollator "
                                "does): each token keeps the position it has in the unpadded sequence, and the "
                                "loss simply ignores the padding at the end")
        raise ExerciseError("batch['input_ids'] differs from prompt + response + EOS, padded on the right with "
                            "tokenizer.pad_token_id: tokenize each pair with build_sft_example")
    eos_pos = [(i, lengths[i] - 1) for i in range(B)]  # each example's own EOS, the last real token
    if any(attn[i, j] != 1 for i, j in eos_pos):
        raise ExerciseError("attention_mask is 0 on the real EOS at the end of a response. GPT-2's pad token IS "
                            "the EOS token, so a mask built from token values (input_ids != pad_token_id) hides it "
                            "too: build the mask from each example's length (1 on its real tokens, 0 on the padding)")
    if not torch.equal(attn, want["attention_mask"]):
        raise ExerciseError("attention_mask should be 1 on every real token (prompt, response, EOS) and 0 on the "
                            "padding")
    ref = want["labels"]
    prompt = (ref == IGNORE_INDEX) & (want["attention_mask"] == 1)
    pad = want["attention_mask"] == 0
    if any(labels[i, j] == IGNORE_INDEX for i, j in eos_pos):
        raise ExerciseError("the EOS that ends each response has label -100, so the model never learns to stop. "
                            "(Masking labels where input_ids == pad_token_id does this: GPT-2's pad token is EOS.) "
                            "Keep the labels build_sft_example made and pad them with -100")
    if (labels[prompt] != IGNORE_INDEX).any():
        raise ExerciseError("prompt tokens are supervised (their label is not -100): SFT learns to write the "
                            "response, not to repeat the prompt. Use the labels from build_sft_example, not a copy of "
                            "input_ids")
    if (labels[pad] != IGNORE_INDEX).any():
        raise ExerciseError("padding positions are supervised: pad the labels with -100, not with the pad token id "
                            "(otherwise the model is trained to emit a stream of EOS after every answer, weighted "
                            "by how much padding the batch needed)")
    if not torch.equal(labels, ref):
        raise ExerciseError("batch['labels'] should be each example's labels from build_sft_example, padded on the "
                            "right with -100")


def check_sft_step(fn) -> None:
    """Check ``fn(model, tokenizer, pairs, optimizer) -> (loss: float, batch: dict)``, one SFT step on a batch of
    (prompt, response) pairs, against :func:`rlhf_lite.sft.train_sft`'s step: the padded batch (right side,
    attention on the real EOS, labels only on response tokens and EOS), the loss (shifted, mean over supervised
    tokens), the weights after one and after two steps (the update, and gradients cleared between steps), and
    that the loss falls over a dozen steps on the same batch."""
    model, tok, pairs = _sft_setup()
    ref = _copy(model)
    opt, ref_opt = _sft_opt(model), _sft_opt(ref)
    before = _weights(model)
    with torch.no_grad():  # the loss the first step should report, and the unshifted one (a common mistake)
        batch0 = SFTCollator(tok.pad_token_id)([build_sft_example(tok, p, r, MAX_LENGTH) for p, r in pairs])
        logits0 = ref(input_ids=batch0["input_ids"], attention_mask=batch0["attention_mask"]).logits
        unshifted = F.cross_entropy(logits0.flatten(0, 1), batch0["labels"].flatten(), ignore_index=IGNORE_INDEX)
    want_loss, want_batch = _reference_sft_step(ref, tok, pairs, ref_opt)

    out = _call(fn, "one SFT step", model, tok, list(pairs), opt)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ExerciseError(f"return a pair (loss as a float, the batch dict), got {type(out).__name__}")
    loss, batch = out
    _check_sft_batch(batch, want_batch, tok)
    loss = loss.item() if torch.is_tensor(loss) else loss
    if not isinstance(loss, float):
        raise ExerciseError(f"return the loss as a Python float (loss.item()), got {type(loss).__name__}")
    if abs(loss - want_loss) > 1e-4 * max(1.0, abs(want_loss)):
        if abs(loss - unshifted.item()) < 1e-4 * max(1.0, abs(want_loss)):
            raise ExerciseError(f"your loss {loss:.4f} compares each position's logits with its own token: the "
                                "logits at position t predict token t+1, so shift (logits[:, :-1] against "
                                f"labels[:, 1:]); expected {want_loss:.4f}")
        raise ExerciseError(f"your loss is {loss:.4f}, expected {want_loss:.4f}: the mean next-token cross-entropy "
                            "over the supervised (label != -100) tokens, as sft_loss computes it")
    after = _weights(model)
    if _max_diff(after, before) == 0:
        raise ExerciseError("the weights did not change: after loss.backward(), call optimizer.step()")
    if _max_diff(after, _weights(ref)) > 1e-5:
        raise ExerciseError(f"after one step your weights differ from the reference step's by up to "
                            f"{_max_diff(after, _weights(ref)):.2e}: backpropagate the loss you return, then one "
                            "optimizer.step()")
    _call(fn, "a second SFT step", model, tok, list(pairs), opt)
    _reference_sft_step(ref, tok, pairs, ref_opt)
    if _max_diff(_weights(model), _weights(ref)) > 1e-5:
        raise ExerciseError("the first step was right but the second is not: the first step's gradients were still "
                            "there when the second step's were added. Clear them every step (optimizer.zero_grad())")
    losses = [want_loss] + [_call(fn, "further SFT steps", model, tok, list(pairs), opt)[0] for _ in range(10)]
    losses = [x.item() if torch.is_tensor(x) else x for x in losses]
    if not losses[-1] < losses[0]:
        raise ExerciseError(f"over {len(losses)} steps on the same batch the loss went {losses[0]:.3f} → "
                            f"{losses[-1]:.3f}; it should fall")
    print(f"✓ your SFT step matches the package's: right-padded batch, labels on response tokens and EOS only, "
          f"shifted loss, gradients cleared; loss {losses[0]:.3f} → {losses[-1]:.3f} over {len(losses)} steps on "
          "one batch")


# ---------------------------------------------------------------------------------------------
# 2. The grouped reward-model batch (notebook 04)
# ---------------------------------------------------------------------------------------------
def _rm_records(tok, n: int, offset: int = 0) -> list[dict]:
    """Comparison records of 2 to 4 answers (a reference, the writer's demonstration, a garbled and a shuffled
    reference), one tie, one unfinished answer."""
    rng = random.Random(offset)
    records = []
    for i, t in enumerate(_tasks(n, offset)):
        answers = [t.response, t.demonstration or t.response, garble(t.response), shuffle_words(t.response, rng)]
        k = 4 - i % 3  # K = 4, 3, 2, 4, …
        ranking = [[0, 1], 2, 3] if i % 3 == 0 else list(range(k))
        records.append({"prompt": render_prompt(tok, t.instruction, t.context), "responses": answers[:k],
                        "finished": [True] * (k - 1) + [i % 2 == 0], "ranking": ranking})
    return records


def _rm_setup():
    lm, tok = load_base("tiny")
    rm = build_reward_model(lm, RewardConfig(seed=0))
    rm.train()
    return rm, tok


class _CountRows:
    """Wraps ``rm.hidden`` to count the forward passes and the rows (answers) that go through the transformer."""

    def __init__(self, rm):
        self.rm, self.inner, self.calls, self.rows = rm, rm.hidden, 0, 0

    def __call__(self, input_ids, attention_mask):
        self.calls += 1
        self.rows += input_ids.size(0)
        return self.inner(input_ids, attention_mask)


def check_reward_batch_loss(fn) -> None:
    """Check ``fn(rm, tokenizer, records) -> loss`` (a scalar tensor with gradient): InstructGPT's eq. 1 for a batch of
    ranked prompts, each of the N answers forwarded once, C(K,2) pairs per prompt from their K rewards, the mean over
    prompts of each prompt's mean over its pairs. Compared with :func:`rlhf_lite.reward.train_reward_model`'s batch
    loss; then a few training steps with it must lower the loss."""
    rm, tok = _rm_setup()
    records = _rm_records(tok, 4)
    n_answers = sum(len(r["responses"]) for r in records)
    n_pairs = sum(len(ranking_to_pairs(r["ranking"])) for r in records)
    with torch.no_grad():
        enc = encode_records(tok, records, MAX_LENGTH)
        want = _records_loss(rm, enc, records, tok.pad_token_id)[0].item()
    counter = _CountRows(rm)
    rm.hidden = counter
    try:
        got = _call(fn, "a batch of 4 ranked prompts", rm, tok, copy.deepcopy(records))
    finally:
        del rm.hidden  # back to the method
    if not torch.is_tensor(got) or got.dim() != 0:
        raise ExerciseError(f"return the loss as a scalar tensor (so that loss.backward() trains), got {got!r:.80}")
    if counter.rows == 2 * n_pairs and n_answers != 2 * n_pairs:
        raise ExerciseError(f"you forwarded {counter.rows} answers for a batch that holds {n_answers}: two per pair, "
                            f"once for each of the {n_pairs} pairs it is in. Run each answer through the reward model "
                            "once and build the pairs from the K rewards: that is the point of grouping (C(K,2) "
                            "pairs for the cost of K answers)")
    if counter.rows != n_answers:
        raise ExerciseError(f"the reward model saw {counter.rows} rows for a batch of {n_answers} answers: encode "
                            "every answer of every prompt once (prompt + answer, + EOS if it finished) and forward "
                            "them")
    if not got.requires_grad:
        raise ExerciseError("the loss carries no gradient: compute it from the reward model's output tensor (no "
                            ".item(), no torch.no_grad(), no torch.tensor(...) of the rewards)")
    val = got.item()
    if abs(val - want) > 1e-4:
        with torch.no_grad():  # name the mistake when one common variant explains the number
            rewards = rm(**pad_batch([s for seqs in enc for s in seqs], tok.pad_token_id))
            per, pooled, reversed_, i = [], [], [], 0
            for r in records:
                k = len(r["responses"])
                w, l = torch.tensor(ranking_to_pairs(r["ranking"])).T
                rr = rewards[i:i + k]
                per.append(-F.logsigmoid(rr[w] - rr[l]).mean())
                pooled.append(-F.logsigmoid(rr[w] - rr[l]))
                reversed_.append(-F.logsigmoid(rr[l] - rr[w]).mean())
                i += k
            hints = [(torch.stack(per).sum(), "you summed over the prompts: average them (the loss must not grow "
                                              "with the batch size)"),
                     (torch.cat(pooled).mean(), "you averaged over all pairs of the batch at once, so a prompt with "
                                                "more answers counts more. Eq. 1 takes each prompt's mean over its "
                                                "C(K,2) pairs (the 1/C(K,2)), then the mean over prompts"),
                     (torch.stack(reversed_).mean(), "the pairs are the wrong way round: the ranking lists answers "
                                                     "best → worst, so −log σ(r_winner − r_loser) with the earlier "
                                                     "answer as the winner"),
                     (_records_loss(rm, [[s[:-1] if f else s for s, f in zip(seqs, r["finished"])] for seqs, r in
                                         zip(enc, records)], records, tok.pad_token_id)[0],
                      "the finished answers lack their EOS: the reward is read at the last token, and for an answer "
                      "that ended it must be EOS, as in rollouts (encode_response(..., finished, ...))")]
        for value, why in hints:
            if abs(val - value.item()) < 1e-4:
                raise ExerciseError(f"your loss {val:.4f}, expected {want:.4f}: {why}")
        raise ExerciseError(f"your loss is {val:.4f}, expected {want:.4f}. Check that each prompt's K rewards are the "
                            "slice of the batch's rewards that belongs to it (records have different K), and that "
                            "every pair of the ranking is used (ranking_to_pairs drops only ties)")
    # a few steps of training with the learner's loss: it must go down on the batch it trains on
    train = _rm_records(tok, 8, offset=4)
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = _call(fn, "training steps", rm, tok, copy.deepcopy(train))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    if not losses[-1] < losses[0]:
        raise ExerciseError(f"8 training steps with your loss moved it {losses[0]:.3f} → {losses[-1]:.3f}; it should "
                            "fall")
    print(f"✓ your grouped batch matches the package's: {n_answers} answers forwarded once for {n_pairs} pairs, loss "
          f"{val:.4f}; training with it: {losses[0]:.3f} → {losses[-1]:.3f} in 8 steps")


# ---------------------------------------------------------------------------------------------
# 3. One PPO iteration (notebook 05)
# ---------------------------------------------------------------------------------------------
def _ppo_setup(cfg: PPOConfig, seed: int = 0):
    """A policy that already differs from its reference (LoRA B nudged off zero, as after some training, so that
    confusing the two shows), a frozen reward model with a random head, and 8 prompts."""
    lm, tok = load_base("tiny")
    rm = build_reward_model(load_base("tiny")[0], RewardConfig(seed=seed))
    rm.eval().requires_grad_(False)
    policy = build_policy(lm, rm, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    prompts = [render_prompt(tok, t.instruction, t.context) for t in _tasks(cfg.batch_size)]
    return policy, rm, tok, prompts


PPO_CHECK = PPOConfig(batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=16, grad_clip=1e6,
                      whiten_rewards=False, seed=0)
"""The setting of the comparison: 8 prompts, 2 minibatches, one epoch (the minibatches are ``ro.chunks``), no
gradient clipping (so clipping or not does not matter)."""


TRAIN_ITERATIONS = 8
"""Iterations of the last check (the reward must rise): on the 8 check prompts, at a learning rate of 3e-3 and β = 0,
the package's loop raises the random reward model's score within a few."""


class _CountSteps:
    def __init__(self, opt):
        self.inner, self.n = opt.step, 0

    def __call__(self, *a, **k):
        self.n += 1
        return self.inner(*a, **k)


def _run_iteration(fn, name, policy, rm, tok, prompts, cfg, opt, beta, seed) -> tuple[dict, int]:
    counter = _CountSteps(opt)
    opt.step = counter
    torch.manual_seed(seed)  # the rollout's samples: the same as the reference's
    try:
        out = _call(fn, name, policy, rm, tok, list(prompts), cfg, opt, beta)
    finally:
        del opt.step
    if not isinstance(out, dict) or not {"reward", "first_ratio", "first_approx_kl"} <= set(out):
        raise ExerciseError("return a dict with 'reward' (the rollout's mean reward-model score), 'first_ratio' and "
                            "'first_approx_kl' (the stats of the first minibatch's ppo_policy_loss); got "
                            f"{type(out).__name__} {sorted(out)[:6] if isinstance(out, dict) else ''}")
    return out, counter.n


def check_ppo_iteration(fn) -> None:
    """Check ``fn(policy, reward_model, tokenizer, prompts, cfg, optimizer, beta) -> {"reward", "first_ratio",
    "first_approx_kl"}``, one PPO iteration, against :func:`rlhf_lite.ppo.ppo_step`: the number of updates (epochs ×
    minibatches), ratio 1 and KL 0 on the first minibatch (old log-probs are the sampling policy's), the critic
    trained, the policy's weights after the iteration, and that the reward rises over a few iterations."""
    beta = 0.1
    # 1. structure, with two epochs: the number of updates and the first minibatch's ratio, on two iterations
    cfg2 = PPOConfig(**{**PPO_CHECK.__dict__, "ppo_epochs": 2})
    policy, rm, tok, prompts = _ppo_setup(cfg2)
    opt = ppo_optimizer(policy, cfg2)
    head0 = policy.value_head.weight.detach().clone()
    for it in range(2):
        out, n_steps = _run_iteration(fn, f"PPO iteration {it + 1}", policy, rm, tok, prompts, cfg2, opt, beta, it)
        n_chunks = -(-cfg2.batch_size // cfg2.minibatch_size)
        if n_steps != cfg2.ppo_epochs * n_chunks:
            raise ExerciseError(f"one iteration made {n_steps} optimizer steps; with ppo_epochs={cfg2.ppo_epochs} and "
                                f"{n_chunks} minibatches ({cfg2.batch_size} episodes, minibatch_size "
                                f"{cfg2.minibatch_size}) it should make {cfg2.ppo_epochs * n_chunks}: one per "
                                "minibatch per epoch")
        if abs(float(out["first_ratio"]) - 1) > 1e-4 or abs(float(out["first_approx_kl"])) > 1e-5:
            ratio = float(out["first_ratio"])
            raise ExerciseError(f"iteration {it + 1}: on the first minibatch the ratio is {ratio:.4f} "
                                f"and approx. KL {float(out['first_approx_kl']):.2e}; they must be exactly 1 and 0, "
                                "because nothing has been updated yet. The old log-probs must be those of the policy "
                                "that sampled (ro.logprobs), not the reference's (ro.ref_logprobs), and computed "
                                "before any update")
    if torch.equal(policy.value_head.weight, head0):
        raise ExerciseError("the critic never changed: add cfg.vf_coef × ppo_value_loss(...) to the loss, so the "
                            "value head learns the returns")
    # 2. the update itself, next to ppo_step (one epoch: the minibatches are ro.chunks in both)
    policy, rm, tok, prompts = _ppo_setup(PPO_CHECK)
    ref = _copy(policy)
    opt, ref_opt = ppo_optimizer(policy, PPO_CHECK), ppo_optimizer(ref, PPO_CHECK)
    start = _weights(policy)
    torch.manual_seed(7)
    ppo_step(ref, rm, tok, list(prompts), PPO_CHECK, ref_opt, FixedKLController(beta))
    _run_iteration(fn, "PPO iteration", policy, rm, tok, prompts, PPO_CHECK, opt, beta, 7)
    got, want = _weights(policy), _weights(ref)
    lora = [n for n in start if "lora" in n]
    d_got = torch.cat([(got[n] - start[n]).flatten() for n in lora])
    d_want = torch.cat([(want[n] - start[n]).flatten() for n in lora])
    if d_got.abs().max() == 0:
        raise ExerciseError("the policy's weights did not change: backpropagate the policy loss and step the "
                            "optimizer after each minibatch")
    cos = F.cosine_similarity(d_got, d_want, dim=0).item()
    if cos < -0.5:
        raise ExerciseError(f"your update points away from PPO's (cosine {cos:.2f}): it makes the good answers less "
                            "likely. ppo_policy_loss already returns a loss to minimise (−advantage × ratio): add it "
                            "to the loss as it is, with GAE's advantages, not their negative")
    gap = _max_diff(got, want)
    if gap > 1e-4:
        raise ExerciseError(f"after one iteration your weights differ from ppo_step's by up to {gap:.1e} "
                            f"(update direction cosine {cos:.2f}). Common causes: gradients not cleared between "
                            "minibatches; advantages not whitened (masked_whiten) over the whole batch before the "
                            "minibatches; values or advantages computed with gradient, or from the new policy instead "
                            "of the rollout; the value loss not scaled by cfg.vf_coef")
    # 3. the point of it all: a few iterations raise the reward
    fast = PPOConfig(**{**PPO_CHECK.__dict__, "ppo_epochs": 2, "lr": 3e-3})
    policy, rm, tok, prompts = _ppo_setup(fast, seed=1)
    opt = ppo_optimizer(policy, fast)
    rewards = [float(_run_iteration(fn, "PPO training", policy, rm, tok, prompts, fast, opt, 0.0, 100 + i)[0]["reward"])
               for i in range(TRAIN_ITERATIONS)]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    if not last > first:
        raise ExerciseError(f"over {TRAIN_ITERATIONS} iterations the reward went {first:.3f} → {last:.3f} (mean of the "
                            "first and last three); PPO should raise it")
    print(f"✓ your PPO iteration matches ppo_step: {cfg2.ppo_epochs} epochs × {n_chunks} minibatches, ratio 1 and KL 0 "
          f"on the first, critic trained; reward {first:.3f} → {last:.3f} over {TRAIN_ITERATIONS} iterations")
