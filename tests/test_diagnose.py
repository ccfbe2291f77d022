"""`rlhf_lite.course.diagnose`: the gold difference split by criterion, the reward model's agreement per criterion,
and the fact-recall and context-recall probes."""
import math
import random

import pytest
import torch
from transformers import GPT2LMHeadModel

from rlhf_lite.course.diagnose import (
    LENGTH,
    accuracy_difference,
    addresses_task,
    agreement_by_criterion,
    context_recall,
    deciding_criterion,
    fact_recall,
    gold_difference_parts,
    off_task,
    reward_and_gold,
    reward_gold_frontier,
)
from rlhf_lite.feedback import expected_agreement
from rlhf_lite.models import Generation, load_base
from rlhf_lite.world.fluency import garble
from rlhf_lite.world.tasks import RUDE_PHRASES, corrupt


def _answerable(world, n):
    return [t for t in world.splits["validation"] if not t.meta.get("unanswerable")][:n]


def test_parts_sum_to_the_gold_difference(world):
    rng = random.Random(0)
    for t in _answerable(world, 30):
        for bad in (corrupt(world.kb, t, rng.choice(["wrong_fact", "rambling", "unending", "bad_format"]), rng),
                    garble(t.response), "Nobody asked.", ""):
            for fa, fb in ((True, True), (True, False)):
                parts = gold_difference_parts(world, t, t.response, bad, fa, fb)
                gold = world.panel.gold_score(t.instruction, t.context, t.response, fa, task=t) - \
                    world.panel.gold_score(t.instruction, t.context, bad, fb, task=t)
                assert sum(parts.values()) == pytest.approx(gold, abs=1e-9)
                assert set(parts) == {*world.panel.labelers[0].weights, "fluent", LENGTH}


def test_the_deciding_criterion_is_what_was_broken(world):
    t = next(t for t in _answerable(world, 200) if len(t.response.split()) >= 4)
    assert deciding_criterion(gold_difference_parts(world, t, t.response, garble(t.response))) == "fluent"
    rude = RUDE_PHRASES[0] + " " + t.response
    assert deciding_criterion(gold_difference_parts(world, t, t.response, rude)) == "polite"
    cut = gold_difference_parts(world, t, t.response, t.response, True, False)  # same words, no EOS
    assert deciding_criterion(cut) == "ended" and cut["correct"] == 0 and cut["ended"] > 0
    # the direction follows the total: swapping the answers flips every part and keeps the deciding criterion
    swapped = gold_difference_parts(world, t, garble(t.response), t.response)
    assert deciding_criterion(swapped) == "fluent" and swapped["fluent"] < 0


def test_deciding_criterion_by_hand():
    assert deciding_criterion({"correct": 0.3, "fluent": -0.1, "polite": 0.2}) == "correct"
    assert deciding_criterion({"correct": 0.1, "fluent": -0.4, "polite": 0.05}) == "fluent"  # total is negative


def _records(world, n=20):
    """Each answerable validation task's reference and three broken versions of it, as comparison records."""
    rng = random.Random(1)
    records = []
    for t in _answerable(world, n):
        responses = [t.response, garble(t.response), "Nobody asked. " + t.response,
                     corrupt(world.kb, t, "wrong_fact", rng)]
        records.append({"prompt_id": t.prompt_id, "prompt": t.instruction, "responses": responses,
                        "finished": [True] * len(responses)})
    return records


def _gold(world):
    def gold(rec):
        t = world.tasks_by_id[rec["prompt_id"]]
        return [world.panel.gold_score(t.instruction, t.context, r, True, task=t) for r in rec["responses"]]
    return gold


def test_agreement_by_criterion_counts_a_judge_against_the_gold_panel(world):
    records, gold = _records(world), _gold(world)
    right = agreement_by_criterion(world, records, gold)
    assert right["agreement"] == 1.0 and right["pairs"] > 20
    assert sum(v["pairs"] for v in right["by_criterion"].values()) == right["pairs"]
    assert sum(v["share"] for v in right["by_criterion"].values()) == pytest.approx(1.0)
    assert {"fluent", "polite"} <= set(right["by_criterion"])
    assert all(v["mean_gap"] >= 0.1 for v in right["by_criterion"].values())
    wrong = agreement_by_criterion(world, records, lambda rec: [-s for s in gold(rec)])
    assert wrong["agreement"] == 0.0 and wrong["pairs"] == right["pairs"]
    flat = agreement_by_criterion(world, records, lambda rec: [0.0] * len(rec["responses"]))
    assert flat["agreement"] == 0.5  # ties count half
    # a judge that reads only fluency: right on the pairs fluency decides, blind elsewhere
    fluency = agreement_by_criterion(world, records, lambda rec: [0.0, -1.0, 0.0, 0.0])
    assert fluency["by_criterion"]["fluent"]["agreement"] == 1.0
    assert fluency["by_criterion"]["polite"]["agreement"] == 0.5
    assert not right["by_criterion"]["polite"]["misses"] and not fluency["by_criterion"]["polite"]["misses"]  # ties
    miss = wrong["by_criterion"]["polite"]["misses"]  # the negated judge misses every pair, better answer first
    assert len(miss) == wrong["by_criterion"]["polite"]["pairs"]
    assert all(m["worse"].startswith("Nobody asked.") for m in miss)
    assert [m["gap"] for m in miss] == sorted((m["gap"] for m in miss), reverse=True)
    assert agreement_by_criterion(world, records, gold, min_gap=10.0)["pairs"] == 0


