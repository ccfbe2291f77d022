"""Where a lesson's signal gets lost: does the model know the world's facts, and which of the panel's criteria does
the reward model read? (``python -m rlhf_lite diagnose``)

TinyWorld's gold panel scores seven criteria (``world.labelers``). A reward model is trained on the labelers'
rankings and scores whole answers, so its accuracy alone does not say *what* it learned. Here every validation pair
whose gold scores differ clearly is credited to the criterion that decides it, and the reward model's agreement with
the gold panel is counted per criterion: a criterion on which it agrees no better than a coin is one that PPO cannot
be taught to improve. :func:`fact_recall` asks the other half of the question: is the knowledge such a criterion
needs in the model at all? :func:`reward_gold_frontier` asks what happens downstream: does a trained policy get the
gold score its reward promises, as best-of-n sampling of the SFT model does? :func:`off_task` looks at the judge:
how often does an answer not take up its task at all, and what score does the panel still give it?
"""
from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..best_of_n import best_of_n, best_of_n_kl
from ..data import render_prompt
from ..dpo import sequence_logps
from ..evaluate import bootstrap_ci, prompt_win_rates
from ..feedback import agreement, pref_probs
from ..models import generate, load_base, pad_batch
from ..pipeline import shown_path
from ..policy_stages import load_policy, policy_adapter
from ..reward import load_reward_ensemble, load_reward_model, record_scores, score_responses
from ..runtime import pick_device
from ..stages import base_checkpoint, comparison_data, reward_checkpoint, sft_checkpoint
from ..world import CRITERIA, World, world_from_config
from ..world.kb import Fact, make_names, person_facts, state
from ..world.labelers import GATE, _norm, list_items
from ..world.tasks import Task

LENGTH = "length"
"""The part of a gold difference that comes from the labelers' taste for long answers (not a criterion)."""


def _score_parts(world: World, task: Task, text: str, finished: bool | None) -> list[tuple]:
    """Per labeler: (criteria, weighted mean of the non-gate criteria, length bonus, the weights, their sum)."""
    out = []
    for lab in world.panel.labelers:
        s = lab.score(task.instruction, task.context, text, finished, task=task)
        total_w = sum(lab.weights.values())
        mean = sum(lab.weights[c] * s.criteria[c] for c in lab.weights) / total_w
        out.append((s.criteria, mean, s.length_bonus, lab.weights, total_w))
    return out


def _difference(pa: list[tuple], pb: list[tuple]) -> dict[str, float]:
    parts = dict.fromkeys(CRITERIA + [LENGTH], 0.0)
    n = len(pa)
    for (ca, ma, ba, w, total_w), (cb, mb, bb, _, _) in zip(pa, pb):
        g_mean = (ca[GATE] + cb[GATE]) / 2
        for c in w:
            parts[c] += g_mean * w[c] / total_w * (ca[c] - cb[c]) / n
        parts[GATE] += (ma + mb) / 2 * (ca[GATE] - cb[GATE]) / n
        parts[LENGTH] += (ba - bb) / n
    return parts


def gold_difference_parts(world: World, task: Task, a: str, b: str, finished_a: bool | None = None,
                          finished_b: bool | None = None) -> dict[str, float]:
    """Split the gold difference gold(a) − gold(b) into one part per criterion, exactly.

    A labeler scores ``g · m + bonus`` with ``g`` the fluency gate and ``m = Σ_c w_c v_c / Σ_c w_c`` the weighted
    mean of the other criteria. Since ``g_a m_a − g_b m_b = ḡ (m_a − m_b) + m̄ (g_a − g_b)`` (ḡ, m̄: the means of the
    two answers' values), criterion c's part is ``ḡ · w_c/Σw · (v_c,a − v_c,b)``, fluency's is ``m̄ · (g_a − g_b)``,
    and :data:`LENGTH` holds the length bonus's difference; averaged over the panel like the gold score, the parts
    sum to gold(a) − gold(b)."""
    return _difference(_score_parts(world, task, a, finished_a), _score_parts(world, task, b, finished_b))


