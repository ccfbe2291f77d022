import pytest
import torch
import torch.nn.functional as F

from rlhf_lite.course.exercises import ExerciseError, check_build_sft_example, check_sft_loss
from rlhf_lite.data import build_sft_example
from rlhf_lite.models import load_base
from rlhf_lite.sft import sft_loss


def test_reference_passes(capsys):
    check_sft_loss(sft_loss)
    check_build_sft_example(build_sft_example, load_base("tiny")[1])
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("wrong,message", [
    (lambda lg, lb: F.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=-100), "next"),
    (lambda lg, lb: F.cross_entropy(lg[:, :-1].reshape(-1, lg.size(-1)), lb[:, 1:].reshape(-1), ignore_index=-100,
                                    reduction="sum"), "summed"),
    (lambda lg, lb: F.cross_entropy(lg[:, :-1].reshape(-1, lg.size(-1)), lb[:, 1:].clamp(min=0).reshape(-1)),
     "ignore_index"),
    (lambda lg, lb: torch.tensor([1.0]), "scalar"),
])
def test_sft_loss_mistakes_are_explained(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        check_sft_loss(wrong)


def test_build_sft_example_mistakes_are_explained():
    _, tok = load_base("tiny")

    def no_eos(tok, prompt, response, max_length):
        ex = build_sft_example(tok, prompt, response, max_length)
        return {k: v[:-1] for k, v in ex.items()}

    def eos_masked(tok, prompt, response, max_length):  # the pad == eos bug
        ex = build_sft_example(tok, prompt, response, max_length)
        ex["labels"] = [l if l != tok.pad_token_id else -100 for l in ex["labels"]]
        return ex

    def prompt_supervised(tok, prompt, response, max_length):
        ex = build_sft_example(tok, prompt, response, max_length)
        ex["labels"] = list(ex["input_ids"])
        return ex

    for fn, message in [(no_eos, "followed by the EOS"), (eos_masked, "EOS label is -100"),
                        (prompt_supervised, "prompt positions must have label -100")]:
        with pytest.raises(ExerciseError, match=message):
            check_build_sft_example(fn, tok)


def test_reward_checkers_accept_the_reference(capsys):
    from rlhf_lite.course.exercises import check_pairwise_loss, check_ranking_loss
    from rlhf_lite.reward import pairwise_loss, ranking_loss

    check_pairwise_loss(pairwise_loss)
    check_ranking_loss(ranking_loss)
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("wrong,message", [
    (lambda c, r: -F.logsigmoid(r - c).mean(), "sign is flipped"),
    (lambda c, r: -F.logsigmoid(c - r).sum(), "summed"),
    (lambda c, r: -torch.log(torch.sigmoid(c - r)).mean(), "logsigmoid"),
    (lambda c, r: F.logsigmoid(c - r).mean(), "minus sign"),
])
def test_pairwise_loss_mistakes_are_explained(wrong, message):
    from rlhf_lite.course.exercises import check_pairwise_loss

    with pytest.raises(ExerciseError, match=message):
        check_pairwise_loss(wrong)


def _adjacent_only(rewards, ranking):
    return -torch.stack([F.logsigmoid(rewards[a] - rewards[b]) for a, b in zip(ranking, ranking[1:])]).mean()


def _reversed(rewards, ranking):
    from rlhf_lite.reward import ranking_loss

    return ranking_loss(rewards, ranking[::-1])


def _summed(rewards, ranking):
    from itertools import combinations

    return -sum(F.logsigmoid(rewards[w] - rewards[l]) for w, l in combinations(ranking, 2))


@pytest.mark.parametrize("wrong,message",
                         [(_adjacent_only, "neighbouring"), (_reversed, "reversed"), (_summed, "summed")])
def test_ranking_loss_mistakes_are_explained(wrong, message):
    from rlhf_lite.course.exercises import check_ranking_loss

    with pytest.raises(ExerciseError, match=message):
        check_ranking_loss(wrong)


@pytest.mark.parametrize("wrong,message", [
    (lambda r: [(b, a) for i, a in enumerate(r) for b in r[i + 1:]], "swapped"),
    (lambda r: list(zip(r, r[1:])), "neighbouring"),
    (lambda r: [(a, b) for a in r for b in r if a != b], "too many"),
])
def test_ranking_to_pairs_mistakes_are_explained(wrong, message, capsys):
    from rlhf_lite.course.exercises import check_ranking_to_pairs
    from rlhf_lite.feedback import ranking_to_pairs

    check_ranking_to_pairs(ranking_to_pairs)
    with pytest.raises(ExerciseError, match=message):
        check_ranking_to_pairs(wrong)


def test_ppo_checkers_accept_the_reference_and_explain_mistakes(capsys):
    from rlhf_lite.course.exercises import check_compute_gae, check_kl_penalized_rewards, check_ppo_policy_loss
    from rlhf_lite.ppo import compute_gae, kl_penalized_rewards, ppo_policy_loss
    from rlhf_lite.rollout import masked_mean

    check_kl_penalized_rewards(kl_penalized_rewards)
    check_compute_gae(compute_gae)
    check_ppo_policy_loss(ppo_policy_loss)
    assert capsys.readouterr().out.count("✓") == 3

    def score_on_last_column(scores, lp, ref, mask, beta):
        r = -beta * (lp - ref) * mask
        r[:, -1] += scores
        return r

    def kl_sign_flipped(scores, lp, ref, mask, beta):
        return kl_penalized_rewards(scores, ref, lp, mask, beta)

    for wrong, msg in ((score_on_last_column, "last \\*masked\\* token"), (kl_sign_flipped, "wrong sign")):
        with pytest.raises(ExerciseError, match=msg):
            check_kl_penalized_rewards(wrong)

    def gae_without_mask(r, v, mask, gamma, lam):
        a, _ = compute_gae(r, v, torch.ones_like(mask), gamma, lam)
        return a * mask, (a + v) * mask

    def gae_no_lambda(r, v, mask, gamma, lam):
        return compute_gae(r, v, mask, gamma, 1.0)

    for wrong, msg in ((gae_without_mask, "padding"), (gae_no_lambda, "λ is not used")):
        with pytest.raises(ExerciseError, match=msg):
            check_compute_gae(wrong)

    def unclipped(lp, old, adv, mask, eps):
        return masked_mean(-adv * torch.exp(lp - old), mask)

    def with_min(lp, old, adv, mask, eps):
        ratio = torch.exp(lp - old)
        return masked_mean(torch.min(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)), mask)

    def over_padding(lp, old, adv, mask, eps):
        ratio = torch.exp(lp - old)
        return torch.max(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean()

    for wrong, msg in ((unclipped, "no clipping"), (with_min, "min instead of max"), (over_padding, "padding")):
        with pytest.raises(ExerciseError, match=msg):
            check_ppo_policy_loss(wrong)


def test_new_checkers_accept_the_reference(capsys):
    from rlhf_lite.best_of_n import best_of_n_kl
    from rlhf_lite.course.exercises import (
        check_best_of_n_kl,
        check_dpo_loss,
        check_format_prompt,
        check_group_advantages,
        check_prefer_prob,
    )
    from rlhf_lite.data import format_prompt
    from rlhf_lite.dpo import dpo_loss
    from rlhf_lite.grpo import group_advantages
    from rlhf_lite.world.labelers import prefer_prob

    check_prefer_prob(prefer_prob)
    check_format_prompt(format_prompt)
    check_best_of_n_kl(best_of_n_kl)
    check_dpo_loss(dpo_loss)
    check_dpo_loss(lambda *a: dpo_loss(*a)[0])  # the loss alone is fine too
    check_group_advantages(group_advantages)
    from rlhf_lite.course.exercises import check_preference_rows
    from rlhf_lite.course.trl_bridge import preference_rows

    check_preference_rows(preference_rows)
    assert capsys.readouterr().out.count("✓") == 7


def _bt(a, b, t):
    import math
    return 1 / (1 + math.exp(-(a - b) / t))


@pytest.mark.parametrize("check,wrong,message", [
    ("check_prefer_prob", lambda a, b, t: _bt(b, a, t), "sign is flipped"),
    ("check_prefer_prob", lambda a, b, t: _bt(a, b, 1.0), "temperature is ignored"),
    ("check_format_prompt", lambda i,
     c="": f"### Instruction:\n{i.strip()}\n\n### Context:\n{c.strip()}\n\n### Response:\n",
     "leave the Context section out"),
    ("check_format_prompt", lambda i, c="": f"### Instruction:\n{i.strip()}\n\n### Response:", "including the newline"),
    ("check_best_of_n_kl", lambda n: __import__("math").log(n), "upper bound"),
    ("check_dpo_loss", lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pr - rr) - (pc - rc))).mean(), "swapped"),
    ("check_dpo_loss", lambda pc, pr, rc, rr, b: -F.logsigmoid(b * (pc - pr)).mean(), "reference is missing"),
    ("check_dpo_loss", lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rc) - (pr - rr))).sum(),
     "sum instead of mean"),
    ("check_group_advantages", lambda s, g: (s - s.mean()) / (s.std() + 1e-4), "whole batch"),
    ("check_group_advantages", lambda s, g: (s.view(-1, g) - s.view(-1, g).mean(1, keepdim=True)).reshape(-1),
     "not scaled"),
    ("check_group_advantages", lambda s, g: ((s.view(-1, g) - s.view(-1, g).mean(1, keepdim=True))
                                             / s.view(-1, g).std(1, keepdim=True)).reshape(-1), "std 0"),
    ("check_preference_rows",
     lambda recs: [{"prompt": r["prompt"], "chosen": r["responses"][a], "rejected": r["responses"][b]}
                                            for r in recs for a, b in zip(r["ranking"], r["ranking"][1:])
                                            if isinstance(a, int) and isinstance(b, int)], "not only neighbours"),
    ("check_preference_rows",
     lambda recs: [{"prompt": r["prompt"], "chosen": r["responses"][l], "rejected": r["responses"][w]}
                                            for r in recs for w, l in __import__("rlhf_lite.feedback", fromlist=["x"])
                                            .ranking_to_pairs(r["ranking"])], "swapped"),
])
def test_new_checkers_explain_plausible_mistakes(check, wrong, message):
    import rlhf_lite.course.exercises as ex

    with pytest.raises(ExerciseError, match=message):
        getattr(ex, check)(wrong)


def test_a_stub_gets_a_friendly_message():
    from rlhf_lite.course.exercises import check_dpo_loss

    def my_dpo_loss(*args):
        raise NotImplementedError

    with pytest.raises(ExerciseError, match="my_dpo_loss is not implemented yet"):
        check_dpo_loss(my_dpo_loss)
