"""Checkers for the notebooks' implement-it-yourself exercises.

Each ``check_*`` calls the learner's function on several cases, compares it with the package's
reference, and either prints a success line or raises :class:`ExerciseError` explaining the first
mismatch in words (and, where a common mistake explains it, naming that mistake).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..best_of_n import best_of_n_kl
from ..data import IGNORE_INDEX, build_sft_example, format_prompt
from ..dpo import dpo_loss
from ..feedback import ranking_to_pairs
from ..grpo import group_advantages
from ..models import last_token_index
from ..ppo import compute_gae, kl_penalized_rewards, ppo_policy_loss
from ..reward import pairwise_loss, ranking_loss
from ..rollout import masked_mean
from ..sft import sft_loss
from ..world.labelers import prefer_prob
from .trl_bridge import preference_rows


class ExerciseError(AssertionError):
    """The learner's function disagrees with the reference; the message says where and why."""


def _close(a, b) -> bool:
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4)


NOT_DONE = ("{fn} is not implemented yet: replace the `raise NotImplementedError` in its cell (marked "
            "# YOUR CODE HERE) with your code, run that cell, then this one again")


def _not_done(e: Exception, fn) -> None:
    """A stub straight from the student notebook: say so instead of reporting a crash."""
    if isinstance(e, NotImplementedError):
        raise ExerciseError(NOT_DONE.format(fn=getattr(fn, "__name__", "your function"))) from None


def _call(fn, name: str, *args):
    """Call the learner's function on one case; a crash becomes an explained error."""
    try:
        return fn(*args)
    except Exception as e:
        _not_done(e, fn)
        raise ExerciseError(f"case '{name}': your function raised {type(e).__name__}: {e}") from None


def _scalar_call(fn, name: str, *args) -> torch.Tensor:
    """Call the learner's loss on one case; a crash or a non-scalar result becomes an explained error."""
    got = _call(fn, name, *args)
    if not torch.is_tensor(got) or got.dim() != 0:
        raise ExerciseError(f"case '{name}': expected a scalar tensor, got {got!r:.80}")
    return got


def _sft_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    cases = [("one sequence, last two tokens supervised", torch.randn(1, 4, 5, generator=g),
              torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1]]))]
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 4, 0, IGNORE_INDEX],
                           [IGNORE_INDEX, 1, 1, 6, IGNORE_INDEX, IGNORE_INDEX]])
    cases.append(("a right-padded batch of two", torch.randn(2, 6, 7, generator=g), labels))
    cases.append(("every token after the first supervised", torch.randn(3, 5, 11, generator=g),
                  torch.randint(0, 11, (3, 5), generator=g)))
    return cases


def check_sft_loss(fn) -> None:
    """Check ``fn(logits [B,T,V], labels [B,T]) -> scalar`` against :func:`rlhf_lite.sft.sft_loss`."""
    for name, logits, labels in _sft_cases():
        want = sft_loss(logits, labels)
        try:
            got = fn(logits.clone(), labels.clone())
        except Exception as e:
            _not_done(e, fn)
            hint = (" Labels of -100 must be skipped (cross_entropy's ignore_index=-100)."
                    if "index" in str(e).lower() or "target" in str(e).lower() else "")
            raise ExerciseError(f"case '{name}': your function raised {type(e).__name__}: {e}.{hint}") from None
        if not torch.is_tensor(got) or got.dim() != 0:
            raise ExerciseError(f"case '{name}': expected a scalar tensor, got {got!r:.80}")
        if _close(got, want):
            continue
        v = logits.size(-1)
        unshifted = F.cross_entropy(logits.reshape(-1, v), labels.reshape(-1), ignore_index=IGNORE_INDEX)
        per_tok = F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
                                  reduction="none")
        n_sup = int((labels[:, 1:] != IGNORE_INDEX).sum())
        all_scored = F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].clamp(min=0).reshape(-1))
        if _close(got, unshifted):
            why = ("you scored logits[:, t] against labels[:, t]. Position t predicts the *next* token: compare "
                   "logits[:, :-1] with labels[:, 1:]")
        elif _close(got, per_tok.sum()):
            why = "you summed the token losses; take the mean over supervised tokens"
        elif _close(got, per_tok.sum() / per_tok.numel()) and n_sup != per_tok.numel():
            why = (f"you divided by all {per_tok.numel()} positions; divide by the {n_sup} supervised ones "
                   "(labels != -100)")
        elif _close(got, all_scored):
            why = ("you also scored positions whose label is -100 (prompt and padding); skip them, e.g. with "
                   "cross_entropy(..., ignore_index=-100)")
        else:
            why = "the value differs from the mean next-token cross-entropy over positions whose label is not -100"
        raise ExerciseError(f"case '{name}': got {got.item():.5f}, expected {want.item():.5f}: {why}")
    print(f"✓ sft_loss: all {len(_sft_cases())} cases match the reference")


