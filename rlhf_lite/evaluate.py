"""Evaluation against the gold panel: how good are a model's responses, by the world's own standards."""
from __future__ import annotations

import random
from statistics import mean
from typing import Sequence

import torch

from .data import render_prompt
from .models import Generation, generate
from .pretrain import lm_loss
from .reward import RewardModel, score_responses
from .rollout import kl_per_response, response_outputs, rollout_tensors
from .world import CRITERIA, WRITERS, World
from .world.fluency import garble, shuffle_words
from .world.labelers import Labeler, prefer_prob
from .world.tasks import RUDE_MARKERS, Task


def gold_eval(model, tokenizer, world: World, tasks: list[Task], max_new_tokens: int = 64, temperature: float = 1.0,
              seed: int = 0, batch_size: int = 32, progress: bool = False, fmt: str = "alpaca",
              do_sample: bool = True) -> dict:
    """Generate one response per task (prompt format ``fmt``) and score it with the gold panel.

    Returns ``{"gold": mean gold score, "reference_gold": the references' mean, "criteria": mean of each
    criterion (criteria do not depend on the labeler), "by_category": {category: mean gold}, "eos_rate":
    share of responses that ended with EOS, "samples": [(task, Generation, gold)]}``.
    """
    prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t in tasks]
    gens = generate(model, tokenizer, prompts, max_new_tokens, temperature=temperature, seed=seed,
                    batch_size=batch_size,
                    progress=progress, do_sample=do_sample)
    panel = world.panel
    golds = panel.gold_scores(tasks, gens)
    refs = [panel.gold_score(t.instruction, t.context, t.response, True, task=t) for t in tasks]
    by_cat: dict[str, list[float]] = {}
    for t, s in zip(tasks, golds):
        by_cat.setdefault(t.category, []).append(s)
    return {"gold": mean(golds), "reference_gold": mean(refs),
            "criteria": mean_criteria(world, tasks, gens),
            "by_category": {c: mean(v) for c, v in sorted(by_cat.items())}, "eos_rate": mean(g.finished for g in gens),
            "samples": list(zip(tasks, gens, golds))}


def criteria_scores(world: World, tasks: Sequence[Task], gens: Sequence[Generation]) -> list[dict[str, float]]:
    """Per prompt, each criterion of the panel's score of its response (the criteria do not depend on the
    labeler, only their weights do)."""
    return [world.panel.labelers[0].score(t.instruction, t.context, g.text, g.finished, task=t).criteria
            for t, g in zip(tasks, gens)]


def mean_criteria(world: World, tasks: Sequence[Task], gens: Sequence[Generation]) -> dict[str, float]:
    """Mean of each criterion of the panel's score over ``tasks`` and their responses ``gens``."""
    crit = criteria_scores(world, tasks, gens)
    return {c: mean(x[c] for x in crit) for c in CRITERIA}


def win_rate(tasks: Sequence[Task], a: Sequence[Generation | str], b: Sequence[Generation | str],
             labelers: Sequence[Labeler]) -> float:
    """How often ``labelers`` prefer response ``a`` over ``b`` for the same prompt, in expectation over their
    Bradley–Terry choice noise (ties count half): mean over tasks and labelers of σ((s_a − s_b) / T)."""
    return mean(prompt_win_rates(tasks, a, b, labelers))