def deciding_criterion(parts: dict[str, float]) -> str:
    """The part that pushes hardest in the direction of the total difference (the criterion a pair is "about")."""
    sign = 1.0 if sum(parts.values()) >= 0 else -1.0
    return max(parts, key=lambda c: sign * parts[c])


def agreement_by_criterion(world: World, records: Sequence[dict], judge: Callable[[dict], Sequence[float]],
                           min_gap: float = 0.1) -> dict:
    """How often ``judge`` (e.g. :func:`rlhf_lite.reward.record_scores` of a reward model) orders a pair of answers
    as the gold panel does, per deciding criterion.

    ``records``: comparison records (``prompt_id``, ``responses``, ``finished``); every pair of different answers
    whose gold scores differ by at least ``min_gap`` counts. Returns ``{"pairs", "agreement", "by_criterion":
    {criterion: {"pairs", "share", "agreement", "mean_gap", "misses"}}}``, criteria ordered by how many pairs they
    decide; a tie in the judge's scores counts half. ``misses``: the pairs the judge orders against the gold panel,
    each ``{"prompt_id", "better", "worse", "gap"}`` (the gold panel's better answer first), largest gap first."""
    hits: dict[str, list[float]] = defaultdict(list)
    gaps: dict[str, list[float]] = defaultdict(list)
    misses: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        task = world.tasks_by_id[rec["prompt_id"]]
        fin = rec.get("finished") or [True] * len(rec["responses"])
        scores = judge(rec)
        each = [_score_parts(world, task, r, f) for r, f in zip(rec["responses"], fin)]  # once per answer
        for i, j in itertools.combinations(range(len(rec["responses"])), 2):
            if rec["responses"][i] == rec["responses"][j]:
                continue
            parts = _difference(each[i], each[j])
            gap = sum(parts.values())
            if abs(gap) < min_gap:
                continue
            d = scores[i] - scores[j]
            key = deciding_criterion(parts)
            hits[key].append(0.5 if d == 0 else float((d > 0) == (gap > 0)))
            gaps[key].append(abs(gap))
            if hits[key][-1] == 0.0:
                better, worse = (i, j) if gap > 0 else (j, i)
                misses[key].append({"prompt_id": rec["prompt_id"], "better": rec["responses"][better],
                                    "worse": rec["responses"][worse], "gap": abs(gap)})
    n = sum(len(v) for v in hits.values())
    by = {c: {"pairs": len(hits[c]), "share": len(hits[c]) / n, "agreement": sum(hits[c]) / len(hits[c]),
              "mean_gap": sum(gaps[c]) / len(gaps[c]), "misses": sorted(misses[c], key=lambda m: -m["gap"])}
          for c in sorted(hits, key=lambda c: -len(hits[c]))}
    return {"pairs": n, "agreement": sum(sum(v) for v in hits.values()) / n if n else float("nan"),
            "by_criterion": by}


def accuracy_difference(world: World, records: Sequence[dict], judge_a: Callable[[dict], Sequence[float]],
                        judge_b: Callable[[dict], Sequence[float]], labelers, seed: int = 0) -> dict:
    """Two judges' accuracy against ``labelers`` (expected agreement over every distinct-answer pair of ``records``,
    as :func:`rlhf_lite.reward.rm_accuracy` counts it) and the difference a − b with its 95 % paired-bootstrap
    interval: the prompts are resampled, each carrying its pairs, so both judges are compared on the same pairs.
    Returns ``{"a", "b", "difference", "difference_ci", "pairs", "prompts"}``; an interval that contains 0 is noise."""
    per_prompt, n = [], 0
    for rec in records:
        pa, pb = pref_probs(world, rec, judge_a), pref_probs(world, rec, judge_b)
        labs = [pref_probs(world, rec, lab) for lab in labelers]
        agree = [sum(agreement([p], [q]) for q in labs) / len(labelers) for p in (pa, pb)]
        per_prompt.append((agree[0] * len(pa), agree[1] * len(pa)))
        n += len(pa)
    if not n:
        raise ValueError("accuracy_difference: the records hold no pair of different answers to compare on")
    k = len(per_prompt)
    a, b = sum(x for x, _ in per_prompt) / n, sum(y for _, y in per_prompt) / n
    # each prompt's share of the pair-weighted difference, scaled so that their plain mean is a − b
    diffs = [(x - y) * k / n for x, y in per_prompt]
    return {"a": a, "b": b, "difference": a - b, "difference_ci": bootstrap_ci(diffs, seed=seed), "pairs": n,
            "prompts": k}