def test_fact_recall_separates_a_model_that_learned_the_world_from_one_that_did_not(world):
    lm, tok = load_base("tiny")
    lm.train()
    learned = fact_recall(lm, tok, world, n_facts=40)
    assert lm.training  # probed in eval mode (no dropout), then put back as it was
    assert learned["all"] >= 0.9  # the shipped model was pretrained on the world's corpus
    assert {"facts", "recall", "chance"} <= set(next(iter(v for k, v in learned.items() if k != "all")))
    torch.manual_seed(0)
    blank = fact_recall(GPT2LMHeadModel(lm.config).eval(), tok, world, n_facts=40)
    assert blank["all"] < 0.5  # random weights: about chance (one in 3 to 15 values)


def test_context_recall_measures_reading_not_knowledge(world):
    lm, tok = load_base("tiny")
    lm.train()
    read = context_recall(lm, tok, world, n_people=30)
    assert lm.training  # probed in eval mode, then put back as it was
    assert set(read) == {"passages", "name_copy", "value_recall", "value_chance"} and read["passages"] == 30
    assert 0.0 <= read["name_copy"] <= 1.0
    assert 1 / 40 < read["value_chance"] < 1 / 4  # every value of the relation: 10 to 15, ages more
    assert read["value_recall"] > read["value_chance"]  # the shipped model reads some values (200 passages: 0.22)
    assert context_recall(lm, tok, world, n_people=30) == read  # the same passages for the same seed
    torch.manual_seed(0)
    blank = context_recall(GPT2LMHeadModel(lm.config).eval(), tok, world, n_people=30)
    assert blank["value_chance"] == read["value_chance"]
    assert blank["name_copy"] < 0.01  # random weights: a surname of 2-4 tokens out of 2,048 each
    assert blank["value_recall"] < 0.3  # and about chance


def test_accuracy_difference_is_paired_and_zero_against_itself(world):
    records, gold = _records(world), _gold(world)
    held = world.panel.held_out
    same = accuracy_difference(world, records, gold, gold, held)
    assert same["difference"] == 0.0 and same["difference_ci"] == [0.0, 0.0]
    assert same["a"] == pytest.approx(sum(expected_agreement(world, records, gold, lab) for lab in held) / len(held))
    assert same["prompts"] == 20 and same["pairs"] == 20 * 6  # four different answers: C(4,2) pairs each
    worse = accuracy_difference(world, records, gold, lambda rec: [-s for s in gold(rec)], held)
    assert worse["a"] + worse["b"] == pytest.approx(1.0)  # the negated judge picks the other answer of every pair
    assert worse["difference"] == pytest.approx(worse["a"] - worse["b"]) and worse["difference_ci"][0] > 0
    lo, hi = accuracy_difference(world, records, gold, lambda rec: [0.0, 0.0, 0.0, 0.0], held)["difference_ci"]
    assert 0 < lo <= hi  # the gold panel's judgement beats a coin on these pairs, outside noise