def check_build_sft_example(fn, tokenizer) -> None:
    """Check ``fn(tokenizer, prompt, response, max_length) -> {input_ids, attention_mask, labels}``."""
    cases = [(format_prompt("Where does the fox live?"), "The fox lives in the forest.", 128),
             (format_prompt("Name two colours.", "Red, blue and green."), "- red\n- blue", 128),
             (format_prompt("Hi"), "Hello!", 32)]
    eos = tokenizer.eos_token_id
    for prompt, response, max_length in cases:
        want = build_sft_example(tokenizer, prompt, response, max_length)
        where = f"prompt {prompt[:40]!r}…, response {response!r}"
        got = _call(fn, where, tokenizer, prompt, response, max_length)
        if not isinstance(got, dict) or set(want) - set(got):
            raise ExerciseError(f"{where}: return a dict with keys {sorted(want)}, got {type(got).__name__} "
                                f"{sorted(got) if isinstance(got, dict) else ''}")
        got = {k: [int(x) for x in (got[k].tolist() if torch.is_tensor(got[k]) else got[k])] for k in want}
        if got["input_ids"] != want["input_ids"]:
            if got["input_ids"] == want["input_ids"][:-1]:
                why = "the response must be followed by the EOS token (tokenizer.eos_token_id)"
            else:
                why = "input_ids should be the prompt's tokens, then the response's tokens, then EOS"
            raise ExerciseError(f"{where}: input_ids differ: {why}")
        if got["attention_mask"] != want["attention_mask"]:
            raise ExerciseError(f"{where}: attention_mask should be 1 for every (real) token")
        n_prompt = want["labels"].count(IGNORE_INDEX)
        if got["labels"][-1] == IGNORE_INDEX and want["labels"][-1] == eos:
            raise ExerciseError(f"{where}: the EOS label is -100. Keep it (labels[-1] = eos_token_id), even though "
                                "pad == eos for GPT-2: it is what teaches the model to stop (trl#976)")
        if any(l != IGNORE_INDEX for l in got["labels"][:n_prompt]):
            raise ExerciseError(f"{where}: prompt positions must have label -100 (no loss on the prompt)")
        shifted = want["input_ids"][1:] + [IGNORE_INDEX]
        if got["labels"][n_prompt:] == want["input_ids"][n_prompt + 1:] + [IGNORE_INDEX] or got["labels"] == shifted:
            raise ExerciseError(f"{where}: labels look shifted by one. Leave labels aligned with input_ids: the loss "
                                "function does the shift")
        if got["labels"] != want["labels"]:
            raise ExerciseError(f"{where}: labels should be -100 on the prompt and equal to input_ids on the response "
                                "and EOS")
    print(f"✓ build_sft_example: all {len(cases)} cases match the reference")