@torch.no_grad()
def reward_and_gold(model, tokenizer, rm, rm_tokenizer, world: World, tasks: Sequence[Task], fmt: str = "alpaca",
                    max_new_tokens: int = 64, max_length: int = 256, seed: int = 0) -> dict:
    """One sample per task from ``model`` (T = 1, as PPO samples), scored by the reward model and by the gold panel.
    Returns ``{"reward": [N], "gold": [N], "gens": [N Generations]}`` (N = len(tasks)), in the order of ``tasks``."""
    prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t in tasks]
    gens = generate(model, tokenizer, prompts, max_new_tokens, seed=seed, batch_size=64)
    reward = score_responses(rm, rm_tokenizer, prompts, [g.text for g in gens], [g.finished for g in gens], max_length)
    return {"reward": reward, "gold": world.panel.gold_scores(tasks, gens), "gens": gens}


def reward_gold_frontier(samples: Sequence[dict], policies: dict[str, dict], ns: Sequence[int] = (1, 2, 4, 8),
                         seed: int = 0) -> dict:
    """Does a policy get the gold score its reward promises? ``samples``: :func:`reward_and_gold` of the SFT model
    with different seeds (at least ``max(ns)``); ``policies``: name → :func:`reward_and_gold` of a trained policy on
    the same tasks. Best-of-n of the SFT samples traces the frontier: mean reward and mean gold for each n (its KL to
    SFT is at most log n − (n − 1)/n nats). Each policy is then set beside the rung whose mean reward is nearest its
    own, with the gold difference policy − rung and its 95 % paired bootstrap over tasks: a policy whose reward has
    risen but whose gold lags the rung at that reward has found the reward model's errors (Gao et al. 2022 find that
    RL spends more KL than best-of-n for the same gold). ``gold_best_of`` is best-of-n with the gold score itself
    picking, a perfect reward model of the panel's mean: the most any reward model could buy at that KL.
    Returns ``{"best_of": {n: {"reward", "gold", "kl_bound", "pick"}}, "gold_best_of": {n: {"reward", "gold",
    "pick"}}, "policies": {name: {"reward", "gold", "gold_vs_sft", "gold_vs_sft_ci", "nearest_n",
    "gold_vs_nearest", "gold_vs_nearest_ci"}}}`` (``pick``: the chosen sample's index per task; ``gold_vs_sft``:
    against the first SFT sample, best-of-1)."""
    if len(samples) < max(ns):
        raise ValueError(f"reward_gold_frontier: best-of-{max(ns)} needs {max(ns)} samples per task, got "
                         f"{len(samples)}")
    n_tasks = len(samples[0]["reward"])

    def rung(n: int, by: str) -> dict:
        pick = best_of_n([[s[by][i] for s in samples[:n]] for i in range(n_tasks)], n)
        return {"reward": sum(samples[j]["reward"][i] for i, j in enumerate(pick)) / n_tasks,
                "gold": sum(samples[j]["gold"][i] for i, j in enumerate(pick)) / n_tasks, "pick": pick}

    rungs = {n: {**rung(n, "reward"), "kl_bound": best_of_n_kl(n)} for n in ns}
    picked = {n: [samples[j]["gold"][i] for i, j in enumerate(r["pick"])] for n, r in rungs.items()}
    out = {}
    for name, p in policies.items():
        reward = sum(p["reward"]) / n_tasks
        near = min(ns, key=lambda n: abs(rungs[n]["reward"] - reward))
        diffs = [a - b for a, b in zip(p["gold"], picked[near])]
        vs_sft = [a - b for a, b in zip(p["gold"], samples[0]["gold"])]
        out[name] = {"reward": reward, "gold": sum(p["gold"]) / n_tasks,
                     "gold_vs_sft": sum(vs_sft) / n_tasks, "gold_vs_sft_ci": bootstrap_ci(vs_sft, seed=seed),
                     "nearest_n": near, "gold_vs_nearest": sum(diffs) / n_tasks,
                     "gold_vs_nearest_ci": bootstrap_ci(diffs, seed=seed)}
    return {"best_of": rungs, "gold_best_of": {n: rung(n, "gold") for n in ns}, "policies": out}