def test_reward_gold_frontier_by_hand():
    # two tasks, two SFT samples each: best-of-1 takes sample 0, best-of-2 the higher reward per task
    samples = [{"reward": [0.0, 1.0], "gold": [0.5, 0.9]},
               {"reward": [2.0, 0.0], "gold": [0.7, 0.1]}]
    policies = {"honest": {"reward": [2.0, 1.0], "gold": [0.7, 0.9]},  # = best-of-2 in both
                "hacker": {"reward": [3.0, 1.0], "gold": [0.1, 0.1]},  # more reward, less gold
                "timid": {"reward": [0.0, 1.0], "gold": [0.5, 0.9]}}   # = best-of-1
    f = reward_gold_frontier(samples, policies, ns=(1, 2))
    assert f["best_of"][1] == {"reward": 0.5, "gold": pytest.approx(0.7), "kl_bound": 0.0, "pick": [0, 0]}
    assert f["best_of"][2]["pick"] == [1, 0]
    # the gold panel picking: task 0 sample 1 (0.7 > 0.5), task 1 sample 0 (0.9 > 0.1), whatever the reward says
    assert f["gold_best_of"][2] == {"reward": 1.5, "gold": pytest.approx(0.8), "pick": [1, 0]}
    assert f["gold_best_of"][1]["pick"] == [0, 0]
    wrong = reward_gold_frontier([{"reward": [1.0], "gold": [0.2]}, {"reward": [0.0], "gold": [0.9]}], {}, ns=(2,))
    assert wrong["best_of"][2]["pick"] == [0] and wrong["gold_best_of"][2] == {"reward": 0.0, "gold": 0.9, "pick": [1]}
    assert f["best_of"][2]["reward"] == 1.5 and f["best_of"][2]["gold"] == pytest.approx(0.8)
    assert f["best_of"][2]["kl_bound"] == pytest.approx(math.log(2) - 0.5)
    honest, hacker, timid = (f["policies"][k] for k in ("honest", "hacker", "timid"))
    assert honest["nearest_n"] == 2 and honest["gold_vs_nearest"] == pytest.approx(0.0)
    assert honest["gold_vs_nearest_ci"] == pytest.approx([0.0, 0.0])
    assert hacker["reward"] == 2.0 and hacker["nearest_n"] == 2
    assert hacker["gold_vs_nearest"] == pytest.approx(-0.7)  # (0.1 − 0.7 + 0.1 − 0.9) / 2
    assert hacker["gold_vs_nearest_ci"][1] < 0  # below the frontier, outside noise
    assert timid["nearest_n"] == 1 and timid["gold_vs_nearest"] == pytest.approx(0.0)
    assert honest["gold_vs_sft"] == pytest.approx(0.1) and hacker["gold_vs_sft"] == pytest.approx(-0.6)
    with pytest.raises(ValueError, match="best-of-4 needs 4 samples"):
        reward_gold_frontier(samples, policies, ns=(1, 4))


def test_reward_and_gold_scores_each_sample(world):
    from rlhf_lite.config import RewardConfig
    from rlhf_lite.reward import build_reward_model

    model, tok = load_base("tiny")
    rm = build_reward_model(load_base("tiny")[0], RewardConfig())
    tasks = world.splits["test"][:6]
    a = reward_and_gold(model, tok, rm, tok, world, tasks, max_new_tokens=8, seed=3)
    b = reward_and_gold(model, tok, rm, tok, world, tasks, max_new_tokens=8, seed=3)
    assert len(a["reward"]) == len(a["gold"]) == len(a["gens"]) == 6
    assert a == b  # seeded: the same samples, the same scores
    assert all(isinstance(g, float) for g in a["gold"])


def test_addresses_task_by_hand():
    from rlhf_lite.world.tasks import Task

    def task(**meta):
        return Task("Which towns appear in the text?", "", "Larton, Zumton.", "information_extraction", meta=meta)

    towns = task(expected=["Larton", "Zumton"], format="short_list", valid_items=["Larton", "Zumton"],
                 topic=["Larton", "Zumton"])
    assert addresses_task(towns, "Larton.")  # part of the expected content
    assert not addresses_task(towns, "old_miller.") and not addresses_task(towns, "")
    jobs = task(expected=[], format="n_items:2", valid_items=["baker", "miller"], topic=["baker", "miller"])
    assert addresses_task(jobs, "- The baker\n- a singer")  # one valid item ("the" dropped, as the panel does)
    assert not addresses_task(jobs, "My cousin says the best soup is the one you make yourself.")
    story = task(expected=["Luhea"], topic=["Luhea Fuswell", "toad"])
    assert addresses_task(story, "The toad sat by the river.")  # a word of the topic, not the expected name
    assert not addresses_task(story, "The weather was strange last week.")
    assert addresses_task(task(expected=[]), "Anything at all.")  # nothing to take up: every answer does


def test_off_task_splits_the_gold_and_the_wins(world):
    tasks = _answerable(world, 40)
    refs = [Generation(t.response, [], True) for t in tasks]
    aside = [Generation("By the way, the weather was strange last week.", [], True) for _ in tasks]
    r = off_task(world, tasks, refs, against=aside)
    assert r["share"] == 0 and r["gold_off_task"] is None and r["gold_on_task"] > 0.9
    assert r["wins"] > 0.9 and r["wins_off_task"] == 0  # the references win, and never off-task
    r = off_task(world, tasks, aside, against=refs)
    assert r["share"] == 1 and r["gold_on_task"] is None and r["gold_off_task"] < 0.9
    assert r["wins"] < 0.1 and r["wins_off_task"] == pytest.approx(1.0)  # what little it wins, it wins off-task
    mixed = refs[:20] + aside[20:]
    r = off_task(world, tasks, mixed)
    assert r["share"] == pytest.approx(0.5) and r["gold_off_task"] < r["gold_on_task"]