def check_pairwise_loss(fn) -> None:
    """Check ``fn(chosen_rewards [B], rejected_rewards [B]) -> scalar`` against
    :func:`rlhf_lite.reward.pairwise_loss`."""
    cases = [("one pair, chosen ahead by 1", torch.tensor([1.0]), torch.tensor([0.0])),
             ("a batch of three with a wrong-way pair", torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0])),
             ("large margins (numerical stability)", torch.tensor([60.0, -60.0]), torch.tensor([-60.0, 60.0]))]
    for name, c, r in cases:
        want = pairwise_loss(c, r)
        got = _scalar_call(fn, name, c.clone(), r.clone())
        if _close(got, want):
            continue
        if _close(got, pairwise_loss(r, c)):
            why = ("the sign is flipped: the loss must be small when the chosen reward is the larger one, −log σ(r_c − "
                   "r_r)")
        elif _close(got, -F.logsigmoid(c - r).sum()):
            why = "you summed over pairs; take the mean"
        elif not torch.isfinite(got):
            why = "it is not finite for large margins: use F.logsigmoid(x) rather than torch.log(torch.sigmoid(x))"
        elif _close(got, F.logsigmoid(c - r).mean()):
            why = "you forgot the minus sign: minimise −log σ(r_c − r_r)"
        else:
            why = "the value differs from mean(−log σ(r_chosen − r_rejected))"
        raise ExerciseError(f"case '{name}': got {got.item():.5f}, expected {want.item():.5f}: {why}")
    print(f"✓ pairwise_loss: all {len(cases)} cases match the reference")


def check_ranking_loss(fn) -> None:
    """Check ``fn(rewards [K], ranking) -> scalar`` against :func:`rlhf_lite.reward.ranking_loss` (eq. 1 of
    InstructGPT)."""
    cases = [("K = 3, ranked best to worst 2, 1, 0", torch.tensor([0.0, 1.0, 3.0]), [2, 1, 0]),
             ("K = 4, a ranking that disagrees with the rewards", torch.tensor([0.5, -1.0, 2.0, 0.0]), [1, 3, 0, 2]),
             ("K = 2", torch.tensor([0.3, 0.1]), [0, 1])]
    for name, rewards, ranking in cases:
        want = ranking_loss(rewards, ranking)
        got = _scalar_call(fn, name, rewards.clone(), list(ranking))
        if _close(got, want):
            continue
        k = len(ranking)
        adjacent = -F.logsigmoid(torch.stack([rewards[ranking[i]] - rewards[ranking[i + 1]]
                                              for i in range(k - 1)])).mean()
        if _close(got, ranking_loss(rewards, list(reversed(ranking)))):
            why = ("the order is reversed: ranking lists indices from best to worst, so ranking[0] wins every pair it "
                   "is in")
        elif _close(got, want * k * (k - 1) / 2):
            why = "you summed over the C(K,2) pairs; divide by their number (eq. 1's 1/C(K,2))"
        elif k > 2 and _close(got, adjacent):
            why = "you only used neighbouring pairs; a ranking implies all C(K,2) pairs (itertools.combinations)"
        else:
            why = "the value differs from the mean over all (winner, loser) pairs of −log σ(r_w − r_l)"
        raise ExerciseError(f"case '{name}': got {got.item():.5f}, expected {want.item():.5f}: {why}")
    print(f"✓ ranking_loss: all {len(cases)} cases match the reference")


def check_ranking_to_pairs(fn) -> None:
    """Check ``fn(ranking) -> [(winner, loser), ...]`` against :func:`rlhf_lite.feedback.ranking_to_pairs`
    (order of the pairs does not matter; flat rankings only)."""
    cases = [[0, 1], [2, 0, 1], [3, 1, 0, 2], list(range(9))[::-1]]
    for ranking in cases:
        want = set(ranking_to_pairs(ranking))
        try:
            got = fn(list(ranking))
        except Exception as e:
            _not_done(e, fn)
            raise ExerciseError(f"ranking {ranking}: your function raised {type(e).__name__}: {e}") from None
        got_set = {tuple(int(x) for x in p) for p in got}
        if got_set == want and len(got) == len(want):
            continue
        k = len(ranking)
        if got_set == {(l, w) for w, l in want}:
            why = "winner and loser are swapped: ranking[0] is the best response, so it is the winner of its pairs"
        elif got_set < want and len(got_set) == k - 1:
            why = f"only neighbouring pairs: a ranking of {k} implies all C({k},2) = {len(want)} pairs"
        elif len(got) != len(got_set):
            why = "some pairs appear twice"
        elif len(got_set) > len(want):
            why = f"too many pairs ({len(got_set)}): each unordered pair once, C({k},2) = {len(want)}"
        else:
            missing = sorted(want - got_set)[:3]
            why = f"missing pairs such as {missing}: every earlier response beats every later one"
        raise ExerciseError(f"ranking {ranking}: {why}")
    print(f"✓ ranking_to_pairs: all {len(cases)} rankings give the right pairs")