def addresses_task(task: Task, text: str) -> bool:
    """Does ``text`` take up ``task`` at all: does it contain the expected content, a valid item of a list task, or
    any word of the task's topic (``task.meta``)? A lexical test, close to the one the panel's ``concise`` applies
    to each sentence. An answer that fails it is off-task whatever its form ("old_miller." asked which towns a text
    names); a task without a topic is taken up by any answer."""
    meta, low = task.meta, text.lower()
    if any(e.lower() in low for e in meta.get("expected", [])):
        return True
    valid = {_norm(v) for v in meta.get("valid_items", [])}
    if any(_norm(i) in valid for i in list_items(text)):
        return True
    topic = [t.lower() for t in meta.get("topic", []) if t]
    return not topic or any(t in low for t in topic)


def off_task(world: World, tasks: Sequence[Task], responses: Sequence, against: Sequence | None = None) -> dict:
    """How often ``responses`` (Generations, one per task) do not take up their task (:func:`addresses_task`), and
    what the gold panel gives them: ``{"share", "gold_off_task", "gold_on_task"}`` (a mean is None when no answer
    is in its group). With ``against`` (another model's answers to the same tasks) also ``"wins"``, how often the
    held-out labelers prefer ``responses`` (the mean of σ((s_a − s_b)/T), as ``evaluate.win_rate``), and
    ``"wins_off_task"``, the part of those wins carried by an off-task answer."""
    from ..evaluate import prompt_win_rates

    gold = world.panel.gold_scores(tasks, responses)
    off = [not addresses_task(t, r.text) for t, r in zip(tasks, responses)]

    def mean(xs):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else None

    out = {"share": mean(off), "gold_off_task": mean(g for g, o in zip(gold, off) if o),
           "gold_on_task": mean(g for g, o in zip(gold, off) if not o)}
    if against is not None:
        wins = prompt_win_rates(tasks, responses, against, world.panel.held_out)
        out["wins"] = mean(wins)
        out["wins_off_task"] = sum(w for w, o in zip(wins, off) if o) / max(sum(wins), 1e-12)
    return out


