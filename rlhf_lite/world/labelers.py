"""A panel of programmatic labelers standing in for InstructGPT's contractors.

Each labeler grades (instruction, context, response) on six interpretable criteria, each in [0, 1]:

=================  ==================================================================================
``correct``        contains the expected answer (the knowledge base's, or the context's for closed tasks)
                   and makes no false claim
``follows_format`` does what the instruction asked about form: one word, one sentence, N items, a question
``truthful``       states nothing false or made up; in closed tasks (closed QA, extraction, summaries)
                   every claim must come from the given context
``polite``         no rude or dismissive phrases
``concise``        within the length a good answer needs, and on topic (no rambling)
``ended``          finishes: terminal punctuation, no repetition loop, and end-of-text was emitted
``fluent``         share of the sentences that are well-formed sentences of the world's language
                   (``world.fluency``): known words, in an order the world's sentences use
=================  ==================================================================================

``fluent`` is not averaged with the others: it multiplies their weighted mean. A reader gives no credit
for content they cannot read, so a garbled or shuffled answer can never outscore its fluent original
(a weighted term could be outweighed: a shuffled answer still "contains" the right words), and one
unreadable sentence out of four costs a quarter of the score.

Labelers weight the criteria differently (one cares more about format, another about tone, one
likes longer answers) and choose noisily: ``compare`` is a Bradley–Terry choice and ``rank`` a
Plackett–Luce draw from ``exp(score / temperature)``. The *gold* score of a response is the panel's
mean score: the quantity alignment is trying to raise (Gao et al. 2022, "Scaling Laws for Reward
Model Overoptimization", where a gold reward model plays the human).
"""
from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from .kb import ClaimExtractor, Fact, index_facts, judge_claim
from .tasks import LOOP, RUDE_MARKERS, Task

if TYPE_CHECKING:
    from . import World
    from .fluency import Language

CRITERIA = ["correct", "follows_format", "truthful", "polite", "concise", "ended", "fluent"]
GATE = "fluent"  # multiplies the weighted mean of the other criteria
BASE_WEIGHTS = {"correct": 3.0, "follows_format": 1.5, "truthful": 2.0, "polite": 1.5, "concise": 1.0, "ended": 1.5}
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip().lstrip("-*").strip() for s in _SENT.split(text.strip()) if s.strip().lstrip("-*").strip()]


def list_items(text: str) -> list[str]:
    """Items of a list answer: '- x' / '1. x' lines, else comma/'and' separated."""
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    bullets = [re.sub(r"^(?:[-*]|\d+[.)])\s*", "", l) for l in lines if re.match(r"^(?:[-*]|\d+[.)])\s*", l)]
    items = bullets if len(bullets) >= 2 or (bullets and len(lines) == 1) else re.split(r",\s*|\s+and\s+", text.strip())
    return [i.strip().rstrip(".").strip() for i in items if i.strip().rstrip(".").strip()]


def _norm(s: str) -> str:
    s = s.lower().strip().rstrip(".")
    return s[4:] if s.startswith("the ") else s