# ---------------------------------------------------------------------------------------------
# Notebook 05: the PPO formulas
# ---------------------------------------------------------------------------------------------
def _ppo_cases():
    """Two rows of different length, one right-padded and one left-padded, the ragged shapes a rollout has."""
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0, 1.0]])
    return g, mask


def _tensor_call(fn, name: str, shape, *args) -> torch.Tensor:
    got = _call(fn, name, *args)
    if not torch.is_tensor(got) or tuple(got.shape) != tuple(shape):
        raise ExerciseError(f"case '{name}': expected a tensor of shape {tuple(shape)}, got "
                            f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
    return got


def check_kl_penalized_rewards(fn) -> None:
    """Check ``fn(scores [B], logprobs [B,T], ref_logprobs [B,T], mask [B,T], beta) -> rewards [B,T]`` against
    :func:`rlhf_lite.ppo.kl_penalized_rewards`."""
    g, mask = _ppo_cases()
    cases = [("one row, three response tokens", torch.tensor([1.5]), torch.randn(1, 3, generator=g),
              torch.randn(1, 3, generator=g),
              torch.ones(1, 3), 0.1),
             ("right- and left-padded rows of different length", torch.tensor([2.0, -1.0]),
              torch.randn(2, 5, generator=g),
              torch.randn(2, 5, generator=g), mask, 0.05)]
    for name, scores, lp, ref, m, beta in cases:
        want = kl_penalized_rewards(scores, lp, ref, m, beta)
        got = _tensor_call(fn, name, want.shape, scores.clone(), lp.clone(), ref.clone(), m.clone(), beta)
        if _close(got, want):
            continue
        kl = -beta * (lp - ref) * m
        at_end = kl.clone()
        at_end[:, -1] += scores
        first = m.argmax(1)
        at_first = kl.clone()
        at_first[torch.arange(len(scores)), first] += scores
        if _close(got, kl_penalized_rewards(scores, ref, lp, m, beta)):
            why = ("the KL term has the wrong sign: the penalty is −β (log π − log π_ref), negative where the policy "
                   "is more confident")
        elif _close(got, at_end) and not _close(at_end, want):
            why = ("the score landed on the last column, which is padding for a right-padded row: add it at each row's "
                   "last *masked* token (rlhf_lite.models.last_token_index)")
        elif _close(got, at_first):
            why = "the score landed on the first response token; it belongs on the last one (the EOS)"
        elif _close(got * m, want) and not _close(got, want):
            why = "positions off the mask (prompt, padding) must get reward 0"
        elif _close(got, want - kl):
            why = "the KL penalty is missing: every response token gets −β (log π − log π_ref)"
        else:
            last = last_token_index(m)
            why = f"expected −β·(logprobs − ref_logprobs) on masked tokens plus the score at index {last.tolist()}"
        raise ExerciseError(f"case '{name}': {why}")
    print(f"✓ kl_penalized_rewards: all {len(cases)} cases match the reference")


def check_compute_gae(fn) -> None:
    """Check ``fn(rewards, values, mask, gamma, lam) -> (advantages, returns)`` against
    :func:`rlhf_lite.ppo.compute_gae`."""
    g, mask = _ppo_cases()
    cases = [("one row, γ = 1, λ = 1 (Monte-Carlo returns)", torch.tensor([[0.0, 0.0, 1.0]]),
              torch.tensor([[0.2, 0.5, 0.7]]),
              torch.ones(1, 3), 1.0, 1.0),
             ("one row, γ = 0.9, λ = 0.5", torch.randn(1, 4, generator=g), torch.randn(1, 4, generator=g),
              torch.ones(1, 4), 0.9, 0.5),
             ("padded rows of different length, γ = 1, λ = 0.95", torch.randn(2, 5, generator=g) * mask,
              torch.randn(2, 5, generator=g) * 3, mask, 1.0, 0.95)]
    for name, r, v, m, gamma, lam in cases:
        want_a, want_r = compute_gae(r, v, m, gamma, lam)
        try:
            got = fn(r.clone(), v.clone(), m.clone(), gamma, lam)
            got_a, got_r = got
        except Exception as e:
            _not_done(e, fn)
            raise ExerciseError(f"case '{name}': your function raised {type(e).__name__} or did not return "
                                f"(advantages, returns): {e}") from None
        for what, x, w in (("advantages", got_a, want_a), ("returns", got_r, want_r)):
            if not torch.is_tensor(x) or x.shape != w.shape:
                raise ExerciseError(f"case '{name}': {what} should be a tensor of shape {tuple(w.shape)}")
        if _close(got_a, want_a) and _close(got_r, want_r):
            continue
        unmasked_a, _ = compute_gae(r, v, torch.ones_like(m), gamma, lam)
        if _close(got_a * m, want_a) and not _close(got_a, want_a):
            why = "advantages off the mask (prompt, padding) must be 0"
        elif _close(got_a * m, unmasked_a * m):
            why = ("you ran GAE over padding as if it were part of the episode: the value *after a row's last response "
                   "token* is 0, whatever sits in the padded columns")
        elif _close(got_a, want_a):
            why = "advantages are right, returns are not: returns = advantages + values (on the mask)"
        elif _close(got_a, compute_gae(r, v, m, gamma, 1.0)[0]) and lam != 1.0:
            why = "λ is not used: A_t = δ_t + γ λ A_{t+1}"
        else:
            why = ("walk backwards: δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γ λ A_{t+1}, with V and A after the last "
                   "token = 0")
        raise ExerciseError(f"case '{name}': {why}")
    print(f"✓ compute_gae: all {len(cases)} cases match the reference")


def check_ppo_policy_loss(fn) -> None:
    """Check ``fn(logprobs, old_logprobs, advantages, mask, clip_range) -> (loss, stats)`` (or just the loss) against
    :func:`rlhf_lite.ppo.ppo_policy_loss`."""
    g, mask = _ppo_cases()
    old = torch.randn(2, 5, generator=g) - 2
    cases = [("first minibatch: new = old", old.clone(), old, torch.randn(2, 5, generator=g), mask, 0.2),
             ("ratios far outside [0.8, 1.2], both signs of advantage",
              old + torch.tensor([[0.5, -0.5, 0.1, 3.0, 3.0]] * 2),
              old, torch.tensor([[1.0, -1.0, 2.0, 5.0, 5.0], [-1.0, 1.0, 1.0, -2.0, 0.5]]), mask, 0.2)]
    for name, lp, old_lp, adv, m, eps in cases:
        want, _ = ppo_policy_loss(lp, old_lp, adv, m, eps)
        try:
            got = fn(lp.clone(), old_lp.clone(), adv.clone(), m.clone(), eps)
        except Exception as e:
            _not_done(e, fn)
            raise ExerciseError(f"case '{name}': your function raised {type(e).__name__}: {e}") from None
        got = got[0] if isinstance(got, tuple) else got
        if not torch.is_tensor(got) or got.dim() != 0:
            raise ExerciseError(f"case '{name}': expected a scalar loss (or (loss, stats)), got {got!r:.80}")
        if _close(got, want):
            continue
        ratio = torch.exp(lp - old_lp)
        clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
        if _close(got, masked_mean(-adv * ratio, m)):
            why = "no clipping: take the max of −A·ρ and −A·clip(ρ, 1 − ε, 1 + ε)"
        elif _close(got, masked_mean(torch.min(-adv * ratio, -adv * clipped), m)):
            why = ("min instead of max: PPO takes the *pessimistic* bound. As a loss (negated objective) that is the "
                   "max of −A·ρ and −A·clip(ρ)")
        elif _close(got, torch.max(-adv * ratio, -adv * clipped).mean()):
            why = "you averaged over padding too: take the mean over masked (response) tokens only"
        elif _close(got, -want):
            why = "the sign is flipped: return the loss to minimise, the negated clipped objective"
        else:
            why = "expected masked_mean(max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))) with ρ = exp(logprobs − old_logprobs)"
        raise ExerciseError(f"case '{name}': got {got.item():.5f}, expected {want.item():.5f}: {why}")
    print(f"✓ ppo_policy_loss: all {len(cases)} cases match the reference")


# ---------------------------------------------------------------------------------------------
# Notebook 00: the labelers' choice model
# ---------------------------------------------------------------------------------------------
def check_prefer_prob(fn) -> None:
    """Check ``fn(score_a, score_b, temperature) -> P(a is preferred)`` against the labelers' Bradley–Terry choice
    (:func:`rlhf_lite.world.labelers.prefer_prob`)."""
    cases = [("equal scores", 0.7, 0.7, 0.1), ("a better, cool labeler", 0.9, 0.6, 0.05),
             ("a worse, noisy labeler", 0.4, 0.8, 0.5), ("large gap, T = 1", 3.0, -2.0, 1.0)]
    for name, a, b, t in cases:
        want = prefer_prob(a, b, t)
        got = _call(fn, name, a, b, t)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise ExerciseError(f"case '{name}': expected a probability (a float), got {got!r:.80}") from None
        if abs(got - want) < 1e-6:
            continue
        if abs(got - (1 - want)) < 1e-6:
            why = "the sign is flipped: a higher score for a must make a *more* likely to be chosen"
        elif abs(got - prefer_prob(a, b, 1.0)) < 1e-6:
            why = ("the temperature is ignored: divide the score difference by it (a small T means a near-certain "
                   "choice)")
        elif abs(got - prefer_prob(a, b, 1 / t)) < 1e-6:
            why = "multiply by the temperature, or divide? P = σ((s_a − s_b) / T): a hotter labeler is noisier"
        else:
            why = "expected σ((s_a − s_b) / T) = 1 / (1 + exp(−(s_a − s_b) / T))"
        raise ExerciseError(f"case '{name}' (s_a={a}, s_b={b}, T={t}): got {got:.5f}, expected {want:.5f}: {why}")
    print(f"✓ prefer_prob: all {len(cases)} cases match the reference")


# ---------------------------------------------------------------------------------------------
# Notebook 01: the prompt format
# ---------------------------------------------------------------------------------------------
def check_format_prompt(fn) -> None:
    """Check ``fn(instruction, context="") -> str`` against :func:`rlhf_lite.data.format_prompt` (Alpaca/Dolly)."""
    cases = [("no context", ("Name a river.", "")),
             ("with context", ("Summarise the text.", "The fox lives in the forest.")),
             ("whitespace-only context", ("Say hi.", "   ")),
             ("stray spaces", ("  Name a colour. ", "\nRed or blue.\n"))]
    for name, (ins, ctx) in cases:
        want = format_prompt(ins, ctx)
        got = _call(fn, name, ins, ctx)
        if got == want:
            continue
        if not isinstance(got, str):
            why = f"return the prompt as a string, got {type(got).__name__}"
        elif "### Context:" in got and "### Context:" not in want:
            why = "leave the Context section out when the context is empty (or only whitespace)"
        elif "### Context:" in want and "### Context:" not in got:
            why = "a non-empty context goes in its own '### Context:' section between instruction and response"
        elif got.rstrip("\n") == want.rstrip("\n"):
            why = ("the prompt must end with '### Response:\\n' including the newline: the model's answer starts on "
                   "the next line, exactly as in training")
        elif got.replace(" ", "") == want.replace(" ", ""):
            why = "strip surrounding whitespace from the instruction and context"
        else:
            why = ("the sections are '### Instruction:', optional '### Context:', '### Response:', separated by blank "
                   "lines")
        raise ExerciseError(f"case '{name}': {why}.\n  expected {want!r}\n  got      {got!r:.200}")
    print(f"✓ format_prompt: all {len(cases)} cases match the reference")


# ---------------------------------------------------------------------------------------------
# Notebook 06: best-of-n
# ---------------------------------------------------------------------------------------------
def check_best_of_n_kl(fn) -> None:
    """Check ``fn(n) -> float`` against :func:`rlhf_lite.best_of_n.best_of_n_kl` (log n − (n − 1)/n)."""
    import math


    for n in (1, 2, 4, 16, 64):
        want = best_of_n_kl(n)
        got = _call(fn, f"n = {n}", n)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise ExerciseError(f"n = {n}: expected a float (nats), got {got!r:.80}") from None
        if abs(got - want) < 1e-6:
            continue
        if abs(got - math.log(n)) < 1e-6:
            why = ("log n is an upper bound, not the KL: best-of-n keeps some of the sampling policy's spread; "
                   "subtract (n − 1)/n")
        elif abs(got - math.log2(n) + (n - 1) / n) < 1e-6 or abs(got - math.log2(n)) < 1e-6:
            why = "use the natural log: KL is in nats here"
        else:
            why = "expected log n − (n − 1)/n (Stiennon et al. 2020, App. G)"
        raise ExerciseError(f"n = {n}: got {got:.5f}, expected {want:.5f}: {why}")
    print("✓ best_of_n_kl: all 5 cases match the reference")


# ---------------------------------------------------------------------------------------------
# Notebook 07: DPO and GRPO
# ---------------------------------------------------------------------------------------------
def check_dpo_loss(fn) -> None:
    """Check ``fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)`` -> loss
    (or (loss, stats)) against :func:`rlhf_lite.dpo.dpo_loss`."""
    g = torch.Generator().manual_seed(0)
    cases = [("at the start: policy = reference", *(torch.full((3,), -4.0),) * 2, *(torch.full((3,), -4.0),) * 2, 0.1),
             ("a batch of 4, β = 0.1", *(torch.randn(4, generator=g) * 5 - 20 for _ in range(4)), 0.1),
             ("β = 0.5, the reference prefers the rejected answer", torch.tensor([-10.0, -12.0]),
              torch.tensor([-11.0, -9.0]),
              torch.tensor([-12.0, -12.5]), torch.tensor([-9.0, -8.0]), 0.5)]
    for name, pc, pr, rc, rr, beta in cases:
        want, _ = dpo_loss(pc, pr, rc, rr, beta)
        got = _call(fn, name, pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta)
        got = got[0] if isinstance(got, tuple) else got
        if not torch.is_tensor(got) or got.dim() != 0:
            raise ExerciseError(f"case '{name}': expected a scalar loss (or (loss, stats)), got {got!r:.80}")
        if _close(got, want):
            continue
        if _close(got, dpo_loss(pr, pc, rr, rc, beta)[0]):
            why = ("chosen and rejected are swapped (or the sign of the margin is): the loss is −log σ(r̂_chosen − "
                   "r̂_rejected)")
        elif _close(got, dpo_loss(pc, pr, torch.zeros_like(rc), torch.zeros_like(rr), beta)[0]):
            why = "the reference is missing: the implicit reward is β·(log π − log π_ref), not β·log π"
        elif _close(got, dpo_loss(pc, pr, rc, rr, 1.0)[0]) and beta != 1.0:
            why = "β is not used: multiply each log-ratio by β"
        elif _close(got, -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).sum()):
            why = "sum instead of mean over the batch"
        elif _close(got, F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()):
            why = "return the loss to minimise: −log σ(margin), with the minus sign"
        else:
            why = "expected mean −log σ(β·((π_c − ref_c) − (π_r − ref_r)))"
        raise ExerciseError(f"case '{name}': got {got.item():.5f}, expected {want.item():.5f}: {why}")
    print(f"✓ dpo_loss: all {len(cases)} cases match the reference")


