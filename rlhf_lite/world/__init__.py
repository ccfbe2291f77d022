"""TinyWorld: a generated world to pretrain, instruction-tune and align a tiny GPT-2 in, offline.

>>> from rlhf_lite.world import build_world
>>> world = build_world(seed=0)
>>> task = world.splits["test"][0]
>>> world.panel.gold_score(task.instruction, task.context, task.response)  # the reference scores high

Everything is deterministic from ``seed``: the same seed gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

from .corpus import build_corpus
from .fluency import Language, learn_language
from .kb import ClaimExtractor, Fact, KnowledgeBase, build_kb, index_facts, state
from .labelers import CRITERIA, Labeler, Panel, Score
from .tasks import CATEGORIES, CORRUPTIONS, MIXES, TASK_TYPES, Task, corrupt, make_task
from .writers import WRITERS, Writer, assign_demonstrations, draw_habits, write

__all__ = ["World", "build_world", "world_from_config", "Task", "Fact", "KnowledgeBase", "Labeler", "Panel", "Score",
           "CATEGORIES", "WRITERS", "Writer", "Language",
           "CRITERIA", "CORRUPTIONS", "MIXES", "TASK_TYPES", "state"]

SPLITS = ("train", "validation", "test")


@dataclass
class World:
    """A knowledge base, prompts split by user, a labeler panel, and the corpus generator."""

    seed: int
    kb: KnowledgeBase
    tasks: list[Task]
    splits: dict[str, list[Task]]
    mix: dict[str, float]
    panel: Panel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.extractor = ClaimExtractor(self.kb)
        self.kb_index = index_facts(self.kb.facts)
        self.kb_subjects = set(self.kb.people + self.kb.animals + self.kb.towns + self.kb.foods)
        self._lookup = {(t.instruction, t.context): t for t in self.tasks}
        self.tasks_by_id = {t.prompt_id: t for t in self.tasks}
        self.panel = Panel(self)
        self._language: Language | None = None

    @property
    def language(self) -> Language:
        """The world's lexicon and bigram grammar (the ``fluent`` criterion), learned once from text the world
        writes: 3,000 corpus documents and 2,400 freshly drawn tasks (300 per category: prompt, reference, a
        writer's complete answer, and for a third of them every corruption). It does not depend on the world's
        size or splits, and no model output is in it."""
        if self._language is None:
            rng = random.Random(f"language-{self.seed}")
            sources = [[t] for t, _ in build_corpus(self.kb, self.seed, 3000)]
            for i in range(2400):
                t = make_task(self.kb, rng, CATEGORIES[i % len(CATEGORIES)])
                habits = [h for h in draw_habits(rng.choice(WRITERS), t, rng) if h != "unfinished"]
                sources.append([t.instruction, t.context, t.response, write(self.kb, t, habits, rng)]
                               + ([corrupt(self.kb, t, k, rng) for k in CORRUPTIONS] if i % 3 == 0 else []))
            self._language = learn_language(self.kb, sources)
        return self._language

    def lookup(self, instruction: str, context: str = "") -> Task:
        try:
            return self._lookup[(instruction, context)]
        except KeyError:
            raise KeyError("this (instruction, context) is not a prompt of this world, so the labelers have no answer "
                           f"key for it: {instruction[:60]!r}. Score world prompts, or pass task= "
                           "explicitly.") from None

    def corpus(self, n_docs: int) -> list[tuple[str, bool]]:
        """The pretraining corpus: ``n_docs`` (text, ended) documents of plain prose."""
        return build_corpus(self.kb, self.seed, n_docs)

    def variants(self, task: Task, seed: int = 0) -> dict[str, str]:
        """The reference response and each corruption of it (wrong_fact, rude, rambling, …)."""
        rng = random.Random(f"variants-{self.seed}-{seed}-{task.prompt_id}")
        return {"reference": task.response, **{k: corrupt(self.kb, task, k, rng) for k in CORRUPTIONS}}

    def digest(self) -> str:
        """SHA-256 of the knowledge base and all tasks: equal digests mean byte-identical worlds."""
        blob = json.dumps([list(self.kb.facts), [t.to_dict() for t in self.tasks]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def _check_mix(mix: str | dict[str, float]) -> dict[str, float]:
    if isinstance(mix, str):
        if mix not in MIXES:
            raise ValueError(f"unknown category mix {mix!r}; presets are {sorted(MIXES)}, or pass a dict category -> "
                             "weight")
        return dict(MIXES[mix])
    bad = sorted(set(mix) - set(CATEGORIES))
    if bad:
        raise ValueError(f"category mix has unknown categories {bad}; Dolly's categories are {CATEGORIES}")
    total = sum(mix.values())
    if total <= 0 or any(v < 0 for v in mix.values()):
        raise ValueError("category mix weights must be non-negative and not all zero")
    return {c: mix.get(c, 0.0) / total for c in CATEGORIES}


def build_world(seed: int = 0, n_prompts: int = 6000, mix: str | dict[str, float] = "instructgpt",
                split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), max_prompts_per_user: int = 200,
                few_shot_prob: float = 0.15) -> World:
    """Generate a world. Prompts are deduplicated, given to users (≤ ``max_prompts_per_user`` each,
    heavy-tailed like real API traffic) and split train/validation/test *by user*, as InstructGPT did."""
    if max_prompts_per_user < 1:
        raise ValueError("max_prompts_per_user must be at least 1")
    mix_ = _check_mix(mix)
    kb = build_kb(seed)
    rng = random.Random(f"tasks-{seed}")
    cats = [c for c in CATEGORIES if mix_[c] > 0]
    seen: set[tuple[str, str]] = set()
    tasks: list[Task] = []
    attempts = 0
    while len(tasks) < n_prompts:
        cat = rng.choices(cats, weights=[mix_[c] for c in cats])[0]
        for _ in range(200):  # redraw within the category, so deduplication does not distort the mix
            attempts += 1
            t = make_task(kb, rng, cat, few_shot_prob)
            if (t.instruction, t.context) not in seen:  # no prompt twice: a test prompt is never a training prompt
                break
        else:
            raise RuntimeError(f"ran out of distinct {cat} prompts after {len(tasks)} prompts; ask for fewer than "
                               f"{n_prompts} or lower the weight of {cat} in the mix")
        seen.add((t.instruction, t.context))
        t.prompt_id = f"p{len(tasks):05d}"
        tasks.append(t)
    # users: heavy-tailed prompt counts, capped
    i, u = 0, 0
    users: list[list[Task]] = []
    while i < len(tasks):
        n = min(max_prompts_per_user, max(1, int(rng.lognormvariate(2.5, 1.0))))
        for t in tasks[i:i + n]:
            t.user_id = f"u{u:04d}"
        users.append(tasks[i:i + n])
        i, u = i + n, u + 1
    rng.shuffle(users)
    splits: dict[str, list[Task]] = {s: [] for s in SPLITS}
    targets = [f * len(tasks) for f in split_fractions]
    for group in users:  # fill the split furthest below its target
        name = max(range(3), key=lambda k: targets[k] - len(splits[SPLITS[k]]))
        splits[SPLITS[name]].extend(group)
    for s in SPLITS:
        splits[s].sort(key=lambda t: t.prompt_id)
    assign_demonstrations(kb, tasks, seed)
    return World(seed, kb, tasks, splits, mix_)


def world_from_config(cfg, seed: int | None = None) -> World:
    """The world a :class:`rlhf_lite.config.WorldConfig` describes (its fields are build_world's arguments);
    ``seed`` overrides the config's."""
    kwargs = asdict(cfg)
    if seed is not None:
        kwargs["seed"] = seed
    return build_world(**kwargs)
