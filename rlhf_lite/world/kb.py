"""The knowledge base of TinyWorld: entities, facts, the sentences that state them, and a claim
extractor that reads those sentences back.

Every fact is a triple ``(subject, relation, value)``. Each relation has a few sentence templates;
the corpus states facts with them and the labelers parse responses with regexes built from the same
templates, so "is this claim true?" has an exact answer. Names are generated from syllables, so the
base model cannot lean on real-world knowledge: whatever it knows about the world, it read in our
corpus.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import NamedTuple

JOBS = ["baker", "farmer", "teacher", "painter", "doctor", "fisher", "builder", "singer", "tailor", "miller"]
COLOURS = ["red", "blue", "green", "yellow", "orange", "purple", "white", "black", "brown", "grey"]
ANIMALS = {  # name -> class (real-world class kept, so classification has a sensible answer)
    "fox": "mammal", "owl": "bird", "rabbit": "mammal", "horse": "mammal", "goat": "mammal",
    "duck": "bird", "cat": "mammal", "bear": "mammal", "frog": "amphibian", "deer": "mammal",
    "swan": "bird", "crow": "bird", "otter": "mammal", "toad": "amphibian", "newt": "amphibian",
}
HABITATS = ["forest", "river", "field", "mountains", "marsh"]
DIETS = ["berries", "fish", "grass", "seeds", "insects", "roots"]
FOODS = ["apple pie", "barley bread", "goat cheese", "onion soup", "plum jam", "honey cake", "rice pudding",
         "pear tart", "bean stew", "carrot soup", "fish pie", "mint tea", "nut loaf", "berry juice"]
TASTES = ["sweet", "salty", "sour", "bitter", "spicy"]
REGIONS = ["north", "south", "east", "west"]

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "h"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea"]
_CODAS = ["", "", "n", "l", "r", "s", "k", "m"]
_SURNAME_ENDS = ["wick", "ford", "by", "son", "well", "more", "dale", "hart"]
_TOWN_ENDS = ["vale", "ford", "mouth", "field", "stead", "holm", "bury", "wick", "ton", "moor"]


class Fact(NamedTuple):
    subject: str
    relation: str
    value: str


# relation -> (subject kind, value kind, sentence templates). {s} subject, {v} value.
RELATIONS: dict[str, tuple[str, str, list[str]]] = {
    "lives_in": ("person", "town", ["{s} lives in {v}.", "{s} has a home in {v}.", "{s} lives in the town of {v}."]),
    "job": ("person", "job", ["{s} works as a {v}.", "{s} is a {v} by trade.", "{s} earns a living as a {v}."]),
    "favourite_colour": ("person", "colour", ["{s}'s favourite colour is {v}.", "{s} likes the colour {v} best."]),
    "favourite_food": ("person", "food", ["{s}'s favourite food is {v}.", "{s} loves to eat {v}."]),
    "pet": ("person", "animal", ["{s} has a pet {v}.", "{s} keeps a {v} as a pet."]),
    "age": ("person", "number", ["{s} is {v} years old.", "{s} is aged {v}."]),
    "friend": ("person", "person", ["{s} is a friend of {v}.", "{s} and {v} are friends."]),
    "animal_class": ("animal", "class", ["The {s} is a {v}.", "The {s} is a kind of {v}."]),
    "animal_colour": ("animal", "colour", ["The {s} is {v} in colour.", "The {s} has a {v} coat."]),
    "habitat": ("animal", "habitat", ["The {s} lives in the {v}.", "You can find the {s} in the {v}."]),
    "eats": ("animal", "diet", ["The {s} eats {v}.", "The {s} feeds on {v}."]),
    "river": ("town", "river", ["{s} is by the {v} river.", "The {v} river runs through {s}."]),
    "region": ("town", "region", ["{s} is in the {v} of the land.", "{s} lies in the {v}."]),
    "famous_food": ("town", "food", ["{s} is famous for its {v}.", "People in {s} are proud of their {v}."]),
    "taste": ("food", "taste", ["{S} tastes {v}.", "The taste of {s} is {v}."]),
    "food_colour": ("food", "colour", ["{S} is {v} in colour.", "A plate of {s} looks {v}."]),
}
MULTI_VALUED = {"friend"}  # every other relation has exactly one value per subject


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def make_names(rng: random.Random, n: int, kind: str, taken: set[str] | None = None) -> list[str]:
    """Generate ``n`` distinct pronounceable names ("person": "First Last", "town", "river")."""
    taken = set() if taken is None else taken
    out: list[str] = []
    while len(out) < n:
        if kind == "person":
            first = (_syllable(rng) + _syllable(rng)).capitalize()
            name = first + " " + (_syllable(rng) + rng.choice(_SURNAME_ENDS)).capitalize()
        elif kind == "town":
            name = (_syllable(rng) + rng.choice(_TOWN_ENDS)).capitalize()
        elif kind == "river":
            name = (_syllable(rng) + _syllable(rng)).capitalize()
        else:
            raise ValueError(f"unknown name kind {kind!r}")
        if name not in taken and len(name) <= 16:
            taken.add(name)
            out.append(name)
    return out


def state(fact: Fact, rng: random.Random | None = None) -> str:
    """One sentence stating ``fact``; the first template unless ``rng`` picks a paraphrase."""
    templates = RELATIONS[fact.relation][2]
    t = templates[0] if rng is None else rng.choice(templates)
    return t.format(s=fact.subject, S=fact.subject[:1].upper() + fact.subject[1:], v=fact.value)


@dataclass
class KnowledgeBase:
    """Entities and facts of one world. Build with :func:`build_kb`."""

    people: list[str]
    towns: list[str]
    rivers: list[str]
    animals: list[str]
    foods: list[str]
    facts: list[Fact]
    _index: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = index_facts(self.facts)

    def get(self, subject: str, relation: str) -> str | None:
        """The (first) value of ``relation`` for ``subject``, or None."""
        vals = self._index.get((subject, relation))
        return vals[0] if vals else None

    def values(self, subject: str, relation: str) -> list[str]:
        return list(self._index.get((subject, relation), []))

    def about(self, subject: str) -> list[Fact]:
        return [f for f in self.facts if f.subject == subject]

    def value_set(self, kind: str) -> list[str]:
        """All values a value kind can take, longest first (so regex alternation prefers them)."""
        pools = {"town": self.towns, "river": self.rivers, "job": JOBS, "colour": COLOURS, "animal": list(ANIMALS),
                 "food": FOODS, "class": ["mammal", "bird", "amphibian"], "habitat": HABITATS, "diet": DIETS,
                 "taste": TASTES, "region": REGIONS}
        return sorted(pools[kind], key=len, reverse=True)


def index_facts(facts: list[Fact]) -> dict[tuple[str, str], list[str]]:
    idx: dict[tuple[str, str], list[str]] = {}
    for f in facts:
        idx.setdefault((f.subject, f.relation), []).append(f.value)
        if f.relation in MULTI_VALUED:
            idx.setdefault((f.value, f.relation), []).append(f.subject)
    return idx


def person_facts(rng: random.Random, name: str, towns: list[str], foods: list[str]) -> list[Fact]:
    """The six single-valued facts of one person (friends are added separately)."""
    return [
        Fact(name, "lives_in", rng.choice(towns)),
        Fact(name, "job", rng.choice(JOBS)),
        Fact(name, "favourite_colour", rng.choice(COLOURS)),
        Fact(name, "favourite_food", rng.choice(foods)),
        Fact(name, "pet", rng.choice(list(ANIMALS))),
        Fact(name, "age", str(rng.randint(18, 80))),
    ]


def build_kb(seed: int, n_people: int = 36, n_towns: int = 10) -> KnowledgeBase:
    """Deterministic knowledge base for ``seed``."""
    rng = random.Random(f"kb-{seed}")
    taken: set[str] = set()
    people = make_names(rng, n_people, "person", taken)
    towns = make_names(rng, n_towns, "town", taken)
    rivers = make_names(rng, n_towns, "river", taken)
    facts: list[Fact] = []
    for p in people:
        facts += person_facts(rng, p, towns, FOODS)
    for i, p in enumerate(people):  # a ring of friendships plus a few random ones: symmetric by construction
        facts.append(Fact(p, "friend", people[(i + 1) % len(people)]))
    for _ in range(n_people // 3):
        a, b = rng.sample(people, 2)
        if b not in {f.value for f in facts if f.subject == a and f.relation == "friend"} | \
                {f.subject for f in facts if f.value == a and f.relation == "friend"}:
            facts.append(Fact(a, "friend", b))
    for a, cls in ANIMALS.items():
        facts += [Fact(a, "animal_class", cls), Fact(a, "animal_colour", rng.choice(COLOURS)),
                  Fact(a, "habitat", rng.choice(HABITATS)), Fact(a, "eats", rng.choice(DIETS))]
    for t, r in zip(towns, rivers):
        facts += [Fact(t, "river", r), Fact(t, "region", rng.choice(REGIONS)),
                  Fact(t, "famous_food", rng.choice(FOODS))]
    for food in FOODS:
        facts += [Fact(food, "taste", rng.choice(TASTES)), Fact(food, "food_colour", rng.choice(COLOURS))]
    return KnowledgeBase(people, towns, rivers, list(ANIMALS), list(FOODS), facts)


# ---------------------------------------------------------------------------------------------
# Reading claims back out of text
# ---------------------------------------------------------------------------------------------
_PERSON = r"[A-Z][a-z]+ [A-Z][a-z]+"
_TOWN = r"[A-Z][a-z]+"


class ClaimExtractor:
    """Finds factual claims in free text, using the same templates the corpus is written with.

    Subjects are matched by shape (any capitalised two-word name is a person, so invented people are
    caught too); values by the world's vocabulary of values for that relation.
    """

    def __init__(self, kb: KnowledgeBase):
        alt = lambda xs: "(?:" + "|".join(re.escape(x) for x in xs) + ")"  # noqa: E731
        subj = {"person": _PERSON, "animal": alt(sorted(kb.animals, key=len, reverse=True)), "town": _TOWN,
                "food": alt(kb.value_set("food"))}
        vals = {k: alt(kb.value_set(k)) for k in ["town", "job", "colour", "animal", "food", "class", "habitat",
                                                  "diet", "taste", "region", "river"]}
        vals["number"], vals["person"] = r"\d{1,3}", _PERSON
        self.patterns: list[tuple[str, re.Pattern]] = []
        for rel, (skind, vkind, templates) in RELATIONS.items():
            for t in templates:
                body = re.escape(t.rstrip(".")).replace(r"\{s\}", "{s}").replace(r"\{S\}", "{s}").replace(r"\{v\}",
                                                                                                          "{v}")
                body = body.replace(r"\ ", " ").replace("{s}", f"(?P<s>{subj[skind]})").replace("{v}",
                                                                                                f"(?P<v>{vals[vkind]})")
                self.patterns.append((rel,
                                      re.compile(r"(?<![A-Za-z])" + body + r"(?![a-z])",
                                                 re.IGNORECASE if skind == "food" else 0)))

    def claims(self, text: str) -> list[Fact]:
        found: list[Fact] = []
        seen: set[tuple[int, int]] = set()
        for rel, pat in self.patterns:
            for m in pat.finditer(text):
                if m.span() in seen:
                    continue
                seen.add(m.span())
                s, v = m.group("s"), m.group("v")
                if RELATIONS[rel][0] == "food":
                    s = s.lower()
                if RELATIONS[rel][0] == "animal" or RELATIONS[rel][1] in ("job",):
                    v = v.lower()
                found.append(Fact(s, rel, v))
        return found


def judge_claim(claim: Fact, index: dict[tuple[str, str], list[str]], subjects: set[str]) -> str:
    """'true', 'false' (contradicts a known fact) or 'unsupported' (nothing known about it)."""
    known = index.get((claim.subject, claim.relation))
    if known:
        if claim.value in known:
            return "true"
        return "false" if claim.relation not in MULTI_VALUED or claim.subject in subjects else "unsupported"
    if claim.relation in MULTI_VALUED and claim.subject in subjects:
        return "false"
    return "unsupported"