def check_group_advantages(fn) -> None:
    """Check ``fn(scores [B], group_size) -> advantages [B]`` against :func:`rlhf_lite.grpo.group_advantages`
    (centred on each group's mean, divided by its unbiased std + 1e-4)."""
    cases = [("one group of 4", torch.tensor([0.1, 0.5, -0.2, 0.4]), 4),
             ("three groups of 2, one of them all alike", torch.tensor([1.0, -1.0, 0.3, 0.3, 2.0, 0.0]), 2),
             ("two groups of 4 on different scales", torch.tensor([10.0, 12.0, 11.0, 9.0, 0.1, 0.2, 0.0, 0.3]), 4)]
    for name, scores, G in cases:
        want = group_advantages(scores, G)
        got = _tensor_call(fn, name, want.shape, scores.clone(), G)
        if torch.allclose(got.float(), want, atol=1e-3):
            continue
        batch = (scores - scores.mean()) / (scores.std() + 1e-4)
        if torch.allclose(got.float(), batch, atol=1e-3):
            why = "you normalised over the whole batch: each response is compared with its own group (same prompt) only"
        elif torch.allclose(got.float(), group_advantages(scores, G, scale=False), atol=1e-3):
            why = "centred but not scaled: divide by the group's standard deviation (+ 1e-4)"
        elif torch.allclose(got.float(), (scores.view(-1, G) - scores.view(-1, G).mean(1, keepdim=True)).div(
                scores.view(-1, G).std(1, unbiased=False, keepdim=True) + 1e-4).reshape(-1), atol=1e-3):
            why = "use the unbiased standard deviation (torch.std's default), as the reference does"
        elif torch.isnan(got).any():
            why = "a group whose scores are all equal has std 0: add 1e-4 to the std so its advantages are 0, not NaN"
        else:
            why = ("expected (r − mean of its group) / (std of its group + 1e-4), groups being consecutive runs of "
                   "group_size")
        raise ExerciseError(f"case '{name}': got {[round(x, 3) for x in got.tolist()]}, expected "
                            f"{[round(x, 3) for x in want.tolist()]}: {why}")
    print(f"✓ group_advantages: all {len(cases)} cases match the reference")


