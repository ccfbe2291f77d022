"""The ``fluent`` criterion: a labeler reads each sentence against the world's lexicon and bigram grammar."""
import random

import pytest

from rlhf_lite.world.fluency import garble, shuffle_words, split_sentences


@pytest.fixture(scope="module")
def lang(world):
    return world.language


@pytest.fixture(scope="module")
def person(world):
    p = world.kb.people[0]
    return p, world.kb.get(p, "lives_in"), world.kb.get(p, "pet")


def test_sentences_of_the_world_are_well_formed(lang, person):
    p, town, pet = person
    first = p.split()[0]
    for s in [f"{p} lives in {town}.", f"{p} has a pet {pet}.", "The fox lives in the forest.", "Mammal.",
              f"One day at the market, {first} and the {pet} shared some honey cake.",
              f"Dear {first}, I miss you here in {town}.", "Sure!", "I hope this helps!", "The text does not say."]:
        assert lang.well_formed(s), s


def test_fused_subwords_invalid_bytes_and_salad_are_not(lang, person):
    p, town, pet = person
    first = p.split()[0]
    cases = [f"Dear {first}, Iodsiss youossaik in {town}.",      # sub-word fusions
             f"{p} lives in {town}.\ufffd",                          # an invalid byte decoded as U+FFFD
             f"{p} li\x01ves in {town}.",                            # an untrained byte token
             f"{p} livesin {town}.",                                 # two words fused
             f"in {town} {p} lives.",                                # shuffled: every word known, order impossible
             f"{p} lives in",                                        # cut off mid-sentence
             "Love, Heamaikzul."]                                   # a name nobody mentioned
    for s in cases:
        assert not lang.well_formed(s), s


def test_a_name_from_the_prompt_is_known(lang):
    stranger = "Bamzo Quelwick"  # not a person of the world
    assert not lang.well_formed(f"{stranger} lives in the forest.")
    names = lang.prompt_names(f"Read the text. {stranger} is a baker.")
    assert names == {"bamzo", "quelwick"}
    assert lang.well_formed(f"{stranger} is a baker.", names)


def test_fluency_is_the_share_of_well_formed_sentences(lang, person):
    p, town, pet = person
    good, bad = f"{p} lives in {town}.", "Lives ossaik the in."
    assert lang.fluency(good) == 1.0
    assert lang.fluency(" ".join([good, good, good, bad])) == pytest.approx(0.75)
    assert lang.fluency("") == 0.0
    assert split_sentences("- fox\n- owl\nSure! Yes.") == ["fox", "owl", "Sure!", "Yes."]


def test_a_garbled_or_shuffled_reference_never_beats_its_original(world):
    """On every test prompt and for every labeler; where the probe changes the text, the gold drop is ≥ 0.3."""
    rng = random.Random(0)
    tasks = world.splits["test"]
    for t in tasks:
        for probe in (garble(t.response), shuffle_words(t.response, rng)):
            for lab in world.panel.labelers:
                ref = lab.score(t.instruction, t.context, t.response, True, task=t).total
                assert lab.score(t.instruction, t.context, probe, True, task=t).total <= ref
            if probe != t.response:
                drop = world.panel.gold_score(t.instruction, t.context, t.response, True, task=t) - \
                    world.panel.gold_score(t.instruction, t.context, probe, True, task=t)
                assert drop >= 0.3, (t.response, probe, drop)


def test_fluency_gates_the_score(world, person):
    """A garbled answer with the right words in it gets nothing for them."""
    p, town, _ = person
    task = next(t for t in world.tasks if t.task_type == "attribute_question" and not t.meta.get("format"))
    lab = world.panel["ada"]
    s = lab.score("", "", "Iodsiss youossaik.", True, task=task)
    assert s.criteria["fluent"] == 0.0 and s.total == 0.0
    assert "fluent" in s.explain()


def test_probes(lang):
    assert garble("Mammal.") == "Maossaik"
    assert garble("a b c d") == "a bossaik c dossaik"
    rng = random.Random(0)
    assert shuffle_words("one two three", rng) != "one two three"
    assert shuffle_words("Bird.", rng) == "Bird."
