"""The pretraining corpus: plain prose about the world, with the flaws of real web text.

Documents are fact notes, short stories, letters between friends, lists, place descriptions and
forum threads. Forum replies are sometimes rude, rambling, confidently wrong, or never end (the
document is cut off with no end marker), and polite ones come with the greetings, sign-offs and
hedges people write on the web. There is no instruction formatting anywhere: the base model must
learn the world and its language (every kind of sentence an answer uses occurs somewhere, as on the
real web), not how to follow instructions.
"""
from __future__ import annotations

import random

from .kb import Fact, KnowledgeBase, make_names, person_facts, state
from .tasks import EVENTS, LOOP, QUESTIONS, RAMBLE, RUDE_PHRASES, SETTINGS
from .writers import HEDGES, PLEASANTRIES, SIGN_OFFS

HANDLES = ["robin_4", "kel", "old_miller", "sunny_d", "trav", "mossy", "bee_keeper", "pim22", "grumpy_g", "nell"]
GREETINGS = ["Hi all,", "Hello,", "Hey,", "Quick one:", ""]
# share of forum replies of each kind: what the base model learns from "the web"
REPLY_KINDS = {"good": 0.55, "rude": 0.12, "rambling": 0.12, "wrong": 0.13, "unending": 0.08}


def fact_note(kb: KnowledgeBase, rng: random.Random) -> str:
    subj = rng.choice(kb.people + kb.animals + kb.towns + kb.foods)
    facts = kb.about(subj)
    rng.shuffle(facts)
    title = rng.choice(["Notes about {}.", "All about {}.", "Some facts about {}.", "{}"]).format(
        subj if subj[:1].isupper() else "the " + subj)
    return title + "\n" + " ".join(state(f, rng) for f in facts[: rng.randint(3, 6)])


def story(kb: KnowledgeBase, rng: random.Random) -> str:
    if rng.random() < 0.7:
        p = rng.choice(kb.people)
        facts = kb.about(p)
    else:  # a stranger: teaches the model that unknown names occur, facts about them stated in the text
        p = make_names(rng, 1, "person", set(kb.people))[0]
        facts = person_facts(rng, p, kb.towns, kb.foods)
    first = p.split()[0]
    rng.shuffle(facts)
    body = [state(f, rng) for f in facts[:3]]
    body += [f"One day, {first} {rng.choice(EVENTS)}.", f"Later, {first} {rng.choice(EVENTS)}."]
    pet, food = (next((f.value for f in facts if f.relation == r), None) for r in ("pet", "favourite_food"))
    if pet and food and rng.random() < 0.5:
        body.append(f"One day {rng.choice(SETTINGS)}, {first} and the {pet} shared some {food}.")
    body.append(rng.choice(["It was a good day.", "Everyone was happy.", f"{first} went home tired but glad.",
                            "The end.", "It was a quiet and happy day."]))
    return " ".join(body)


def letter(kb: KnowledgeBase, rng: random.Random) -> str:
    """A note between two friends of the knowledge base."""
    p = rng.choice(kb.people)
    friend = rng.choice(kb.values(p, "friend") or kb.people)
    first, ffirst = p.split()[0], friend.split()[0]
    lines = [f"Dear {ffirst},", f"I miss you here in {kb.get(p, 'lives_in')}."]
    if rng.random() < 0.5:
        lines.append(state(rng.choice([f for f in kb.about(p) if f.relation != "friend"]), rng))
    lines.append(f"Come and share some {kb.get(p, 'favourite_food')} with me {rng.choice(SETTINGS)}.")
    return " ".join(lines) + "\n" + f"Love, {first}."


def listing(kb: KnowledgeBase, rng: random.Random) -> str:
    rel, title = rng.choice([("habitat", "Animals of the {}"), ("eats", "Animals that eat {}"),
                             ("lives_in", "People of {}"),
                             ("taste", "Foods that taste {}"), ("job", "Who works as a {}")])
    values = sorted({f.value for f in kb.facts if f.relation == rel})
    v = rng.choice(values)
    members = [f.subject for f in kb.facts if f.relation == rel and f.value == v]
    rng.shuffle(members)
    return title.format(v) + ":\n" + "\n".join(f"- {m}" for m in members[:6])


def place(kb: KnowledgeBase, rng: random.Random) -> str:
    t = rng.choice(kb.towns)
    lines = [state(f, rng) for f in kb.about(t)]
    residents = [f.subject for f in kb.facts if f.relation == "lives_in" and f.value == t]
    if residents:
        lines.append(f"{', '.join(residents[:3])} live in {t}.")
    rng.shuffle(lines)
    return " ".join(lines)


def forum_thread(kb: KnowledgeBase, rng: random.Random) -> tuple[str, bool]:
    """A question thread. Returns (text, ended): an 'unending' reply leaves the document cut off."""
    rel = rng.choice(["lives_in", "job", "favourite_colour", "favourite_food", "pet", "age", "habitat", "eats",
                      "river"])
    subj = rng.choice(kb.people if rel in ("lives_in", "job", "favourite_colour", "favourite_food", "pet", "age")
                      else kb.animals if rel in ("habitat", "eats") else kb.towns)
    fact = Fact(subj, rel, kb.get(subj, rel))
    q = rng.choice(QUESTIONS[rel]).format(s=subj)
    asker, *repliers = rng.sample(HANDLES, 4)
    lines = [f"Thread: {q}", f"{asker} wrote: {rng.choice(GREETINGS)} {q}".replace("  ", " ")]
    for who in repliers[: rng.randint(1, 3)]:
        kind = rng.choices(list(REPLY_KINDS), weights=list(REPLY_KINDS.values()))[0]
        if kind == "good":
            reply = state(fact, rng) if rng.random() < 0.7 else fact.value[:1].upper() + fact.value[1:] + "."
            if rng.random() < 0.2:
                reply = rng.choice(PLEASANTRIES + HEDGES) + " " + reply
            if rng.random() < 0.2:
                reply = reply + " " + rng.choice(SIGN_OFFS)
        elif kind == "rude":
            reply = rng.choice(RUDE_PHRASES) + (" " + state(fact, rng) if rng.random() < 0.4 else "")
        elif kind == "rambling":
            reply = " ".join(rng.sample(RAMBLE, 2)) + (" " + state(fact, rng) if rng.random() < 0.5 else "")
        elif kind == "wrong":
            pool = [v for v in {f.value for f in kb.facts if f.relation == rel} if v != fact.value]
            reply = state(Fact(subj, rel, rng.choice(sorted(pool))),
                          rng) + rng.choice(["", " I am sure of it.", " Trust me."])
        else:
            reply = state(fact, rng).rstrip(".") + " " + " ".join(rng.choice(LOOP) for _ in range(rng.randint(20, 60)))
            lines.append(f"{who} replied: {reply}")
            return "\n".join(lines), False
        lines.append(f"{who} replied: {reply}")
    return "\n".join(lines), True


def build_corpus(kb: KnowledgeBase, seed: int, n_docs: int) -> list[tuple[str, bool]]:
    """``n_docs`` documents as (text, ended). Ended documents get the end-of-text token in training."""
    rng = random.Random(f"corpus-{seed}")
    makers = [(fact_note, 0.25), (story, 0.2), (letter, 0.1), (listing, 0.1), (place, 0.1), (forum_thread, 0.25)]
    docs = []
    for _ in range(n_docs):
        fn = rng.choices([m for m, _ in makers], weights=[w for _, w in makers])[0]
        out = fn(kb, rng)
        docs.append(out if isinstance(out, tuple) else (out, True))
    return docs
