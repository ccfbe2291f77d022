"""Evaluation against the gold panel: how good are a model's responses, by the world's own standards."""
from __future__ import annotations

from statistics import mean
from typing import Sequence

from .data import render_prompt
from .models import Generation, generate
from .world import CRITERIA, World
from .world.labelers import Labeler, prefer_prob
from .world.tasks import Task


def gold_eval(model, tokenizer, world: World, tasks: list[Task], max_new_tokens: int = 64, temperature: float = 1.0,
              seed: int = 0, batch_size: int = 32, progress: bool = False, fmt: str = "alpaca",
              do_sample: bool = True) -> dict:
    """Generate one response per task (prompt format ``fmt``) and score it with the gold panel.

    Returns ``{"gold": mean gold score, "reference_gold": the references' mean, "criteria": mean of each
    criterion (criteria do not depend on the labeler), "by_category": {category: mean gold}, "eos_rate":
    share of responses that ended with EOS, "samples": [(task, Generation, gold)]}``.
    """
    prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t in tasks]
    gens = generate(model, tokenizer, prompts, max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size,
                    progress=progress, do_sample=do_sample)
    panel = world.panel
    golds = [panel.gold_score(t.instruction, t.context, g.text, g.finished, task=t) for t, g in zip(tasks, gens)]
    refs = [panel.gold_score(t.instruction, t.context, t.response, True, task=t) for t in tasks]
    crit = [panel.labelers[0].score(t.instruction, t.context, g.text, g.finished, task=t).criteria for t, g in zip(tasks, gens)]
    by_cat: dict[str, list[float]] = {}
    for t, s in zip(tasks, golds):
        by_cat.setdefault(t.category, []).append(s)
    return {"gold": mean(golds), "reference_gold": mean(refs), "criteria": {c: mean(x[c] for x in crit) for c in CRITERIA},
            "by_category": {c: mean(v) for c, v in sorted(by_cat.items())}, "eos_rate": mean(g.finished for g in gens),
            "samples": list(zip(tasks, gens, golds))}


def win_rate(tasks: Sequence[Task], a: Sequence[Generation | str], b: Sequence[Generation | str],
             labelers: Sequence[Labeler]) -> float:
    """How often ``labelers`` prefer response ``a`` over ``b`` for the same prompt, in expectation over their
    Bradley–Terry choice noise (ties count half): mean over tasks and labelers of σ((s_a − s_b) / T)."""
    def parts(x):
        return (x.text, x.finished) if isinstance(x, Generation) else (x, None)

    probs = []
    for t, x, y in zip(tasks, a, b):
        (ta, fa), (tb, fb) = parts(x), parts(y)
        for lab in labelers:
            sa = lab.score(t.instruction, t.context, ta, fa, task=t).total
            sb = lab.score(t.instruction, t.context, tb, fb, task=t).total
            probs.append(prefer_prob(sa, sb, lab.temperature))
    return mean(probs)