@contextlib.contextmanager
def _eval_mode(model):
    """Run the block with ``model`` in eval mode (no dropout), then put it back in the mode it was in."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _logps_after(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """log p(continuation | prefix) for each (prefix ids, continuation ids) pair: the sum over the continuation's
    tokens only."""
    device = next(model.parameters()).device
    out: list[float] = []
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k:k + batch_size]
        b = pad_batch([p + c for p, c in chunk], tokenizer.eos_token_id)
        ids, attn = b["input_ids"].to(device), b["attention_mask"].to(device)
        scored = torch.zeros_like(attn)  # [B, T]: 1 on the continuation's tokens
        for row, (p, c) in enumerate(chunk):
            scored[row, len(p):len(p) + len(c)] = 1
        out += sequence_logps(model, ids, attn, scored).tolist()
    return out


def _recall(model, tokenizer, probes: Sequence[tuple[str, list[int], list[str]]], batch_size: int) -> dict:
    """Probes (kind, prefix ids, sentences with the true one first): ``{kind: {"facts", "recall", "chance"}}``, with
    recall the share of probes whose true sentence is the most likely after the prefix, and ``"all"``."""
    recalled: dict[str, list[bool]] = defaultdict(list)
    chance: dict[str, list[float]] = defaultdict(list)
    for kind, prefix, sentences in probes:
        logps = _logps_after(model, tokenizer, [(prefix, tokenizer.encode(x)) for x in sentences], batch_size)
        recalled[kind].append(max(range(len(logps)), key=logps.__getitem__) == 0)
        chance[kind].append(1 / len(sentences))
    out = {k: {"facts": len(v), "recall": sum(v) / len(v), "chance": sum(chance[k]) / len(chance[k])}
           for k, v in sorted(recalled.items())}
    out["all"] = sum(sum(v) for v in recalled.values()) / max(1, sum(len(v) for v in recalled.values()))
    return out


def _values(world: World) -> dict[str, set[str]]:
    """Every value each relation of the knowledge base takes."""
    values: dict[str, set[str]] = defaultdict(set)
    for f in world.kb.facts:
        values[f.relation].add(f.value)
    return values


def _with_value(fact: Fact, values: Sequence[str]) -> list[str]:
    """``fact``'s plain sentence, then the same sentence with each other value in ``values``."""
    return [state(Fact(fact.subject, fact.relation, v)) for v in [fact.value] + sorted(set(values) - {fact.value})]


@torch.no_grad()
def fact_recall(model, tokenizer, world: World, n_facts: int = 400, seed: int = 0, batch_size: int = 32) -> dict:
    """Does a language model know the knowledge base? Each fact is written as its plain sentence (``kb.state``),
    "<subject ...> <value>.", once with every value its relation takes in the world; the model knows the fact
    when the true sentence has the highest log-probability. ``n_facts`` facts are drawn at random (friendships,
    whose values are people, are left out). Returns ``{relation: {"facts", "recall", "chance"}}`` and ``"all"``:
    the share of all drawn facts recalled."""
    values = _values(world)
    facts = [f for f in world.kb.facts if f.relation != "friend" and len(values[f.relation]) > 1
             and state(f).rstrip(".").endswith(f.value)]
    facts = random.Random(seed).sample(facts, min(n_facts, len(facts)))
    probes = [(f.relation, [tokenizer.eos_token_id], _with_value(f, values[f.relation])) for f in facts]
    with _eval_mode(model):
        return _recall(model, tokenizer, probes, batch_size)


@torch.no_grad()
def context_recall(model, tokenizer, world: World, n_people: int = 200, seed: int = 0, batch_size: int = 32) -> dict:
    """Can a language model read a passage? The closed-domain tasks' situation without their instructions: a
    person who is not in the knowledge base (a new name with random facts, as in a closed task's context) is
    described in three sentences, and one of those facts is written again after it. Knowledge cannot help (the
    person is new), only the passage can. Two measurements over ``n_people`` passages:

    - ``name_copy``: the mean probability that the model, given the passage and the person's first name, continues
      with their surname, i.e. that a sample at temperature 1 copies the name (a closed task's answer starts so);
    - ``value_recall``: the share of passages whose value wins when the fact's plain sentence is written once with
      every value its relation takes (the passage's among them), as in :func:`fact_recall`; ``value_chance`` is
      what a model that ignores the passage would score.

    Returns ``{"passages", "name_copy", "value_recall", "value_chance"}``."""
    rng = random.Random(f"context-recall-{seed}")
    kb = world.kb
    values = _values(world)
    probes, copies = [], []
    for _ in range(n_people):
        name = make_names(rng, 1, "person", set(kb.people))[0]
        facts = rng.sample(person_facts(rng, name, kb.towns, kb.foods), 3)
        asked = rng.choice(facts)
        prefix = [tokenizer.eos_token_id] + tokenizer.encode(" ".join(state(f, rng) for f in facts))
        # " ": a new sentence after the passage
        probes.append(("value", prefix, [" " + x for x in _with_value(asked, values[asked.relation])]))
        first, surname = name.split(" ", 1)
        copies.append((prefix + tokenizer.encode(" " + first), tokenizer.encode(" " + surname)))
    with _eval_mode(model):
        value = _recall(model, tokenizer, probes, batch_size)["value"]
        copied = [math.exp(x) for x in _logps_after(model, tokenizer, copies, batch_size)]  # p(surname | …)
    return {"passages": n_people, "name_copy": sum(copied) / len(copied), "value_recall": value["recall"],
            "value_chance": value["chance"]}