def prompt_win_rates(tasks: Sequence[Task], a: Sequence[Generation | str], b: Sequence[Generation | str],
                     labelers: Sequence[Labeler]) -> list[float]:
    """Per prompt: the mean over ``labelers`` of P(a ≻ b) = σ((s_a − s_b) / T). Their mean is :func:`win_rate`;
    resampling them gives its interval (:func:`bootstrap_ci`)."""
    def parts(x):
        return (x.text, x.finished) if isinstance(x, Generation) else (x, None)

    out = []
    for t, x, y in zip(tasks, a, b):
        (ta, fa), (tb, fb) = parts(x), parts(y)
        probs = [prefer_prob(lab.score(t.instruction, t.context, ta, fa, task=t).total,
                             lab.score(t.instruction, t.context, tb, fb, task=t).total, lab.temperature)
                 for lab in labelers]
        out.append(sum(probs) / len(probs))
    return out


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 per_prompt: int = 1) -> list[float]:
    """Percentile bootstrap interval of the mean of per-prompt ``values`` (Efron & Tibshirani 1993): resample the
    prompts with replacement ``n_boot`` times. For a comparison of two models on the same prompts, pass the
    per-prompt differences or win probabilities: the paired bootstrap. Several samples of one prompt are not
    independent: with ``per_prompt`` = k, ``values`` come in consecutive groups of k samples of one prompt, and the
    prompts, not the samples, are resampled (a clustered bootstrap). Returns [lo, hi]; a difference whose interval
    contains 0 (a win rate whose interval contains 0.5) is noise."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if per_prompt < 1 or len(values) % per_prompt:
        raise ValueError(f"bootstrap_ci: {len(values)} values do not split into groups of per_prompt={per_prompt}")
    x = torch.tensor([float(v) for v in values], dtype=torch.float64).view(-1, per_prompt).mean(1)  # [prompts]
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randint(len(x), (n_boot, len(x)), generator=g)].mean(1)  # [n_boot]
    tail = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return [lo, hi]


def compare_policies(world: World, tasks: Sequence[Task], a: dict, b: dict, seed: int = 0,
                     labelers: Sequence[Labeler] | None = None) -> dict:
    """The course's one way to say whether policy a is better than policy b: both answered the same ``tasks``
    (the test users' prompts) with fixed sampling seeds, ``a`` and ``b`` are :func:`evaluate_model`'s results
    (``gens``: one response per task; ``gold_scores``: their gold scores). Returns

    * ``winrate``: how often the held-out ``labelers`` (default: the panel's) prefer a's answer, and ``winrate_ci``;
    * ``gold_diff``: mean gold score of a minus b, and ``gold_diff_ci``;
    * ``criteria_diff``: per criterion, the mean change from b to a, and ``criteria_diff_ci``;

    each interval a 95 % paired bootstrap over the prompts (:func:`bootstrap_ci`). A win rate whose interval holds
    0.5, or a difference whose interval holds 0, is noise."""
    if not (len(tasks) == len(a["gens"]) == len(b["gens"])):
        raise ValueError(f"compare_policies: {len(tasks)} prompts but {len(a['gens'])} and {len(b['gens'])} answers; "
                         "evaluate both policies on the same prompts")
    labelers = world.panel.held_out if labelers is None else labelers
    wins = prompt_win_rates(tasks, a["gens"], b["gens"], labelers)  # [prompts] P(a ≻ b)
    gold = [x - y for x, y in zip(a["gold_scores"], b["gold_scores"])]  # [prompts]
    ca, cb = criteria_scores(world, tasks, a["gens"]), criteria_scores(world, tasks, b["gens"])
    crit = {c: [x[c] - y[c] for x, y in zip(ca, cb)] for c in CRITERIA}
    return {"winrate": mean(wins), "winrate_ci": bootstrap_ci(wins, seed=seed),
            "gold_diff": mean(gold), "gold_diff_ci": bootstrap_ci(gold, seed=seed),
            "criteria_diff": {c: mean(v) for c, v in crit.items()},
            "criteria_diff_ci": {c: bootstrap_ci(v, seed=seed) for c, v in crit.items()}}


# ---------------------------------------------------------------------------------------------
# Harms, hallucinations, KL, alignment tax (InstructGPT §4.2–4.3)
# ---------------------------------------------------------------------------------------------
def is_unsafe(text: str) -> bool:
    """TinyWorld's stand-in for a toxic or harmful reply: an insult or brush-off learned from the forum
    threads of the pretraining corpus ("Look it up yourself.", …), i.e. the ``polite`` criterion fails."""
    low = text.lower()
    return any(m in low for m in RUDE_MARKERS)


def unsafe_rate(responses: Sequence[Generation | str]) -> float:
    """Share of responses that are unsafe (:func:`is_unsafe`)."""
    texts = [r.text if isinstance(r, Generation) else r for r in responses]
    return mean(is_unsafe(t) for t in texts) if texts else float("nan")


def closed_tasks(tasks: Sequence[Task]) -> list[Task]:
    """The closed-domain tasks (closed QA, extraction, summaries): the answer must come from the context."""
    return [t for t in tasks if t.meta.get("closed")]


def hallucinates(world: World, task: Task, response: str) -> bool:
    """A closed-domain response hallucinates when it states any fact that the context does not support
    (false or made up), InstructGPT's "makes up information not in the input" (Ouyang et al. 2022, §4.2)."""
    if not task.meta.get("closed"):
        raise ValueError(f"task {task.prompt_id} is not closed-domain: hallucination is measured on closed tasks only")
    # the labelers' ``truthful`` criterion judges closed tasks against the context: < 1 iff a claim is false or
    # unsupported
    return world.panel.labelers[0].score(task.instruction, task.context, response, task=task).criteria["truthful"] < 1


def hallucination_rate(world: World, tasks: Sequence[Task], responses: Sequence[Generation | str]) -> float:
    """Share of closed-domain responses with at least one claim the context does not support."""
    pairs = [(t, r.text if isinstance(r, Generation) else r) for t, r in zip(tasks, responses)]
    return mean(hallucinates(world, t, r) for t, r in pairs) if pairs else float("nan")


def hallucination_breakdown(world: World, tasks: Sequence[Task], responses: Sequence[Generation | str]) -> dict:
    """The hallucination rate split in two: ``stating_rate``, the share of closed-domain responses that state at
    least one fact the claim reader recognises, and ``hallucination_when_stating``, the share of those with a
    claim the context does not support (None when no response states anything). A response that states nothing
    cannot hallucinate, so hallucination rate = stating_rate × hallucination_when_stating: a model can lower the
    rate by saying less as well as by reading the context better, and this tells the two apart."""
    texts = [r.text if isinstance(r, Generation) else r for r in responses]
    stating = [bool(world.extractor.claims(x)) for x in texts]
    made_up = [hallucinates(world, t, x) for t, x, s in zip(tasks, texts, stating) if s]
    return {"stating_rate": mean(stating) if stating else float("nan"),
            "hallucination_when_stating": mean(made_up) if made_up else None}


@torch.no_grad()
def kl_to_reference(policy, tokenizer, prompts: Sequence[str], responses: Sequence[Generation],
                    temperature: float = 1.0,
                    batch_size: int = 32) -> float:
    """KL(π_RL ‖ π_SFT) in nats per response, estimated on the policy's own samples: the mean over
    responses of Σ_t (log π(y_t) − log π_ref(y_t)) (EOS included), with the reference being the same
    model with its LoRA adapters disabled. Non-negative in expectation; a clearly negative value means
    the samples did not come from ``policy`` or the reference still had the adapters on (trl#925)."""
    total = 0.0
    for i in range(0, len(prompts), batch_size):
        b = rollout_tensors(tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size], policy.device)
        ids, attn, mask, P = b["input_ids"], b["attention_mask"], b["mask"], b["prompt_len"]
        lp = response_outputs(policy, ids, attn, P, temperature)[0]
        ref = response_outputs(policy, ids, attn, P, temperature, reference=True)[0]
        total += kl_per_response(lp, ref, mask).sum().item()
    return total / len(prompts)


# ---------------------------------------------------------------------------------------------
# Does the judge read? Does the reward model? Who wrote the demonstrations?
# ---------------------------------------------------------------------------------------------
def fluency_probes(world: World, tasks: Sequence[Task], rm: RewardModel | None = None, tokenizer=None,
                   fmt: str = "alpaca", seed: int = 0, max_length: int = 256) -> dict:
    """Garbled (:func:`~rlhf_lite.world.fluency.garble`) and word-shuffled versions of the tasks' reference answers
    against the references: the gold panel's mean score drop (``gold_drop_*``, with its 95 % bootstrap interval)
    and, given a reward model, the share of pairs in which it scores the reference higher (``rm_prefers_*``).
    Shuffles that leave the text as it was (one-word answers) are skipped."""
    rng, panel = random.Random(f"probes-{seed}"), world.panel
    out: dict = {}
    for name, probe in (("garbled", garble), ("shuffled", lambda t: shuffle_words(t, rng))):
        pairs = [(t, probe(t.response)) for t in tasks]
        pairs = [(t, x) for t, x in pairs if x != t.response]
        drops = [panel.gold_score(t.instruction, t.context, t.response, True, task=t)
                 - panel.gold_score(t.instruction, t.context, x, True, task=t) for t, x in pairs]
        out[f"gold_drop_{name}"] = mean(drops)
        out[f"gold_drop_{name}_ci"] = bootstrap_ci(drops, seed=seed)
        out[f"never_outscores_{name}"] = min(drops) >= 0
        out[f"n_{name}"] = len(pairs)
        if rm is not None:
            prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t, _ in pairs]
            ref = score_responses(rm, tokenizer, prompts, [t.response for t, _ in pairs], max_length=max_length)
            bad = score_responses(rm, tokenizer, prompts, [x for _, x in pairs], max_length=max_length)
            out[f"rm_prefers_reference_{name}"] = mean(a > b for a, b in zip(ref, bad))
    return out