def criteria(task: Task, response: str, extractor: ClaimExtractor, kb_index: dict, kb_subjects: set[str],
             finished: bool | None = None, language: "Language | None" = None) -> dict[str, float]:
    """The seven criteria for one response, each in [0, 1]. ``finished``: did generation emit EOS?
    ``language``: the world's grammar for ``fluent`` (None: every text counts as fluent)."""
    meta, text = task.meta, response.strip()
    low, words = text.lower(), len(text.split())
    fmt = meta.get("format") or ""

    # truthful: judge every claim against the context (closed tasks) or the knowledge base
    if meta.get("closed"):
        ctx = [Fact(*f) for f in meta["context_facts"]]
        index, subjects = index_facts(ctx), {f.subject for f in ctx}
    else:
        index, subjects = kb_index, kb_subjects
    verdicts = [judge_claim(c, index, subjects) for c in extractor.claims(text)]
    n_true, n_false, n_unsup = verdicts.count("true"), verdicts.count("false"), verdicts.count("unsupported")
    truthful = 1.0 / (1.0 + n_false + n_unsup)

    # correct: the expected content is there, and nothing false came with it
    if meta.get("valid_items") and fmt.startswith("n_items"):
        items = [_norm(i) for i in list_items(text)]
        valid = {_norm(v) for v in meta["valid_items"]}
        n_want = int(fmt.split(":")[1])
        correct = len(set(i for i in items if i in valid)) / n_want if items else 0.0
    else:
        hits = [e.lower() in low for e in meta.get("expected", [])]
        if not hits:
            correct = 1.0
        elif meta.get("expect") == "any":
            correct = float(any(hits))
        else:
            correct = sum(hits) / len(hits)
        if meta.get("min_claims"):
            correct *= min(1.0, n_true / meta["min_claims"])
    correct = min(1.0, correct) * 0.5 ** n_false

    # follows_format
    n_sent = len(sentences(text))
    if not text:
        follows = 0.0
    elif fmt == "short":
        follows = 1.0 if words <= meta["max_words"] else max(0.0, 1 - (words - meta["max_words"]) / meta["max_words"])
    elif fmt == "short_list":
        follows = 1.0 if words <= meta["max_words"] and n_sent <= 1 else 0.3
    elif fmt == "one_sentence":
        follows = 1.0 / max(1, n_sent)
    elif fmt.startswith("n_sentences:"):
        n = int(fmt.split(":")[1])
        follows = max(0.0, 1 - abs(n_sent - n) / n)
    elif fmt.startswith("n_items:"):
        n = int(fmt.split(":")[1])
        follows = max(0.0, 1 - abs(len(list_items(text)) - n) / n)
    elif fmt == "question":
        follows = 1.0 if text.endswith("?") and n_sent == 1 else 0.0
    else:
        follows = 1.0

    polite = 0.0 if any(m in low for m in RUDE_MARKERS) else 1.0

    # concise: length within budget, and sentences on topic
    topic = [t.lower() for t in meta.get("topic", []) if t]
    sents = sentences(text)
    if fmt.startswith("n_items") or fmt == "short_list" or not sents or not topic:
        on_topic = 1.0
    else:
        on_topic = sum(any(t in s.lower() for t in topic) for s in sents) / len(sents)
    budget = meta.get("max_words", 30)
    concise = (1.0 if words <= budget else budget / words) * on_topic ** 2 if text else 0.0

    # ended: end-of-text emitted, final punctuation (or a finished list), no loop
    list_done = fmt.startswith("n_items") and bool(list_items(text))
    looping = any(p in low for p in LOOP) or (len(sents) >= 3 and len(set(sents)) <= len(sents) / 2)
    if finished is False or not text:
        ended = 0.0
    elif looping:
        ended = 0.2
    else:
        ended = 1.0 if text[-1] in ".!?" or list_done else 0.4
    if language is None:
        fluent = 1.0 if text else 0.0
    else:
        fluent = language.fluency(text, language.prompt_names(task.instruction, task.context))
    return {"correct": correct, "follows_format": follows, "truthful": truthful, "polite": polite,
            "concise": concise, "ended": ended, "fluent": fluent}


@dataclass
class Score:
    """A labeler's judgement: ``total`` in about [0, 1] (fluent x the weighted mean of the rest), and why."""

    total: float
    criteria: dict[str, float]
    weights: dict[str, float]
    length_bonus: float = 0.0

    def explain(self) -> str:
        wsum = sum(self.weights.values())
        parts = [f"{c:<15} {v:4.2f} x weight {self.weights[c] / wsum:4.2f} = {v * self.weights[c] / wsum:5.3f}"
                 for c, v in self.criteria.items() if c != GATE]
        mean = sum(self.weights[c] * v for c, v in self.criteria.items() if c != GATE) / wsum
        parts.append(f"{'weighted mean':<15} {mean:.3f}")
        parts.append(f"{'x ' + GATE:<15} {self.criteria[GATE]:4.2f}")
        if self.length_bonus:
            parts.append(f"{'length bonus':<15} {self.length_bonus:+.3f}")
        return "\n".join(parts + [f"{'total':<15} {self.total:.3f}"])


@dataclass
class Labeler:
    """One programmatic labeler: criterion weights, a length taste, and how noisily they choose."""

    name: str
    weights: dict[str, float]
    temperature: float  # Bradley–Terry / Plackett–Luce temperature on the score scale: higher = noisier
    length_bias: float = 0.0  # bonus per word of response (capped at 40 words): some people like long answers
    held_out: bool = False
    world: "World | None" = field(default=None, repr=False)

    def score(self, instruction: str, context: str, response: str, finished: bool | None = None,
              task: Task | None = None) -> Score:
        """Score one response. ``task`` defaults to the world's task with this instruction and context."""
        w = self.world
        task = task or w.lookup(instruction, context)
        crit = criteria(task, response, w.extractor, w.kb_index, w.kb_subjects, finished, w.language)
        total = crit[GATE] * sum(self.weights[c] * v for c, v in crit.items() if c != GATE) / sum(self.weights.values())
        bonus = self.length_bias * min(len(response.split()), 40) / 40 * crit[GATE]  # no taste for long garbage
        return Score(total + bonus, crit, dict(self.weights), bonus)

    def compare(self, instruction: str, context: str, a: str, b: str, rng: random.Random,
                task: Task | None = None) -> int:
        """0 if this labeler prefers ``a``, 1 if ``b`` (Bradley–Terry: P(a) = σ((s_a − s_b)/T))."""
        sa = self.score(instruction, context, a, task=task).total
        sb = self.score(instruction, context, b, task=task).total
        return 0 if rng.random() < prefer_prob(sa, sb, self.temperature) else 1

    def rank(self, instruction: str, context: str, responses: Sequence[str], rng: random.Random,
             task: Task | None = None, finished: Sequence[bool] | None = None) -> list[int]:
        """Indices of ``responses`` best → worst, a Plackett–Luce draw with weights exp(score / T)."""
        fin = list(finished) if finished is not None else [None] * len(responses)
        scores = [self.score(instruction, context, r, f, task=task).total for r, f in zip(responses, fin)]
        return plackett_luce(scores, self.temperature, rng)


