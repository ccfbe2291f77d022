"""`rlhf_lite.course.diagnose`: the gold difference split by criterion, the reward model's agreement per criterion,
and the fact-recall probe."""
import random

import pytest
import torch
from transformers import GPT2LMHeadModel

from rlhf_lite.course.diagnose import (
    LENGTH,
    agreement_by_criterion,
    deciding_criterion,
    fact_recall,
    gold_difference_parts,
)
from rlhf_lite.models import load_base
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


def test_agreement_by_criterion_counts_a_judge_against_the_gold_panel(world):
    rng = random.Random(1)
    records = []
    for t in _answerable(world, 20):
        responses = [t.response, garble(t.response), "Nobody asked. " + t.response,
                     corrupt(world.kb, t, "wrong_fact", rng)]
        records.append({"prompt_id": t.prompt_id, "prompt": t.instruction, "responses": responses,
                        "finished": [True] * len(responses)})

    def gold(rec):
        t = world.tasks_by_id[rec["prompt_id"]]
        return [world.panel.gold_score(t.instruction, t.context, r, True, task=t) for r in rec["responses"]]

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