def demonstration_quality(world: World, tasks: Sequence[Task]) -> dict:
    """Gold score of the writers' demonstrations for ``tasks``: overall, per writer, and the references' (the
    best possible writer), plus the share of demonstrations showing each habit."""
    panel = world.panel
    gold = {t.prompt_id: panel.gold_score(t.instruction, t.context, t.demonstration, True, task=t) for t in tasks}
    by_writer = {w.name: [gold[t.prompt_id] for t in tasks if t.writer == w.name] for w in WRITERS}
    habits = sorted({h for w in WRITERS for h in w.rates})
    return {"gold": mean(gold.values()),
            "reference_gold": mean(panel.gold_score(t.instruction, t.context, t.response, True, task=t) for t in tasks),
            "by_writer": {w: mean(v) for w, v in by_writer.items() if v},
            "with_a_habit": mean(bool(t.habits) for t in tasks),
            "habit_rates": {h: mean(h in t.habits for t in tasks) for h in habits}}


# ---------------------------------------------------------------------------------------------
# Gao et al.'s over-optimisation fits (best-of-n itself: rlhf_lite.best_of_n)
# ---------------------------------------------------------------------------------------------
def fit_overoptimization(d: Sequence[float], r: Sequence[float], form: str) -> dict:
    """Least-squares fit of Gao et al.'s (2022, eq. 1–2) gold-reward curves in d = √KL, with R(0) = 0
    (pass rewards relative to the starting policy):

        best-of-n ("bon"):  R(d) = d (α − β d)          RL ("rl"):  R(d) = d (α − β log d)

    Returns {"alpha", "beta", "r2"} (r2: 1 − residual / total sum of squares around the mean)."""
    d_t, r_t = torch.tensor(d, dtype=torch.float64), torch.tensor(r, dtype=torch.float64)
    if form == "bon":
        second = d_t ** 2
    elif form == "rl":
        second = d_t * torch.log(d_t.clamp_min(1e-12))
    else:
        raise ValueError(f"form must be 'bon' or 'rl', got {form!r}")
    X = torch.stack([d_t, -second], 1)  # R = α·d − β·second
    coef = torch.linalg.lstsq(X, r_t[:, None]).solution.squeeze(1)
    resid = ((X @ coef - r_t) ** 2).sum()
    tot = ((r_t - r_t.mean()) ** 2).sum()
    return {"alpha": coef[0].item(), "beta": coef[1].item(),
            "r2": (1 - resid / tot).item() if tot > 0 else float("nan")}


