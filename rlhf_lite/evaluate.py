"""Evaluation against the gold panel: how good are a model's responses, by the world's own standards."""
from __future__ import annotations

from statistics import mean

from .data import format_prompt
from .models import generate
from .world import CRITERIA, World
from .world.tasks import Task


def gold_eval(model, tokenizer, world: World, tasks: list[Task], max_new_tokens: int = 64, temperature: float = 1.0,
              seed: int = 0, batch_size: int = 32, progress: bool = False) -> dict:
    """Generate one response per task and score it with the gold panel (the panel's mean score).

    Returns ``{"gold": mean gold score, "reference_gold": the references' mean, "criteria": mean of each
    criterion, "by_category": {category: mean gold}, "eos_rate": share of responses that ended with EOS,
    "samples": [(task, Generation, gold)]}``.
    """
    gens = generate(model, tokenizer, [format_prompt(t.instruction, t.context) for t in tasks], max_new_tokens,
                    temperature=temperature, seed=seed, batch_size=batch_size, progress=progress)
    panel = world.panel
    golds = [panel.gold_score(t.instruction, t.context, g.text, g.finished, task=t) for t, g in zip(tasks, gens)]
    refs = [panel.gold_score(t.instruction, t.context, t.response, True, task=t) for t in tasks]
    ref_lab = panel.labelers[0]
    crit = [ref_lab.score(t.instruction, t.context, g.text, g.finished, task=t).criteria for t, g in zip(tasks, gens)]
    by_cat: dict[str, list[float]] = {}
    for t, s in zip(tasks, golds):
        by_cat.setdefault(t.category, []).append(s)
    return {"gold": mean(golds), "reference_gold": mean(refs), "criteria": {c: mean(x[c] for x in crit) for c in CRITERIA},
            "by_category": {c: mean(v) for c, v in sorted(by_cat.items())}, "eos_rate": mean(g.finished for g in gens),
            "samples": list(zip(tasks, gens, golds))}
