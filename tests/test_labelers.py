import math
import random
from collections import Counter

import pytest

from rlhf_lite.world import CORRUPTIONS, CRITERIA, Task
from rlhf_lite.world.labelers import criteria, plackett_luce, prefer_prob


@pytest.fixture(scope="module")
def qa(world):
    """A hand-made open QA task about a real person of the world."""
    kb = world.kb
    p = kb.people[0]
    town = kb.get(p, "lives_in")
    other = next(t for t in kb.towns if t != town)
    task = Task(f"Where does {p} live?", "", f"{p} lives in {town}.", "open_qa",
                meta={"expected": [town], "expect": "all", "format": None, "topic": [p, town], "max_words": 14})
    return task, p, town, other


def crit(world, task, response, finished=None):
    return criteria(task, response, world.extractor, world.kb_index, world.kb_subjects, finished)


def test_good_answer_meets_every_criterion(world, qa):
    task, p, town, _ = qa
    assert crit(world, task, f"{p} lives in {town}.", True) == dict.fromkeys(CRITERIA, 1.0)


def test_each_flaw_hits_its_criterion(world, qa):
    task, p, town, other = qa
    wrong = crit(world, task, f"{p} lives in {other}.")
    assert wrong["correct"] == 0.0 and wrong["truthful"] == 0.5  # one false claim: 1 / (1 + 1)
    assert crit(world, task, f"Look it up yourself. {p} lives in {town}.")["polite"] == 0.0
    ramble = f"{p} lives in {town}. Anyway, I once went to the market. My cousin bakes. The mill needs paint."
    c = crit(world, task, ramble)
    assert c["concise"] == pytest.approx((14 / len(ramble.split())) * (1 / 4) ** 2)  # 1 of 4 sentences on topic
    assert c["correct"] == c["truthful"] == c["polite"] == 1.0
    assert crit(world, task, f"{p} lives in {town} and on and on and on and on")["ended"] == 0.2  # looping
    assert crit(world, task, f"{p} lives in {town}.", finished=False)["ended"] == 0.0  # hit max_new_tokens
    assert crit(world, task, f"{p} lives in {town}")["ended"] == 0.4  # stops mid-sentence


def test_invented_fact_in_closed_task_is_untruthful(world):
    ctx = [["Zorp Quimby", "job", "baker"], ["Zorp Quimby", "age", "44"]]
    task = Task("How old is Zorp Quimby?", "Zorp Quimby works as a baker. Zorp Quimby is 44 years old.",
                "Zorp Quimby is 44 years old.", "closed_qa",
                meta={"expected": ["44"], "expect": "any", "closed": True, "context_facts": ctx,
                      "topic": ["Zorp Quimby"], "max_words": 14})
    assert crit(world, task, "Zorp Quimby is 44 years old.")["truthful"] == 1.0
    c = crit(world, task, "Zorp Quimby is 44 years old. Zorp Quimby has a pet fox.")
    assert c["truthful"] == 0.5 and c["correct"] == 1.0  # right answer, plus one claim not in the text
    c = crit(world, task, "Zorp Quimby is 45 years old.")
    assert c["correct"] == 0.0 and c["truthful"] == 0.5


def test_format_checks(world):
    def fmt_task(fmt, **kw):
        return Task("x", "", "y", "brainstorming", meta={"expected": [], "format": fmt, "max_words": 4, **kw})
    items = fmt_task("n_items:3", valid_items=["fox", "owl", "cat"])
    assert crit(world, items, "- fox\n- owl\n- cat")["follows_format"] == 1.0
    assert crit(world, items, "- fox\n- owl\n- cat\n- bear\n- frog")["follows_format"] == pytest.approx(1 / 3)
    assert crit(world, items, "- fox\n- owl\n- bear")["correct"] == pytest.approx(2 / 3)  # bear is not valid
    assert crit(world, fmt_task("short"), "Red.")["follows_format"] == 1.0
    assert crit(world, fmt_task("short"), "It is red, I think.")["follows_format"] == pytest.approx(1 - (5 - 4) / 4)
    assert crit(world, fmt_task("one_sentence"), "One. Two.")["follows_format"] == 0.5
    assert crit(world, fmt_task("question"), "Where does she live?")["follows_format"] == 1.0
    assert crit(world, fmt_task("question"), "She lives there.")["follows_format"] == 0.0


def test_every_labeler_ranks_reference_above_every_corruption(world):
    for task in world.splits["test"]:
        v = world.variants(task)
        for lab in world.panel.labelers:
            ref = lab.score(task.instruction, task.context, v["reference"]).total
            for kind in CORRUPTIONS:
                assert lab.score(task.instruction, task.context, v[kind]).total < ref, (lab.name, kind, task.prompt_id)


def test_score_explains_itself(world, qa):
    task, p, town, _ = qa
    s = world.panel["ada"].score("", "", f"Who cares? {p} lives in {town}.", task=task)
    assert s.criteria["polite"] == 0.0
    weighted = sum(s.weights[c] * v for c, v in s.criteria.items() if c != "fluent") / sum(s.weights.values())
    assert s.total == pytest.approx(s.criteria["fluent"] * weighted)
    assert "polite" in s.explain() and "total" in s.explain()


def test_compare_is_bradley_terry(world, qa):
    task, p, town, _ = qa
    lab, rng = world.panel["fay"], random.Random(0)
    a, b = f"{p} lives in {town}.", f"Who cares? {p} lives in {town}."
    sa, sb = lab.score("", "", a, task=task).total, lab.score("", "", b, task=task).total
    n = 4000
    wins = sum(lab.compare("", "", a, b, rng, task=task) == 0 for _ in range(n))
    assert wins / n == pytest.approx(prefer_prob(sa, sb, lab.temperature), abs=0.025)


def test_rank_is_plackett_luce():
    scores, T, rng, n = [0.9, 0.8, 0.5], 0.1, random.Random(1), 6000
    firsts = Counter(plackett_luce(scores, T, rng)[0] for _ in range(n))
    z = sum(math.exp(s / T) for s in scores)
    for i, s in enumerate(scores):
        assert firsts[i] / n == pytest.approx(math.exp(s / T) / z, abs=0.025)
    assert sorted(plackett_luce(scores, T, rng)) == [0, 1, 2]


def test_panel_shape_and_agreement(world):
    panel = world.panel
    assert len(panel.labelers) >= 6 and len(panel.held_out) == 2
    assert {l.name for l in panel.train}.isdisjoint({l.name for l in panel.held_out})
    with pytest.raises(KeyError, match="ada"):
        panel["nobody"]
    rng = random.Random(0)
    pairs = [(t, *rng.sample(list(world.variants(t).values()), 2)) for t in world.splits["test"]]
    agree = panel.agreement(pairs)
    assert 0.6 < agree < 0.9  # noisy but far above chance, as human labelers are (InstructGPT: 72.6 %)
    identical = [(t, t.response, t.response) for t in world.splits["test"][:10]]
    assert panel.agreement(identical) == pytest.approx(0.5)  # a coin flip each: agree half the time


def test_unknown_prompt_is_a_clear_error(world):
    with pytest.raises(KeyError, match="not a prompt of this world"):
        world.panel.gold_score("Write me a sonnet about Paris.", "", "No.")