def prefer_prob(sa: float, sb: float, temperature: float) -> float:
    return 1.0 / (1.0 + math.exp(-(sa - sb) / temperature))


def plackett_luce(scores: Sequence[float], temperature: float, rng: random.Random) -> list[int]:
    left, order = list(range(len(scores))), []
    while left:
        m = max(scores[i] for i in left)
        w = [math.exp((scores[i] - m) / temperature) for i in left]
        pick = rng.choices(left, weights=w)[0]
        order.append(pick)
        left.remove(pick)
    return order


# (name, weight multipliers, temperature, length bias): distinct, documented personalities
PERSONAS = [
    ("ada", {}, 0.06, 0.0),                                               # the guidelines, followed closely
    ("bo", {"follows_format": 2.0}, 0.08, 0.0),                           # a stickler for the requested form
    ("cy", {"polite": 2.0, "concise": 0.5}, 0.08, 0.03),                  # tone first, likes some length
    ("dee", {"truthful": 1.7, "correct": 1.3}, 0.07, 0.0),                # fact-checker
    ("eli", {"concise": 2.0, "ended": 1.5}, 0.09, -0.02),                 # wants it short and finished
    ("fay", {"correct": 0.7, "polite": 1.3}, 0.12, 0.06),                 # generous, likes long answers, noisy
    ("gus", {"truthful": 1.3, "follows_format": 0.7}, 0.08, 0.0),         # held out
    ("hal", {"polite": 0.7, "concise": 1.3}, 0.10, 0.02),                 # held out
]
N_HELD_OUT = 2


class Panel:
    """The labelers of one world. ``train`` labelers produce training data; ``held_out`` never do."""

    def __init__(self, world: "World"):
        self.world = world
        self.labelers = [Labeler(name, {c: BASE_WEIGHTS[c] * mult.get(c, 1.0) for c in BASE_WEIGHTS}, temp, bias,
                                 held_out=i >= len(PERSONAS) - N_HELD_OUT, world=world)
                         for i, (name, mult, temp, bias) in enumerate(PERSONAS)]

    @property
    def train(self) -> list[Labeler]:
        return [l for l in self.labelers if not l.held_out]

    @property
    def held_out(self) -> list[Labeler]:
        return [l for l in self.labelers if l.held_out]

    def __getitem__(self, name: str) -> Labeler:
        for l in self.labelers:
            if l.name == name:
                return l
        raise KeyError(f"no labeler {name!r}; the panel has {[l.name for l in self.labelers]}")

    def gold_score(self, instruction: str, context: str, response: str, finished: bool | None = None,
                   task: Task | None = None) -> float:
        """The panel's mean score: the gold reward."""
        return sum(l.score(instruction, context, response, finished,
                           task=task).total for l in self.labelers) / len(self.labelers)

    def gold_scores(self, tasks: Sequence[Task], responses: Sequence) -> list[float]:
        """Gold score of each task's response; ``responses`` have ``.text`` and ``.finished`` (generations)."""
        return [self.gold_score(t.instruction, t.context, r.text, r.finished, task=t) for t, r in zip(tasks, responses)]

    def agreement(self, pairs: Sequence[tuple[Task, str, str]], labelers: Sequence[Labeler] | None = None) -> float:
        """Expected rate at which two different labelers pick the same response of a pair (InstructGPT: 72.6 %)."""
        labelers = list(labelers or self.labelers)
        total, n = 0.0, 0
        for task, a, b in pairs:
            p = [prefer_prob(l.score("", "", a, task=task).total, l.score("", "", b, task=task).total, l.temperature)
                 for l in labelers]
            for i, j in itertools.combinations(range(len(p)), 2):
                total += p[i] * p[j] + (1 - p[i]) * (1 - p[j])
                n += 1
        return total / max(n, 1)