# ---------------------------------------------------------------------------------------------
# Notebook 08: our comparisons in TRL's format
# ---------------------------------------------------------------------------------------------
def check_preference_rows(fn) -> None:
    """Check ``fn(records) -> [{"prompt", "chosen", "rejected"}]`` against
    :func:`rlhf_lite.course.trl_bridge.preference_rows` (every ranked pair, best pairs first, ties skipped)."""
    cases = [("K = 3, ranking [2, 0, 1]", [{"prompt": "P: ", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}]),
             ("K = 4 with a tie [[1, 3], 0, 2]", [{"prompt": "Q: ", "responses": ["w", "x", "y", "z"],
                                                   "ranking": [[1, 3], 0, 2]}]),
             ("two records", [{"prompt": "A", "responses": ["1", "2"], "ranking": [1, 0]},
                              {"prompt": "B", "responses": ["3", "4", "5"], "ranking": [0, 1, 2]}])]
    for name, records in cases:
        want = preference_rows(records)
        got = _call(fn, name, records)
        if not isinstance(got, list) or not all(isinstance(r, dict) and {"prompt", "chosen", "rejected"} <= set(r)
                                                 for r in got):
            raise ExerciseError(f"case '{name}': return a list of dicts with keys 'prompt', 'chosen', 'rejected'")
        got = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in got]
        if got == want:
            continue
        flip = [{"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]} for r in want]
        if got == flip:
            why = "chosen and rejected are swapped: the ranking lists the best answer first"
        elif len(got) < len(want) and all(r in want for r in got):
            why = (f"{len(got)} rows instead of {len(want)}: every pair of a ranking is a comparison (C(K,2)), not "
                   "only neighbours")
        elif len(got) > len(want):
            why = "too many rows: answers tied in the ranking (listed together) give no comparison"
        elif sorted(map(str, got)) == sorted(map(str, want)):
            why = "right rows, wrong order: go through the ranking best first, as ranking_to_pairs does"
        else:
            why = "expected one row per (winner, loser) pair of each ranking, with the record's prompt"
        raise ExerciseError(f"case '{name}': {why}.\n  expected {want}\n  got      {got!r:.300}")
    print(f"✓ preference_rows: all {len(cases)} cases match the reference")