# ---------------------------------------------------------------------------------------------
# The report of ``python -m rlhf_lite diagnose``
# ---------------------------------------------------------------------------------------------
def verdict(lo: float, hi: float, up: str = "better", down: str = "worse") -> str:
    """What a difference's 95 % interval [lo, hi] says: noise when it contains 0, else ``up`` or ``down``."""
    return "noise" if lo <= 0 <= hi else up if lo > 0 else down


def diagnose(profile, facts: int = 400, min_gap: float = 0.1, reward_model: Sequence[str] | None = None,
             against: Sequence[str] | None = None, examples: int = 0, policy: Sequence[str] | None = None,
             n: int = 300, device: str | None = None) -> dict:
    """``diagnose``: the base and SFT models' recall of the world's facts and of a passage's, how often each takes up
    its task, and which criteria the reward model (``reward_model``: saved ones, an ensemble if several) reads, with
    ``against`` its difference from other reward models; ``policy``: trained policies beside best-of-n
    (:func:`policy_frontier`). Prints the report and returns its numbers."""
    if profile.data != "tinyworld":
        raise ValueError(f"profile {profile.name!r} has no gold panel to diagnose against (data {profile.data!r}); "
                         "use a TinyWorld profile: tiny, smoke or gpt2")
    for path in policy or []:  # before the long work, not after it
        policy_adapter(path, "--policy ")
    device = pick_device(device)
    world = world_from_config(profile.world)
    report: dict = {}
    print(f"profile {profile.name}: does each model know the world's facts? (the true value ranked first among every "
          f"value its relation takes, {facts} facts)")
    models = {name: load_base(str(path), device=device)
              for name, path in (("base", base_checkpoint(profile, device=device)),
                                 ("SFT", sft_checkpoint(profile, device=device)))}
    for name, (model, tok) in models.items():
        r = report.setdefault(name, {})["fact_recall"] = fact_recall(model, tok, world, n_facts=facts)
        rows = ", ".join(f"{k} {v['recall']:.2f}" for k, v in r.items() if k != "all")
        print(f"  {name:5s} {r['all']:.3f}   by relation: {rows}")
    print(f"can each model read a passage? ({facts} passages about new people, three facts each: the probability "
          "of continuing a person's first name with the surname the passage gave; one fact written again with every "
          "value of its relation)")
    for name, (model, tok) in models.items():
        r = report[name]["context_recall"] = context_recall(model, tok, world, n_people=facts)
        print(f"  {name:5s} copies the new name {r['name_copy']:.1%} of the time; ranks the passage's value first "
              f"{r['value_recall']:.3f} (chance {r['value_chance']:.3f})")
    tasks = world.splits["test"]
    print(f"does each model take up the task? ({len(tasks)} test prompts, one answer each; an answer with neither the "
          "expected content, nor a valid list item, nor any word of the task's topic is off-task)")
    answers = {name: generate(model, tok, [render_prompt(tok, t.instruction, t.context, profile.sft.prompt_format)
                                           for t in tasks], profile.max_new_tokens, seed=0)
               for name, (model, tok) in models.items()}
    report["base"]["off_task"] = off_task(world, tasks, answers["base"], against=answers["SFT"])  # base's wins too
    report["SFT"]["off_task"] = off_task(world, tasks, answers["SFT"])
    for name in models:
        r = report[name]["off_task"]
        shown = {k: "—" if r[k] is None else f"{r[k]:.3f}" for k in ("gold_off_task", "gold_on_task")}
        print(f"  {name:5s} off-task {r['share']:.1%} of answers, gold {shown['gold_off_task']} "
              f"(on-task answers {shown['gold_on_task']})")
    r = report["base"]["off_task"]
    print(f"  the held-out labelers prefer base's answer to SFT's {r['wins']:.1%} of the time; off-task answers carry "
          f"{r['wins_off_task']:.1%} of those wins")
    val = comparison_data(profile, device=device)["validation"]

    def judge_of(paths):  # the saved reward models' mean reward, each answer of ``val`` scored once
        rm, rm_tok = (load_reward_ensemble(paths, "mean", device) if len(paths) > 1 else
                      load_reward_model(paths[0], device=device))
        judge = record_scores(rm, rm_tok, profile.reward.max_length)
        scores = {id(rec): judge(rec) for rec in val}
        return lambda rec: scores[id(rec)]

    paths = list(reward_model or [reward_checkpoint(profile, device=device)])
    judge = judge_of(paths)
    name = "the reward model" if len(paths) == 1 else f"the ensemble of {len(paths)} reward models (mean reward)"
    # against itself, the difference is 0: the held-out labelers are scored once either way
    d = report["reward_model"] = accuracy_difference(world, val, judge, judge_of(against) if against else judge,
                                                     world.panel.held_out)
    print(f"\n{name}: {', '.join(shown_path(p) for p in paths)}\nagrees with the held-out labelers on {d['a']:.3f} of "
          "the validation pairs of SFT samples")
    if against:
        lo, hi = d["difference_ci"]
        print(f"against {', '.join(against)} ({d['b']:.3f} on the same {d['pairs']:,} pairs of {d['prompts']} "
              f"prompts): {d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] (95 % paired bootstrap): {verdict(lo, hi)}")
    a = report["by_criterion"] = agreement_by_criterion(world, val, judge, min_gap)
    print(f"which criteria does it read? {a['pairs']} validation pairs whose gold scores differ by >= {min_gap}, each "
          f"credited to the criterion that decides it; it orders {a['agreement']:.1%} of them as the gold panel does")
    print(f"  {'criterion':15s} {'pairs':>6s} {'share':>6s} {'RM agrees':>9s} {'mean gap':>8s}")
    for c, v in a["by_criterion"].items():
        print(f"  {c:15s} {v['pairs']:6d} {v['share']:6.1%} {v['agreement']:9.1%} {v['mean_gap']:8.3f}")
    for c, v in a["by_criterion"].items():
        for m in v["misses"][:examples]:
            if m is v["misses"][0]:
                print(f"\n{c}: pairs it orders against the gold panel (largest gold gap first)")
            task = world.tasks_by_id[m["prompt_id"]]
            print(f"  {task.instruction[:90]!r} (gold gap {m['gap']:.2f})\n    better: {m['better'][:110]!r}\n"
                  f"    worse:  {m['worse'][:110]!r}")
    if policy:
        report["policies"] = policy_frontier(profile, world, policy, paths[0] if len(paths) == 1 else
                                             reward_checkpoint(profile, device=device), n, device)
    return report