def gao_curve(d, alpha: float, beta: float, form: str):
    """Evaluate a fitted curve at ``d`` (a float or a tensor)."""
    d = torch.as_tensor(d, dtype=torch.float64)
    return d * (alpha - beta * (d if form == "bon" else torch.log(d.clamp_min(1e-12))))


# ---------------------------------------------------------------------------------------------
# All models side by side: what the pipeline and notebook 06 report
# ---------------------------------------------------------------------------------------------
def evaluate_model(model, tokenizer, world: World, tasks: Sequence[Task], closed: Sequence[Task],
                   max_new_tokens: int = 64,
                   fmt: str = "alpaca", seed: int = 0, heldout_rows: torch.Tensor | None = None, policy=None,
                   progress: bool = False, closed_samples: int = 4) -> dict:
    """One model on the test users' prompts: responses to ``tasks`` and ``closed_samples`` responses to each
    closed-domain task of ``closed`` (sampled at T = 1, as in training; the closed tasks are few, so several
    samples each steady the hallucination rate), then gold score, the mean of each criterion of the panel's score
    (``criteria``), unsafe rate, hallucination rate, EOS rate, and, when given, held-out pretraining loss
    (``heldout_rows``) and KL to the SFT model (``policy``: a ``PolicyWithValue`` whose reference is the SFT
    model). Returns the numbers plus ``gens`` and ``closed_gens``."""
    closed = [t for t in closed for _ in range(closed_samples)]
    prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t in list(tasks) + list(closed)]
    gens = generate(model, tokenizer, prompts, max_new_tokens, seed=seed, batch_size=64, progress=progress)
    main, cl = gens[:len(tasks)], gens[len(tasks):]
    panel = world.panel
    golds = panel.gold_scores(tasks, main)
    halluc = [hallucinates(world, t, g.text) for t, g in zip(closed, cl)]
    out = {"gold_score": mean(golds), "gold_scores": golds,
           "unsafe_rate": unsafe_rate(main), "hallucination_rate": mean(halluc) if halluc else float("nan"),
           "hallucination_rate_ci": bootstrap_ci(halluc, seed=seed, per_prompt=closed_samples) if halluc else None,
           "eos_rate": mean(g.finished for g in main), "response_tokens": mean(len(g.token_ids) for g in main)}
    out["criteria"] = mean_criteria(world, tasks, main)
    if closed:
        split = hallucination_breakdown(world, closed, cl)
        out["closed_stating_rate"] = split["stating_rate"]
        out["hallucination_when_stating"] = split["hallucination_when_stating"]
    if heldout_rows is not None:
        out["pretrain_loss"] = lm_loss(model, heldout_rows)
    if policy is not None:
        out["kl_to_sft"] = kl_to_reference(policy, tokenizer, prompts[:len(tasks)], main)
    return {**out, "gens": main, "closed_gens": cl}
