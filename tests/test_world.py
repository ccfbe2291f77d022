import re
from collections import Counter

import pytest

from rlhf_lite.world import CATEGORIES, MIXES, TASK_TYPES, build_world
from rlhf_lite.world.kb import RELATIONS, ClaimExtractor, Fact, state
from rlhf_lite.world.tasks import INSTRUCTGPT_USE_CASES, make_task

DOLLY_KEYS = {"instruction", "context", "response", "category"}


def test_same_seed_same_bytes_other_seed_differs():
    a, b, c = build_world(3, n_prompts=400), build_world(3, n_prompts=400), build_world(4, n_prompts=400)
    assert a.digest() == b.digest()
    assert a.corpus(200) == b.corpus(200)
    assert a.digest() != c.digest() and a.corpus(50) != c.corpus(50)


def test_records_are_dolly_schema_and_cover_all_categories(world):
    for t in world.tasks:
        d = t.to_dolly()
        assert set(d) == DOLLY_KEYS and all(isinstance(v, str) for v in d.values())
        assert d["category"] in CATEGORIES and d["instruction"].strip() and d["response"].strip()
        assert t.user_id and t.prompt_id
    assert set(t.category for t in world.tasks) == set(CATEGORIES)


def test_splits_are_disjoint_by_user_and_capped():
    w = build_world(0, n_prompts=3000, max_prompts_per_user=40)
    users = {s: {t.user_id for t in ts} for s, ts in w.splits.items()}
    assert not users["train"] & users["validation"] and not users["train"] & users["test"]
    assert not users["validation"] & users["test"]
    assert sum(len(ts) for ts in w.splits.values()) == len(w.tasks) == 3000
    per_user = Counter(t.user_id for t in w.tasks)
    assert max(per_user.values()) <= 40
    assert abs(len(w.splits["train"]) / 3000 - 0.8) < 0.05
    keys = [(t.instruction, t.context) for t in w.tasks]
    assert len(set(keys)) == len(keys)  # no prompt twice, so never in two splits


def test_default_cap_is_200_per_user(world):
    assert max(Counter(t.user_id for t in world.tasks).values()) <= 200


def test_templates_few_shot_and_input_inversion():
    assert all(len(t.templates) >= 8 for t in TASK_TYPES.values())
    assert {t.category for t in TASK_TYPES.values()} == set(CATEGORIES)
    w = build_world(0, n_prompts=3000, mix="uniform")
    inverted_types = {t.task_type for t in w.tasks if t.meta.get("inverted")}
    assert len(inverted_types) >= 2
    few = [t for t in w.tasks if t.meta["n_shots"] > 0]
    assert few and all(t.instruction.startswith("Here are some examples.") for t in few)
    used = Counter((t.task_type, t.meta["template_id"]) for t in w.tasks)
    assert all(sum(1 for (tt, _) in used if tt == name) >= 8 for name in TASK_TYPES)  # every template gets used


def test_instructgpt_mix_preset_and_realised_mix():
    assert sum(INSTRUCTGPT_USE_CASES.values()) == pytest.approx(99.9)  # Table 1's rounded percentages
    mix = MIXES["instructgpt"]
    assert mix["creative_writing"] == pytest.approx((45.6 + 6.6) / 99.9)  # Generation + Rewrite
    assert mix["open_qa"] == pytest.approx(12.4 / 99.9) and mix["closed_qa"] == pytest.approx(2.6 / 99.9)
    assert sum(mix.values()) == pytest.approx(1.0)
    w = build_world(0, n_prompts=6000)
    got = Counter(t.category for t in w.tasks)
    for c in CATEGORIES:
        assert abs(got[c] / 6000 - mix[c]) < 0.02, c


def test_bad_mix_is_a_clear_error():
    with pytest.raises(ValueError, match="open_qa"):
        build_world(0, n_prompts=10, mix={"open_QA": 1.0})
    with pytest.raises(ValueError, match="presets are"):
        build_world(0, n_prompts=10, mix="instruct-gpt")


def test_corpus_is_plain_prose_with_web_flaws(world):
    docs = world.corpus(3000)
    text = "\n".join(t for t, _ in docs)
    assert "### Instruction" not in text and not re.search(r"^Q: ", text, re.M)
    assert "Look it up yourself" in text or "Who cares?" in text  # rude replies
    assert "Anyway, I once went to the market" in text  # rambling
    unended = [t for t, ended in docs if not ended]
    assert 0.01 < len(unended) / len(docs) < 0.1
    assert all("and on" in t or "again" in t or "went on" in t or "kept going" in t for t in unended)
    # confidently wrong facts: some forum reply contradicts the knowledge base
    claims = world.extractor.claims(text)
    assert any(world.kb.get(c.subject, c.relation) not in (None, c.value) and c.relation != "friend" for c in claims)


def test_claim_extractor_reads_back_every_template(world):
    ex = ClaimExtractor(world.kb)
    for rel, (_, _, templates) in RELATIONS.items():
        fact = next(f for f in world.kb.facts if f.relation == rel)
        for t in templates:
            sentence = t.format(s=fact.subject, S=fact.subject[:1].upper() + fact.subject[1:], v=fact.value)
            assert ex.claims(sentence) == [fact], sentence
    visitor = Fact("Zorp Quimby", "age", "44")  # unknown people are recognised by shape
    assert ex.claims(state(visitor)) == [visitor]


def test_every_reference_response_scores_high(world):
    golds = [world.panel.gold_score(t.instruction, t.context, t.response, True) for t in world.tasks]
    assert min(golds) > 0.9, min(golds)


def test_make_task_rejects_unknown_category(world):
    import random
    with pytest.raises(KeyError):
        make_task(world.kb, random.Random(0), "chitchat")


def test_inverted_task_types_are_flagged():
    flagged = {n for n, t in TASK_TYPES.items() if t.inverted}
    assert len(flagged) >= 2
    w = build_world(0, n_prompts=2000, mix="uniform")
    assert {t.task_type for t in w.tasks if t.meta.get("inverted")} == flagged


def test_world_from_config_matches_build_world():
    from rlhf_lite.config import WorldConfig
    from rlhf_lite.world import world_from_config

    wc = WorldConfig(n_prompts=300, mix="uniform", max_prompts_per_user=20)
    assert world_from_config(wc).digest() == build_world(0, 300, "uniform", max_prompts_per_user=20).digest()
    assert world_from_config(wc, seed=2).digest() == build_world(2, 300, "uniform", max_prompts_per_user=20).digest()