def policy_frontier(profile, world: World, policies: Sequence[str], rm_path, n: int = 300,
                    device: str | None = None) -> dict:
    """``diagnose --policy``: trained policies beside best-of-n of the SFT model on the first ``n`` test prompts, in
    reward and in gold, each judged against one more SFT answer that is none of the candidates; every policy is
    compared with best-of-8 and with the first policy (95 % paired bootstraps). Returns
    :func:`reward_gold_frontier`'s numbers with the win rates (``wins``)."""
    rm, rm_tok = load_reward_model(rm_path, device=device)
    sft, tok = load_base(str(sft_checkpoint(profile, device=device)), device=device)
    tasks = world.splits["test"][:n]
    ns = (1, 2, 4, 8)
    print(f"\ndoes a policy get the gold its reward promises? {len(tasks)} test prompts; best-of-n of SFT samples "
          f"(the reward model {shown_path(rm_path)} picks) against the policies, one sample each")

    def run(model, seed):
        return reward_and_gold(model, tok, rm, rm_tok, world, tasks, profile.sft.prompt_format,
                               profile.max_new_tokens, profile.reward.max_length, seed)

    samples = [run(sft, seed) for seed in range(max(ns))]
    sft_answers = run(sft, max(ns))["gens"]  # one more SFT answer, none of the candidates: what all are judged against
    answers = {str(path): run(load_policy(profile, path, device)[0], 0) for path in policies}
    f = reward_gold_frontier(samples, answers, ns)
    wins: dict[str, list[float]] = {}  # label -> per-prompt P(preferred to the SFT answer)

    def preferred(gens, label: str) -> str:
        wins[label] = prompt_win_rates(tasks, gens, sft_answers, world.panel.held_out)
        lo, hi = bootstrap_ci(wins[label])
        return f"{sum(wins[label]) / len(tasks):6.1%} [{lo:.1%}, {hi:.1%}]"

    def chosen(r) -> list:
        return [samples[j]["gens"][i] for i, j in enumerate(r["pick"])]

    def diff(r, key):
        lo, hi = r[f"{key}_ci"]
        return f"{r[key]:+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict(lo, hi, 'above', 'below')}"

    print(f"  {'':30s} {'reward':>7s} {'gold':>6s}  held-out labelers prefer it to another SFT answer [95 %]")
    for k, r in f["best_of"].items():
        label = f"SFT best-of-{k} (KL ≤ {r['kl_bound']:.2f})"
        print(f"  {label:30s} {r['reward']:+7.3f} {r['gold']:6.3f}  {preferred(chosen(r), f'best-of-{k}')}")
    for k, r in f["gold_best_of"].items():
        if k > 1:
            label = f"  gold panel's best-of-{k}"
            print(f"  {label:30s} {r['reward']:+7.3f} {r['gold']:6.3f}  {preferred(chosen(r), label)}")
    top, first = f"best-of-{max(ns)}", next(iter(f["policies"]))
    for name, r in f["policies"].items():
        print(f"  {Path(name).name[:30]:30s} {r['reward']:+7.3f} {r['gold']:6.3f}  "
              f"{preferred(answers[name]['gens'], name)}\n"
              f"      gold vs SFT best-of-1 {diff(r, 'gold_vs_sft')}; vs best-of-{r['nearest_n']} (nearest reward) "
              f"{diff(r, 'gold_vs_nearest')}")
        for other in (top,) if name == first else (top, first):
            gap = [a - b for a, b in zip(wins[name], wins[other])]
            lo, hi = bootstrap_ci(gap)
            print(f"      its win rate minus {Path(other).name}'s: {100 * sum(gap) / len(gap):+.1f} points "
                  f"[{100 * lo:+.1f}, {100 * hi:+.1f}] {verdict(lo, hi, 'above', 'below')}")
    print("  (95 % paired bootstrap over the prompts; every policy after the first is also compared with the first; "
          "a policy below the best-of-n of equal reward has found the reward model's errors; in the gold panel's "
          "best-of-n the panel's mean score picks, a perfect reward model: the most any reward model could buy at that "
          "KL)")
    return {**f, "wins": {k: sum(v) / len(v) for k, v in wins.items()}}
