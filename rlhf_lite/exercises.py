"""Checkers for the notebooks' implement-it-yourself exercises.

Each ``check_*`` calls the learner's function on several cases, compares it with the package's
reference, and either prints a success line or raises :class:`ExerciseError` explaining the first
mismatch in words (and, where a common mistake explains it, naming that mistake).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX, build_sft_example, format_prompt
from .feedback import ranking_to_pairs
from .reward import pairwise_loss, ranking_loss
from .sft import sft_loss


class ExerciseError(AssertionError):
    """The learner's function disagrees with the reference; the message says where and why."""


def _close(a, b) -> bool:
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4)


def _scalar_call(fn, name: str, *args) -> torch.Tensor:
    """Call the learner's loss on one case; a crash or a non-scalar result becomes an explained error."""
    try:
        got = fn(*args)
    except Exception as e:
        raise ExerciseError(f"case '{name}': your function raised {type(e).__name__}: {e}") from None
    if not torch.is_tensor(got) or got.dim() != 0:
        raise ExerciseError(f"case '{name}': expected a scalar tensor, got {got!r:.80}")
    return got


def _sft_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    cases = [("one sequence, last two tokens supervised", torch.randn(1, 4, 5, generator=g),
              torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1]]))]
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 4, 0, IGNORE_INDEX], [IGNORE_INDEX, 1, 1, 6, IGNORE_INDEX, IGNORE_INDEX]])
    cases.append(("a right-padded batch of two", torch.randn(2, 6, 7, generator=g), labels))
    cases.append(("every token after the first supervised", torch.randn(3, 5, 11, generator=g), torch.randint(0, 11, (3, 5), generator=g)))
    return cases


def check_sft_loss(fn) -> None:
    """Check ``fn(logits [B,T,V], labels [B,T]) -> scalar`` against :func:`rlhf_lite.sft.sft_loss`."""
    for name, logits, labels in _sft_cases():
        want = sft_loss(logits, labels)
        try:
            got = fn(logits.clone(), labels.clone())
        except Exception as e:
            hint = " Labels of -100 must be skipped (cross_entropy's ignore_index=-100)." if "index" in str(e).lower() or \
                "target" in str(e).lower() else ""
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
        got = fn(tokenizer, prompt, response, max_length)
        where = f"prompt {prompt[:40]!r}…, response {response!r}"
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
                                "pad == eos for GPT-2: it is what teaches the model to stop (trl#1623)")
        if any(l != IGNORE_INDEX for l in got["labels"][:n_prompt]):
            raise ExerciseError(f"{where}: prompt positions must have label -100 (no loss on the prompt)")
        if got["labels"][n_prompt:] == want["input_ids"][n_prompt + 1:] + [IGNORE_INDEX] or got["labels"] == want["input_ids"][1:] + [IGNORE_INDEX]:
            raise ExerciseError(f"{where}: labels look shifted by one. Leave labels aligned with input_ids: the loss "
                                "function does the shift")
        if got["labels"] != want["labels"]:
            raise ExerciseError(f"{where}: labels should be -100 on the prompt and equal to input_ids on the response and EOS")
    print(f"✓ build_sft_example: all {len(cases)} cases match the reference")


def check_pairwise_loss(fn) -> None:
    """Check ``fn(chosen_rewards [B], rejected_rewards [B]) -> scalar`` against :func:`rlhf_lite.reward.pairwise_loss`."""
    cases = [("one pair, chosen ahead by 1", torch.tensor([1.0]), torch.tensor([0.0])),
             ("a batch of three with a wrong-way pair", torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0])),
             ("large margins (numerical stability)", torch.tensor([60.0, -60.0]), torch.tensor([-60.0, 60.0]))]
    for name, c, r in cases:
        want = pairwise_loss(c, r)
        got = _scalar_call(fn, name, c.clone(), r.clone())
        if _close(got, want):
            continue
        if _close(got, pairwise_loss(r, c)):
            why = "the sign is flipped: the loss must be small when the chosen reward is the larger one, −log σ(r_c − r_r)"
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
    """Check ``fn(rewards [K], ranking) -> scalar`` against :func:`rlhf_lite.reward.ranking_loss` (eq. 1 of InstructGPT)."""
    cases = [("K = 3, ranked best to worst 2, 1, 0", torch.tensor([0.0, 1.0, 3.0]), [2, 1, 0]),
             ("K = 4, a ranking that disagrees with the rewards", torch.tensor([0.5, -1.0, 2.0, 0.0]), [1, 3, 0, 2]),
             ("K = 2", torch.tensor([0.3, 0.1]), [0, 1])]
    for name, rewards, ranking in cases:
        want = ranking_loss(rewards, ranking)
        got = _scalar_call(fn, name, rewards.clone(), list(ranking))
        if _close(got, want):
            continue
        k = len(ranking)
        adjacent = -F.logsigmoid(torch.stack([rewards[ranking[i]] - rewards[ranking[i + 1]] for i in range(k - 1)])).mean()
        if _close(got, ranking_loss(rewards, list(reversed(ranking)))):
            why = "the order is reversed: ranking lists indices from best to worst, so ranking[0] wins every pair it is in"
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
