"""Command line: ``python -m rlhf_lite
{pretrain,world,sft,reward,ppo,pipeline,bench,gpt2-shape,repo-url,notebook-times,save-stages,student-notebooks,grade,
browser-check,evaluate,diagnose} …``
(see ``--help``)."""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import textwrap
from dataclasses import replace
from pathlib import Path


def _at_least(lo: int):
    """argparse type: a whole number ≥ ``lo`` (the error names the option and the range)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        return v
    return parse


def _non_negative_float(text: str) -> float:
    """argparse type: a finite number ≥ 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text}")
    return v


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    v = _non_negative_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return v


def _world(args):
    from .config import get_profile
    from .world import world_from_config

    return world_from_config(get_profile(args.profile).world, seed=args.world_seed)


def cmd_pretrain(args) -> int:
    from .config import get_profile
    from .pretrain import pretrain
    from .runtime import quiet

    quiet()
    cfg = get_profile(args.profile).pretrain
    overrides = {k: v for k,
                 v in {"steps": args.steps, "seed": args.seed, "threads": args.threads}.items() if v is not None}
    cfg = replace(cfg, **overrides)
    print(f"pretraining a tiny GPT-2 on the TinyWorld corpus ({cfg.steps} steps) -> {args.out}")
    card = pretrain(cfg, args.out)
    print(f"done in {card['wall_time_s']:.0f} s: {card['parameters']:,} parameters, {card['tokens_seen']:,} tokens "
          "seen, "
          f"train loss {card['final_train_loss']:.3f}, held-out loss {card['final_heldout_loss']:.3f}")
    return 0


def cmd_world(args) -> int:
    from .evaluate import demonstration_quality
    from .runtime import rounded
    from .world import CATEGORIES, CORRUPTIONS

    world = _world(args)
    if args.stats:
        rng = random.Random(0)
        test = world.splits["test"]
        pairs = []
        for t in test:
            v = list(world.variants(t).values())
            a, b = rng.sample(v, 2)
            pairs.append((t, a, b))
        per_user = {}
        for t in world.tasks:
            per_user[t.user_id] = per_user.get(t.user_id, 0) + 1
        stats = {"seed": world.seed, "facts": len(world.kb.facts), "prompts": len(world.tasks),
                 "users": len(per_user), "max_prompts_per_user": max(per_user.values()),
                 "splits": {k: len(v) for k, v in world.splits.items()},
                 "categories": {c: sum(t.category == c for t in world.tasks) for c in CATEGORIES},
                 "panel": [l.name + (" (held out)" if l.held_out else "") for l in world.panel.labelers],
                 "panel_agreement_on_test_variant_pairs": round(world.panel.agreement(pairs), 4),
                 "corruptions": CORRUPTIONS,
                 "train_demonstrations": rounded(demonstration_quality(world, world.splits["train"])),
                 "digest": world.digest()}
        print(json.dumps(stats, indent=1))
        return 0
    rng = random.Random(args.seed)
    for cat in CATEGORIES:
        pool = [t for t in world.splits["train"] if t.category == cat]
        for t in rng.sample(pool, min(args.show, len(pool))):
            print(f"=== {cat} ({t.task_type}, {t.prompt_id}, user {t.user_id})")
            print(json.dumps(t.to_dolly(), indent=1, ensure_ascii=False))
    return 0


def cmd_evaluate(args) -> int:
    from .config import get_profile
    from .evaluate import gold_eval
    from .models import load_base
    from .runtime import pick_device, quiet, seed_everything

    quiet()
    seed_everything(args.seed)
    prof = get_profile(args.profile, args.base_model)
    world = _world(args)
    model, tok = load_base(args.model or prof.base_model, device=pick_device(args.device))
    tasks = world.splits["test"][: args.n]
    r = gold_eval(model, tok, world, tasks, max_new_tokens=prof.max_new_tokens, seed=args.seed, progress=True)
    print(f"model {args.model or prof.base_model} on {len(tasks)} test prompts (profile {prof.name}):")
    print(f"  gold score of its responses: {r['gold']:.3f}   reference responses: {r['reference_gold']:.3f}   "
          f"EOS rate: {r['eos_rate']:.2f}")
    print("  by category: " + ", ".join(f"{c} {v:.2f}" for c, v in r["by_category"].items()))
    print("  criteria:    " + ", ".join(f"{c} {v:.2f}" for c, v in r["criteria"].items()))
    if args.k > 1:  # panel agreement on pairs of this model's own samples, as InstructGPT measured it
        from .data import format_prompt
        from .models import generate

        pairs = []
        for i, t in enumerate(tasks):
            g = generate(model, tok, [format_prompt(t.instruction, t.context)] * 2, prof.max_new_tokens,
                         seed=args.seed + 1000 + i)
            pairs.append((t, g[0].text, g[1].text))
        print(f"  panel agreement on pairs of its samples: {world.panel.agreement(pairs):.3f} "
              f"(InstructGPT labelers: 0.726)")
    for t, g, s in r["samples"][: args.examples]:
        print(textwrap.indent(f"--- {t.category}: {t.instruction[:100]!r}\n    -> {g.text[:160]!r} (gold {s:.2f})",
                              "  "))
    return 0


def cmd_diagnose(args) -> int:
    from .config import get_profile
    from .course.diagnose import (
        accuracy_difference,
        agreement_by_criterion,
        context_recall,
        fact_recall,
        off_task,
    )
    from .data import render_prompt
    from .ensemble import load_reward_ensemble
    from .models import generate, load_base
    from .pipeline import shown_path
    from .reward import load_reward_model, record_scores
    from .runtime import pick_device, quiet
    from .stages import base_checkpoint, comparison_data, reward_checkpoint, sft_checkpoint
    from .world import world_from_config

    quiet()
    prof = get_profile(args.profile, args.base_model)
    if prof.data != "tinyworld":
        raise ValueError(f"profile {prof.name!r} has no gold panel to diagnose against (data {prof.data!r}); "
                         "use a TinyWorld profile: tiny, smoke or gpt2")
    device = pick_device(args.device)
    world = world_from_config(prof.world)
    print(f"profile {prof.name}: does each model know the world's facts? (the true value ranked first among every "
          f"value its relation takes, {args.facts} facts)")
    models = {name: load_base(str(path), device=device)
              for name, path in (("base", base_checkpoint(prof, device=device)),
                                 ("SFT", sft_checkpoint(prof, device=device)))}
    for name, (model, tok) in models.items():
        r = fact_recall(model, tok, world, n_facts=args.facts)
        rows = ", ".join(f"{k} {v['recall']:.2f}" for k, v in r.items() if k != "all")
        print(f"  {name:5s} {r['all']:.3f}   by relation: {rows}")
    print(f"can each model read a passage? ({args.facts} passages about new people, three facts each: the probability "
          "of continuing a person's first name with the surname the passage gave; one fact written again with every "
          "value of its relation)")
    for name, (model, tok) in models.items():
        r = context_recall(model, tok, world, n_people=args.facts)
        print(f"  {name:5s} copies the new name {r['name_copy']:.1%} of the time; ranks the passage's value first "
              f"{r['value_recall']:.3f} (chance {r['value_chance']:.3f})")
    tasks = world.splits["test"]
    print(f"does each model take up the task? ({len(tasks)} test prompts, one answer each; an answer with neither the "
          "expected content, nor a valid list item, nor any word of the task's topic is off-task)")
    answers = {name: generate(model, tok, [render_prompt(tok, t.instruction, t.context, prof.sft.prompt_format)
                                           for t in tasks], prof.max_new_tokens, seed=0)
               for name, (model, tok) in models.items()}
    found = {"base": off_task(world, tasks, answers["base"], against=answers["SFT"]),  # base's wins over SFT too
             "SFT": off_task(world, tasks, answers["SFT"])}
    for name, r in found.items():
        shown = {k: "—" if r[k] is None else f"{r[k]:.3f}" for k in ("gold_off_task", "gold_on_task")}
        print(f"  {name:5s} off-task {r['share']:.1%} of answers, gold {shown['gold_off_task']} "
              f"(on-task answers {shown['gold_on_task']})")
    r = found["base"]
    print(f"  the held-out labelers prefer base's answer to SFT's {r['wins']:.1%} of the time; off-task answers carry "
          f"{r['wins_off_task']:.1%} of those wins")
    val = comparison_data(prof, device=device)["validation"]

    def judge_of(paths):  # the saved reward models' mean reward, each answer of ``val`` scored once
        rm, rm_tok = (load_reward_ensemble(paths, "mean", device) if len(paths) > 1 else
                      load_reward_model(paths[0], device=device))
        judge = record_scores(rm, rm_tok, prof.reward.max_length)
        scores = {id(rec): judge(rec) for rec in val}
        return lambda rec: scores[id(rec)]

    paths = args.reward_model or [reward_checkpoint(prof, device=device)]
    judge = judge_of(paths)
    name = "the reward model" if len(paths) == 1 else f"the ensemble of {len(paths)} reward models (mean reward)"
    # against itself, the difference is 0: the held-out labelers are scored once either way
    d = accuracy_difference(world, val, judge, judge_of(args.against) if args.against else judge,
                            world.panel.held_out)
    shown = ", ".join(shown_path(p) for p in paths)
    print(f"\n{name}: {shown}\nagrees with the held-out labelers on {d['a']:.3f} of the validation pairs of SFT "
          "samples")
    if args.against:
        lo, hi = d["difference_ci"]
        verdict = _verdict(lo, hi)
        print(f"against {', '.join(args.against)} ({d['b']:.3f} on the same {d['pairs']:,} pairs of {d['prompts']} "
              f"prompts): {d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] (95 % paired bootstrap): {verdict}")
    a = agreement_by_criterion(world, val, judge, args.min_gap)
    print(f"which criteria does it read? {a['pairs']} validation pairs whose gold scores differ by "
          f">= {args.min_gap}, each credited to the criterion that decides it; it orders "
          f"{a['agreement']:.1%} of them as the gold panel does")
    print(f"  {'criterion':15s} {'pairs':>6s} {'share':>6s} {'RM agrees':>9s} {'mean gap':>8s}")
    for c, v in a["by_criterion"].items():
        print(f"  {c:15s} {v['pairs']:6d} {v['share']:6.1%} {v['agreement']:9.1%} {v['mean_gap']:8.3f}")
    for c, v in a["by_criterion"].items():
        for m in v["misses"][: args.examples]:
            if m is v["misses"][0]:
                print(f"\n{c}: pairs it orders against the gold panel (largest gold gap first)")
            task = world.tasks_by_id[m["prompt_id"]]
            print(f"  {task.instruction[:90]!r} (gold gap {m['gap']:.2f})\n    better: {m['better'][:110]!r}\n"
                  f"    worse:  {m['worse'][:110]!r}")
    if args.policy:
        _policy_frontier(args, prof, world, paths[0] if len(paths) == 1 else reward_checkpoint(prof, device=device),
                         device)
    return 0


def _verdict(lo: float, hi: float, up: str = "better", down: str = "worse") -> str:
    """What a difference's 95 % interval [lo, hi] says: noise when it contains 0, else ``up`` or ``down``."""
    return "noise" if lo <= 0 <= hi else up if lo > 0 else down


def _policy_frontier(args, prof, world, rm_path, device) -> None:
    """``diagnose --policy``: trained policies beside best-of-n of the SFT model, in reward and in gold."""
    from .course.diagnose import reward_and_gold, reward_gold_frontier
    from .evaluate import bootstrap_ci, prompt_win_rates
    from .models import load_base
    from .pipeline import shown_path
    from .reward import load_reward_model
    from .stages import load_policy, sft_checkpoint

    rm, rm_tok = load_reward_model(rm_path, device=device)
    sft, tok = load_base(str(sft_checkpoint(prof, device=device)), device=device)
    tasks = world.splits["test"][: args.n]
    ns = (1, 2, 4, 8)
    print(f"\ndoes a policy get the gold its reward promises? {len(tasks)} test prompts; best-of-n of SFT samples "
          f"(the reward model {shown_path(rm_path)} picks) against the policies, one sample each")
    run = lambda model, seed: reward_and_gold(model, tok, rm, rm_tok, world, tasks, prof.sft.prompt_format,  # noqa: E731
                                              prof.max_new_tokens, prof.reward.max_length, seed)
    samples = [run(sft, seed) for seed in range(max(ns))]
    sft_answers = run(sft, max(ns))["gens"]  # one more SFT answer, none of the candidates: what all are judged against
    policies = {str(path): run(load_policy(prof, path, device)[0], 0) for path in args.policy}
    f = reward_gold_frontier(samples, policies, ns)

    wins = {}  # label -> per-prompt P(preferred to the SFT answer), for the paired comparisons below

    def preferred(gens, label: str) -> str:
        wins[label] = prompt_win_rates(tasks, gens, sft_answers, world.panel.held_out)
        lo, hi = bootstrap_ci(wins[label])
        return f"{sum(wins[label]) / len(tasks):6.1%} [{lo:.1%}, {hi:.1%}]"

    def chosen(r) -> list:
        return [samples[j]["gens"][i] for i, j in enumerate(r["pick"])]

    print(f"  {'':30s} {'reward':>7s} {'gold':>6s}  held-out labelers prefer it to another SFT answer [95 %]")
    for n, r in f["best_of"].items():
        label = f"SFT best-of-{n} (KL ≤ {r['kl_bound']:.2f})"
        print(f"  {label:30s} {r['reward']:+7.3f} {r['gold']:6.3f}  {preferred(chosen(r), f'best-of-{n}')}")
    for n, r in f["gold_best_of"].items():
        if n > 1:
            label = f"  gold panel's best-of-{n}"
            print(f"  {label:30s} {r['reward']:+7.3f} {r['gold']:6.3f}  {preferred(chosen(r), label)}")

    def diff(r, key):
        lo, hi = r[f"{key}_ci"]
        return f"{r[key]:+.3f} [{lo:+.3f}, {hi:+.3f}] {_verdict(lo, hi, 'above', 'below')}"
    top, first = f"best-of-{max(ns)}", next(iter(f["policies"]))
    for name, r in f["policies"].items():
        print(f"  {Path(name).name[:30]:30s} {r['reward']:+7.3f} {r['gold']:6.3f}  "
              f"{preferred(policies[name]['gens'], name)}\n"
              f"      gold vs SFT best-of-1 {diff(r, 'gold_vs_sft')}; vs best-of-{r['nearest_n']} (nearest reward) "
              f"{diff(r, 'gold_vs_nearest')}")
        for other in (top,) if name == first else (top, first):
            gap = [a - b for a, b in zip(wins[name], wins[other])]
            lo, hi = bootstrap_ci(gap)
            print(f"      its win rate minus {Path(other).name}'s: {100 * sum(gap) / len(gap):+.1f} points "
                  f"[{100 * lo:+.1f}, {100 * hi:+.1f}] {_verdict(lo, hi, 'above', 'below')}")
    print("  (95 % paired bootstrap over the prompts; every policy after the first is also compared with the first; "
          "a policy below the best-of-n of equal reward has found the "
          "reward model's errors; in the gold panel's best-of-n the panel's mean score picks, a perfect reward model: "
          "the most any reward model could buy at that KL)")


def cmd_sft(args) -> int:
    from dataclasses import asdict

    from .config import get_profile
    from .evaluate import bootstrap_ci, gold_eval, prompt_win_rates
    from .models import load_base
    from .runtime import atomic_dir, check_output_dir, hf_bars_off, pick_device, quiet
    from .stages import base_checkpoint, train_sft_model

    if args.out:
        check_output_dir(args.out, "sft")  # before training, not after it
    quiet()
    prof = get_profile(args.profile, args.base_model)
    device = pick_device(args.device)
    if args.world_seed is not None:
        prof = replace(prof, world=replace(prof.world, seed=args.world_seed))
    cfg = replace(prof.sft, **{k: v for k, v in {"n_train": args.n_train, "max_steps": args.max_steps,
                                                   "epochs": args.epochs, "seed": args.seed}.items() if v is not None})
    if args.full:
        cfg = replace(cfg, lora=False, lr=cfg.lr / 4)
    source = prof.data
    print(f"SFT on {source} with {'LoRA' if cfg.lora else 'full fine-tuning'} on {device}")
    model, tok, history = train_sft_model(prof, cfg, device=device)
    params = history["parameters"]
    print(f"{params['trainable']:,} of {params['total']:,} parameters trained on {history['n_train_examples']} "
          "examples")
    metrics = {"profile": prof.name, "wall_time_s": round(history["wall_time_s"], 1), "steps": len(history["train"]),
               "train_tokens": history["tokens"], "trainable_parameters": params["trainable"],
               "final_validation_loss": history["eval"][-1]["loss"] if history["eval"] else None}
    print(f"trained {metrics['steps']} steps in {metrics['wall_time_s']:.0f} s; validation loss "
          f"{history['eval'][0]['loss']:.3f} -> {history['eval'][-1]['loss']:.3f}")
    if source == "tinyworld":
        world = _world(args)
        tasks = world.splits["test"][: args.n]
        sft = gold_eval(model, tok, world, tasks, prof.max_new_tokens, seed=0, fmt=cfg.prompt_format, progress=True)
        if cfg.lora:  # the base model is the same weights with the adapter switched off
            with model.disable_adapter():
                base = gold_eval(model, tok, world, tasks, prof.max_new_tokens, seed=0, fmt=cfg.prompt_format,
                                 progress=True)
        else:
            base = gold_eval(load_base(base_checkpoint(prof, device=device), device=device)[0], tok, world, tasks,
                             prof.max_new_tokens, seed=0,
                             fmt=cfg.prompt_format, progress=True)
        base_gens = [g for _, g, _ in base["samples"]]
        per_prompt = prompt_win_rates(tasks, [g for _, g, _ in sft["samples"]], base_gens, world.panel.held_out)
        wins, wins_ci = sum(per_prompt) / len(per_prompt), bootstrap_ci(per_prompt)
        # for scale: the writers' own demonstrations against the same base answers, the most imitating them can win
        demo = prompt_win_rates(tasks, [t.demonstration or t.response for t in tasks], base_gens, world.panel.held_out)
        metrics.update(n_test_prompts=len(tasks), gold_sft=round(sft["gold"], 4), gold_base=round(base["gold"], 4),
                       gold_reference=round(sft["reference_gold"], 4), win_rate_vs_base_held_out=round(wins, 4),
                       win_rate_vs_base_ci=[round(x, 4) for x in wins_ci],
                       demonstrations_win_rate_vs_base=round(sum(demo) / len(demo), 4),
                       demonstrations_win_rate_vs_base_ci=[round(x, 4) for x in bootstrap_ci(demo)],
                       eos_rate_sft=round(sft["eos_rate"], 3), eos_rate_base=round(base["eos_rate"], 3),
                       criteria_sft={k: round(v, 3) for k, v in sft["criteria"].items()},
                       by_category_sft={k: round(v, 3) for k, v in sft["by_category"].items()})
        print(f"gold score on {len(tasks)} test-user prompts: SFT {sft['gold']:.3f} | base {base['gold']:.3f} | "
              f"reference {sft['reference_gold']:.3f}")
        print(f"win rate SFT vs base, held-out labelers: {wins:.1%} [95 %: {wins_ci[0]:.1%}, {wins_ci[1]:.1%}]   "
              f"EOS rate SFT {sft['eos_rate']:.2f} "
              f"(base {base['eos_rate']:.2f})")
        lo, hi = metrics["demonstrations_win_rate_vs_base_ci"]
        print(f"for scale, the writers' demonstrations vs base: {metrics['demonstrations_win_rate_vs_base']:.1%} "
              f"[95 %: {lo:.1%}, {hi:.1%}]")
    if args.out:
        with atomic_dir(args.out, "sft") as tmp:  # nothing half-written if saving fails
            with hf_bars_off():
                if cfg.lora:
                    model.save_pretrained(tmp / "adapter")  # first: merging folds the adapter away
                merged = model.merge_and_unload() if cfg.lora else model
                merged.save_pretrained(tmp / "merged")
            tok.save_pretrained(tmp / "merged")
            (tmp / "metrics.json").write_text(json.dumps({**metrics, "config": asdict(cfg)}, indent=1,
                                                         default=str) + "\n")
            (tmp / "history.json").write_text(json.dumps({k: v for k, v in history.items() if k != "config"},
                                                         default=str) + "\n")
        print(f"saved adapter, merged model and metrics to {args.out}")
    return 0


def cmd_reward(args) -> int:
    from .config import get_profile
    from .reward import save_reward_model
    from .runtime import check_output_dir, pick_device, quiet, seed_everything
    from .stages import policy_comparisons, sft_checkpoint, train_reward_stage

    if args.out:
        check_output_dir(args.out, "reward")  # before training, not after it
    quiet()
    prof = get_profile(args.profile, args.base_model)
    device = pick_device(args.device)
    cfg = replace(prof.reward,
                  **{k: v for k, v in {"n_prompts": args.n_prompts, "grouped": False if args.shuffled else None,
                                       "lora": False if args.full else None, "epochs": args.epochs,
                                       "lr": args.lr}.items() if v is not None})
    prof = replace(prof, reward=cfg)
    seed_everything(cfg.seed)
    more = None
    if args.policy:
        more = policy_comparisons(prof, args.policy, device=device, prompts=args.policy_prompts)
        print(f"second round: {len(more['train']):,} training and {len(more['validation'])} validation prompts, the "
              f"answers sampled from {args.policy} and ranked by the training labelers")
    print(f"reward model for profile {prof.name}: comparisons from {cfg.source}"
          f"{' (both rounds)' if more else ''}, "
          f"{'K-choose-2 batches' if cfg.grouped else 'shuffled pairs (ablation)'}, "
          f"{'LoRA' if cfg.lora else 'full fine-tuning'}")
    rm, tok, metrics, history = train_reward_stage(prof, device=device, more=more)
    print(f"trained on {metrics['comparisons']:,} comparisons from {metrics['prompts']:,} prompts in "
          f"{metrics['wall_time_s']:.0f} s; "
          f"validation loss {history['eval'][0]['loss']:.3f} -> {metrics['validation_loss']:.3f}")
    if "accuracy_train_labelers" in metrics:
        print("pairwise accuracy on held-out users' pairs: training labelers "
              f"{metrics['accuracy_train_labelers']:.3f}, "
              f"held-out labelers {metrics['accuracy_heldout_labelers']:.3f}; labelers agree with each other "
              f"{metrics['panel_agreement']:.3f}; the gold score itself reaches {metrics['gold_ceiling']:.3f}")
        v = metrics["variant_pairs"]
        print(f"on reference-vs-corruption answers: held-out labelers {v['accuracy_heldout_labelers']:.3f}, "
              f"labelers agree {v['panel_agreement']:.3f}")
    if more:  # the policy's own answers: this reward model and the first round's, on the same pairs
        from .course.diagnose import accuracy_difference
        from .feedback import agreement_matrix
        from .reward import load_reward_model, record_scores
        from .runtime import rounded
        from .stages import off_diagonal_mean, reward_checkpoint
        from .world import world_from_config

        world = world_from_config(prof.world)
        # the first round's reward model: the profile's own settings (cached), whatever this command overrode
        first = reward_checkpoint(get_profile(args.profile, args.base_model), device=device)
        d = accuracy_difference(world, more["validation"], record_scores(rm, tok, cfg.max_length),
                                record_scores(*load_reward_model(first, device=device), cfg.max_length),
                                world.panel.held_out)
        metrics["policy_pairs"] = rounded({
            "accuracy_heldout_labelers": d["a"], "first_round_accuracy": d["b"], "difference_ci": d["difference_ci"],
            "panel_agreement": off_diagonal_mean(agreement_matrix(world, more["validation"], world.panel.labelers))})
        lo, hi = d["difference_ci"]
        print(f"on {d['pairs']:,} pairs of the policy's own answers ({d['prompts']} held-out users' prompts): held-out "
              f"labelers {d['a']:.3f}, the first round's reward model {d['b']:.3f}, difference {d['difference']:+.3f} "
              f"[{lo:+.3f}, {hi:+.3f}] (95 % paired bootstrap); labelers agree "
              f"{metrics['policy_pairs']['panel_agreement']:.3f}")
    if args.out:
        save_reward_model(rm, args.out, base=sft_checkpoint(prof, device=device),
                          extra={"metrics": metrics, "history": history})
        print(f"saved to {args.out}")
    print(json.dumps(metrics))
    return 0


def cmd_ppo(args) -> int:
    from .checkpoint import CHECKPOINT
    from .config import get_profile
    from .runtime import quiet, writable_dir
    from .stages import ppo_stage

    if args.out:
        writable_dir(args.out)  # before any model is loaded or trained
        if not args.resume and (Path(args.out) / CHECKPOINT).exists():
            raise ValueError(f"--out {args.out} holds the checkpoint of an earlier PPO run; add --resume to continue "
                             "it, "
                             "or pick a new folder")
    if args.combine and len(args.reward_model or []) < 2:
        raise ValueError("--combine joins the rewards of several reward models; name at least two with --reward-model")
    init = _ppo_start(args)
    quiet()
    prof = get_profile(args.profile, args.base_model)
    cfg = replace(prof.ppo, **{k: v for k, v in {"steps": args.steps, "ptx_coef": args.ptx, "init_kl_coef": args.beta,
                                                 "seed": args.seed}.items() if v is not None})
    print(f"PPO{'-ptx (γ = ' + str(cfg.ptx_coef) + ')' if cfg.ptx_coef else ''} on profile {prof.name}: {cfg.steps} "
          "steps of "
          f"{cfg.batch_size} episodes, β = {cfg.init_kl_coef}" + (f", checkpoints in {args.out}" if args.out else ""))
    if args.reward_model and len(args.reward_model) > 1:
        print(f"against the {args.combine or 'mean'} of {len(args.reward_model)} reward models: "
              + ", ".join(args.reward_model))
    elif args.reward_model:
        print(f"against the reward model in {args.reward_model[0]}")
    if init:
        print(f"starting from the policy in {init} (also the KL reference)")
    policy, _, _, history = ppo_stage(prof, cfg, out_dir=args.out, resume=args.resume, device=args.device,
                                      reward_model=args.reward_model, init=init, combine=args.combine or "mean")
    last = history[-1]
    print(json.dumps({k: round(last[k], 4) for k in ("step", "reward", "kl", "gold", "eos_rate", "response_length")
                      if k in last}))
    if args.out:
        from .runtime import hf_bars_off

        with hf_bars_off():
            policy.lm.save_pretrained(f"{args.out}/adapter")
        print(f"adapter saved to {args.out}/adapter (load it with rlhf_lite.stages.load_policy; compare it with "
              f"`diagnose --policy {args.out}`)")
    return 0


def _ppo_start(args) -> str | None:
    """``ppo --init``: the saved policy to start from, checked before anything trains and recorded in
    ``--out``/start.json, which ``load_policy`` and ``--resume`` read."""
    from .stages import record_start, recorded_start

    before = recorded_start(args.out) if args.out else None
    if not args.init:
        if before and not args.resume:
            raise ValueError(f"--out {args.out} holds an earlier run that started from {before}; pick a new folder")
        return before
    init = _saved_policy(args.init, args.out)
    if before and before != init:
        raise ValueError(f"--out {args.out} holds a run that started from {before}, not from {init}; pick a new "
                         "folder")
    if args.out:
        record_start(args.out, init)
    return init


def _saved_policy(path: str, out: str | None) -> str:
    """``--init PATH``, checked before anything trains: the absolute path of a saved policy's folder, which must
    not be ``--out`` (the new adapter would be written over the policy it starts from)."""
    from .stages import policy_adapter

    policy_adapter(path, "--init ")
    init = Path(path).resolve()
    if out and Path(out).resolve() == init:
        raise ValueError(f"--init and --out both name {out}: the new adapter would be written over the policy it "
                         "starts from; pick a new folder for --out")
    return str(init)


def cmd_rejection_sampling(args) -> int:
    from .config import get_profile
    from .runtime import atomic_dir, check_output_dir, hf_bars_off, quiet
    from .stages import record_start, rejection_sampling_stage

    check_output_dir(args.out, "rejection-sampling")  # before any model is loaded or trained
    init = _saved_policy(args.init, args.out) if args.init else None
    quiet()
    prof = get_profile(args.profile, args.base_model)
    print(f"rejection sampling on profile {prof.name}: best of {args.n} "
          f"{'samples of the policy in ' + init if init else 'SFT samples'} (the reward model picks) for "
          f"{'every' if not args.n_prompts else f'the first {args.n_prompts:,}'} training prompt"
          f"{'s' if args.n_prompts > 1 else ''}, then {args.epochs} epoch{'s' if args.epochs > 1 else ''} of "
          "LoRA fine-tuning on them")
    model, _, records, history = rejection_sampling_stage(prof, args.n, args.n_prompts, args.epochs,
                                                          device=args.device, init=init)
    mean = sum(r["reward"] for r in records) / max(1, len(records))
    print(f"kept {len(records):,} answers (mean reward {mean:+.3f}); trained {len(history['train'])} steps in "
          f"{history['wall_time_s']:.0f} s, final loss {history['train'][-1]['loss']:.3f}")
    with atomic_dir(args.out, "rejection-sampling") as tmp, hf_bars_off():  # nothing half-written if saving fails
        model.save_pretrained(tmp / "adapter")
        (tmp / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        if init:  # what load_policy merges under this adapter
            record_start(tmp, init)
    print(f"adapter saved to {args.out}/adapter, the kept answers to {args.out}/records.jsonl "
          f"(compare it with `diagnose --policy {args.out}`)")
    return 0


def cmd_dpo(args) -> int:
    from .config import get_profile
    from .runtime import atomic_dir, check_output_dir, hf_bars_off, quiet
    from .stages import dpo_stage

    check_output_dir(args.out, "dpo")  # before any model is loaded or trained
    quiet()
    prof = get_profile(args.profile, args.base_model)
    cfg = replace(prof.dpo, **{k: v for k, v in {"beta": args.beta, "n_prompts": args.n_prompts}.items()
                               if v is not None})
    print(f"DPO on profile {prof.name}: β = {cfg.beta}, LoRA on the SFT model, "
          f"{'all' if not cfg.n_prompts else f'the first {cfg.n_prompts:,}'} ranked training prompts")
    model, _, history = dpo_stage(prof, cfg, device=args.device)
    e0, e1 = history["eval"][0], history["eval"][-1]
    print(f"{history['pairs']:,} pairs, {len(history['train'])} steps in {history['wall_time_s']:.0f} s; validation "
          f"loss {e0['loss']:.3f} -> {e1['loss']:.3f}, implicit-reward accuracy {e0['accuracy']:.3f} -> "
          f"{e1['accuracy']:.3f}; implicit reward of chosen {e1['chosen_reward']:+.3f}, of rejected "
          f"{e1['rejected_reward']:+.3f}")
    with atomic_dir(args.out, "dpo") as tmp, hf_bars_off():  # nothing half-written if saving fails
        model.save_pretrained(tmp / "adapter")
        (tmp / "history.json").write_text(json.dumps(history, indent=1))
    print(f"adapter saved to {args.out}/adapter (compare it with `diagnose --policy {args.out}`)")
    return 0


def cmd_pipeline(args) -> int:
    from .config import SET_ENV
    from .pipeline import run_pipeline

    if os.environ.get(SET_ENV):
        print(f"settings changed from the profile's: {os.environ[SET_ENV]}")
    run_pipeline(args.profile, args.out, args.seed, device=args.device, base_model=args.base_model)
    return 0


def cmd_bench(args) -> int:
    from .course.bench import bench_config, bench_table, run_bench
    from .runtime import runs_dir

    cfg = bench_config(args.model, args.device, smoke=args.smoke)
    if args.repeats:
        cfg = replace(cfg, repeats=args.repeats)
    out = args.out or runs_dir() / f"bench-{args.model}-{args.device}{'-smoke' if args.smoke else ''}.json"
    result = run_bench(cfg, out, rows_wanted=args.rows)
    print(bench_table(result, markdown=args.markdown))
    print(f"written to {out}")
    return 0


def cmd_gpt2_shape(args) -> int:
    from .course.bench import write_gpt2_shape
    from .runtime import check_output_dir

    check_output_dir(args.out, "gpt2-shape")
    out = write_gpt2_shape(args.out, small=args.small)
    print(f"wrote a GPT-2-shaped model with random weights{' (2 layers, width 64)' if args.small else ''} and GPT-2's "
          f"tokenizer to {out}; use it with --base-model {out}")
    return 0


def cmd_repo_url(args) -> int:
    from .course.repo import set_repo_url

    changed = set_repo_url(args.url)
    print(f"pointed the Colab setup cells, badges and REPO_URL at {args.url}: {len(changed)} files changed"
          + (f" ({', '.join(changed)})" if changed else ""))
    return 0


def cmd_notebook_times(args) -> int:
    from .course.budget import notebook_times, times_table
    from .runtime import runs_dir

    mode = "recorded" if args.recorded else "execute"
    out = args.out or runs_dir() / f"notebook-times-{args.profile}-{mode}.json"
    result = notebook_times(args.profile, mode, args.only, out=out)
    print(times_table(result))
    print(f"written to {out}")
    return 0


def cmd_save_stages(args) -> int:
    from .config import get_profile
    from .course.saved import save_stages, saved_dir

    profile = get_profile(args.profile)
    names = save_stages(profile)
    for name in names:
        print(f"saved {name}")
    missing = 3 - len(names)
    note = f"; {missing} stage(s) not cached under these settings yet (run the pipeline or the notebooks first)"
    print(f"written to {saved_dir(profile) / 'stages'}" + (note if missing else ""))
    return 0 if not missing else 1


def cmd_student_notebooks(args) -> int:
    from .course.student import defined_functions, read_notebook, write_student_notebooks

    for path in write_student_notebooks(args.out, args.src):
        cells = read_notebook(path)["cells"]
        stubs = [fn for c in cells if "exercise" in c.get("metadata", {}).get("tags", [])
                 for fn in defined_functions("".join(c["source"]))]
        print(f"{path}: " + (f"implement {', '.join(stubs)}" if stubs else "no implement-exercises"))
    print(f"student notebooks written to {args.out}: solutions replaced by '# YOUR CODE HERE' stubs, outputs cleared; "
          "the cell after each stub runs its checker")
    return 0


def cmd_browser_check(args) -> int:
    from .course.browser import browser_check

    report = browser_check(args.out, chromium=args.chromium)
    for shot in report["screenshots"]:
        print(f"screenshot: {shot}")
    print(f"ranking clicked through notebook 03's widget and saved: {'yes' if report['ranking_saved'] else 'NO'}")
    for problem in report["problems"]:
        print(f"✗ {problem}")
    print("no problems found" if not report["problems"] else f"{len(report['problems'])} problems")
    return 0 if report["ranking_saved"] and not report["problems"] else 1


def cmd_grade(args) -> int:
    from .course.student import grade_notebook

    total = passed = 0
    for path in args.notebooks:
        try:
            graded = grade_notebook(path)
        except (ValueError, OSError) as e:  # a damaged or missing notebook fails alone; the others are still graded
            total += 1
            print(f"✗ {path}: cannot grade it: {e}")
            continue
        for row in graded:
            total, passed = total + 1, passed + row["passed"]
            name = ", ".join(row["functions"]) or f"cell {row['cell']}"
            detail = "" if row["passed"] else f"\n    {row['message']}"
            print(f"{'✓' if row['passed'] else '✗'} {path}: {name}{detail}")
    print(f"{passed}/{total} exercises pass their checkers")
    return 0 if passed == total else 1


def _device_option(s) -> None:
    """``--device`` and ``--base-model`` on a command that trains or samples (``--base-model`` also works before the
    command, as ``--profile`` does)."""
    from .runtime import DEVICES

    s.add_argument("--device", default=None, choices=DEVICES,
                   help="where to run: auto (the GPU when torch sees one; the default, or $RLHF_LITE_DEVICE), cpu "
                   "or cuda")
    s.add_argument("--base-model", default=argparse.SUPPRESS, metavar="PATH",
                   help="the GPT-2 profiles' base model: a folder with its weights and tokenizer, or a hub name")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlhf_lite", description="rlhf-lite: InstructGPT's pipeline, small "
                                "enough to read and run. The main job: `python -m rlhf_lite pipeline`.")
    p.add_argument("--profile", default=None, help="smoke, tiny, gpt2, gpt2-smoke or gpt2-hub (default: "
                   "$RLHF_LITE_PROFILE, else tiny)")
    p.add_argument("--base-model", default=None, metavar="PATH",
                   help="the GPT-2 profiles' base model: a folder with its weights and tokenizer, or a hub name "
                   "(default: $RLHF_LITE_BASE_MODEL, else the profile's, gpt2)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one of the profile's settings, e.g. --set reward.epochs=2 (repeat it for more; "
                   "sections: world, pretrain, sft, reward, ppo, dpo, grpo, lora; added to $RLHF_LITE_SET); the "
                   "cached stages are keyed on every setting, so changed ones train again")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("pretrain", help="build the tokenizer and pretrain the tiny GPT-2 from scratch")
    s.add_argument("--out", required=True, help="folder to write (replaced atomically when training finishes)")
    s.add_argument("--steps", type=_at_least(1), help="override the profile's number of optimizer steps")
    s.add_argument("--seed", type=_at_least(0),
                   help="seed of pretraining: the world and corpus it is built from, initialisation, batch order")
    s.add_argument("--threads", type=_at_least(0), help="torch CPU threads (default: all cores)")
    s.set_defaults(fn=cmd_pretrain)
    s = sub.add_parser("world", help="print sample instruction records (Dolly schema) per category, or stats")
    s.add_argument("--show", type=_at_least(1), default=2, metavar="N", help="records per category (default 2)")
    s.add_argument("--stats", action="store_true", help="print counts, splits and panel agreement as JSON instead")
    s.add_argument("--world-seed", type=_at_least(0), help="which world (default: the profile's, the shipped model's)")
    s.add_argument("--seed", type=_at_least(0), default=0, help="seed of which records --show picks (default 0)")
    s.set_defaults(fn=cmd_world)
    s = sub.add_parser("sft", help="supervised fine-tuning (LoRA by default), then gold score and win rate vs base")
    s.add_argument("--out", help="folder for the adapter, the merged model and metrics.json (optional)")
    s.add_argument("--n", type=_at_least(1), default=200, help="test prompts for the gold evaluation (default 200)")
    s.add_argument("--n-train", type=_at_least(1), help="train on the first N examples only (LIMA-style experiments)")
    s.add_argument("--epochs", type=_at_least(1), help="override the profile's epochs")
    s.add_argument("--max-steps", type=_at_least(1), help="override the profile's step limit")
    s.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA (learning rate / 4)")
    s.add_argument("--world-seed", type=_at_least(0), help="which world (default: the profile's, the shipped model's)")
    s.add_argument("--seed", type=_at_least(0),
                   help="seed of the SFT run: data order, adapters, dropout (default: the profile's)")
    _device_option(s)
    s.set_defaults(fn=cmd_sft)
    s = sub.add_parser("reward",
                       help="comparisons from the SFT model, then the reward model, measured on held-out users")
    s.add_argument("--out", help="folder for the reward model (adapter or weights, head, metrics)")
    s.add_argument("--n-prompts", type=_at_least(1), help="override the number of ranked training prompts")
    s.add_argument("--shuffled", action="store_true", help="the ablation: pairs shuffled as independent examples")
    s.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    s.add_argument("--epochs", type=_at_least(1), help="override the profile's passes over the comparisons")
    s.add_argument("--lr", type=_positive_float, help="override the profile's peak learning rate")
    s.add_argument("--policy", metavar="PATH",
                   help="a second round: rank this PPO policy's answers (`ppo --out PATH`) on the training prompts the "
                   "first round left unranked, and train on both rounds")
    s.add_argument("--policy-prompts", choices=("unranked", "all"), default="unranked",
                   help="with --policy: rank the policy's answers on the training prompts the first round left "
                   "(default) or on every training prompt, the first round's included")
    _device_option(s)
    s.set_defaults(fn=cmd_reward)
    s = sub.add_parser("ppo", help="PPO (or PPO-ptx) against the cached (or a saved) reward model, from the cached SFT "
                       "model")
    s.add_argument("--out", help="folder for checkpoints and the final adapter")
    s.add_argument("--resume", action="store_true", help="continue the interrupted run whose checkpoints are in --out")
    s.add_argument("--steps", type=_at_least(1), help="override the number of PPO iterations")
    s.add_argument("--ptx", type=_non_negative_float,
                   help="γ of PPO-ptx (pretraining loss weight; default 0: plain PPO)")
    s.add_argument("--beta", type=_non_negative_float, help="override the KL coefficient β")
    s.add_argument("--seed", type=_at_least(0), help="override the PPO seed")
    s.add_argument("--reward-model", nargs="+", metavar="PATH",
                   help="train against this saved reward model (`reward --out PATH`) instead of the cached one; "
                   "several are read as one ensemble (--combine)")
    s.add_argument("--combine", choices=("mean", "min"),
                   help="how several --reward-model rewards combine: their mean (the default) or their minimum, "
                   "worst-case optimisation (Coste et al. 2023)")
    s.add_argument("--init", metavar="PATH",
                   help="start from this saved policy (`rejection-sampling --out PATH`, as Llama 2 did, or `ppo --out "
                   "PATH`) instead of the SFT model; it is also the KL reference")
    _device_option(s)
    s.set_defaults(fn=cmd_ppo)
    s = sub.add_parser("dpo", help="Direct Preference Optimization: LoRA on the SFT model, trained on the cached "
                                   "comparisons (notebook 07's run)")
    s.add_argument("--out", required=True, help="folder for the adapter and the training history")
    s.add_argument("--beta", type=_positive_float, help="override the profile's β (the implicit KL leash)")
    s.add_argument("--n-prompts", type=_at_least(1), help="train on the first N ranked prompts only (default: all)")
    _device_option(s)
    s.set_defaults(fn=cmd_dpo)
    s = sub.add_parser("rejection-sampling",
                       help="Llama 2's rejection-sampling fine-tuning: LoRA on the SFT model, trained on its best-of-n "
                       "answers as the cached reward model picks them")
    s.add_argument("--out", required=True, help="folder for the adapter and the kept answers")
    s.add_argument("--n", type=_at_least(1), default=8, help="samples per prompt (default 8)")
    s.add_argument("--n-prompts", type=_at_least(0), default=0,
                   help="the first N training prompts (default 0: all of them)")
    s.add_argument("--epochs", type=_at_least(1), default=2, help="passes over the kept answers (default 2)")
    s.add_argument("--init", metavar="PATH",
                   help="sample from this saved policy (an earlier `rejection-sampling --out PATH`: Llama 2's next "
                   "round) and train new adapters on it, instead of the SFT model")
    _device_option(s)
    s.set_defaults(fn=cmd_rejection_sampling)
    s = sub.add_parser("pipeline",
                       help="the main job: SFT → comparisons → RM → PPO and PPO-ptx → evaluation, on TinyWorld")
    s.add_argument("--profile", default=argparse.SUPPRESS,
                   help="tiny, smoke, gpt2 or gpt2-smoke (default: $RLHF_LITE_PROFILE, else tiny)")
    s.add_argument("--out", help="folder for metrics.json, plots and logs (default runs/<timestamp>)")
    s.add_argument("--seed", type=_at_least(0), default=0,
                   help="seed of every stage (default 0); same seed, same metrics")
    _device_option(s)
    s.set_defaults(fn=cmd_pipeline)
    s = sub.add_parser("bench", help="our trainers vs TRL's on the same model and data: rates, ratios, peak memory")
    s.add_argument("--model", default="tiny", choices=["tiny", "gpt2-shape"],
                   help="tiny (the shipped model) or gpt2-shape (GPT2Config(), random weights, the real tokenizer)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--out", help="JSON file for the result (default runs/bench-MODEL-DEVICE.json)")
    s.add_argument("--repeats", type=_at_least(1), help="timed repetitions per row (default: the preset's)")
    s.add_argument("--smoke", action="store_true", help="smallest sizes, one repetition (what the tests run)")
    s.add_argument("--rows", nargs="+", default=["sft", "reward", "dpo", "rl"], choices=["sft", "reward", "dpo", "rl"],
                   help="which rows to run (default all)")
    s.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    s.set_defaults(fn=cmd_bench)
    s = sub.add_parser("gpt2-shape", help="write a GPT-2-shaped model (random weights, the real tokenizer from "
                       "../shared/gpt2-tokenizer): an offline stand-in for the hub's gpt2")
    s.add_argument("--out", required=True, help="folder to write")
    s.add_argument("--small", action="store_true", help="2 layers of width 64 instead of GPT-2's 12 of 768")
    s.set_defaults(fn=cmd_gpt2_shape)

    s = sub.add_parser("repo-url", help="point the notebooks' Colab setup cells and the README's badges at a fork")
    s.add_argument("url", help="https://github.com/OWNER/NAME")
    s.set_defaults(fn=cmd_repo_url)

    s = sub.add_parser("notebook-times", help="each notebook's wall time: executed now on a profile, or as recorded")
    s.add_argument("--profile", default="smoke", help="profile to execute the notebooks on (default smoke, as CI)")
    s.add_argument("--recorded", action="store_true",
                   help="read the time stamps of the committed (executed) notebooks instead of running them")
    s.add_argument("--only", nargs="+", metavar="NN",
                   help="only the notebooks whose names start with these, e.g. 00 05")
    s.add_argument("--out", help="JSON file for the result (default runs/notebook-times-PROFILE-MODE.json)")
    s.set_defaults(fn=cmd_notebook_times)
    s = sub.add_parser("save-stages", help="keep the cached SFT model, comparisons and reward model with the "
                       "notebooks (notebooks/saved/PROFILE), where RERUN = False restores them from")
    s.add_argument("--profile", default="tiny", help="profile whose stages to save (default tiny)")
    s.set_defaults(fn=cmd_save_stages)
    s = sub.add_parser("student-notebooks",
                       help="write the notebooks with solutions replaced by stubs, outputs cleared")
    s.add_argument("--out", required=True, help="folder for the student notebooks (not the notebooks folder itself)")
    s.add_argument("--src", help="folder of the solution notebooks (default: the course's notebooks/)")
    s.set_defaults(fn=cmd_student_notebooks)
    s = sub.add_parser("grade", help="run the checkers on the implement-exercises of (students') notebooks")
    s.add_argument("notebooks", nargs="+", help="notebook files to grade")
    s.set_defaults(fn=cmd_grade)
    s = sub.add_parser("browser-check", help="open every notebook in JupyterLab in headless Chromium: screenshots, "
                       "page checks, one ranking clicked through notebook 03's widget (before committing notebooks)")
    s.add_argument("--out", default="runs/browser-check", help="folder for the screenshots")
    s.add_argument("--chromium", default="chromium", help="the browser executable (default: chromium on PATH)")
    s.set_defaults(fn=cmd_browser_check)
    s = sub.add_parser("evaluate", help="gold-panel score of a model's responses on test prompts")
    s.add_argument("--model", help="'tiny', a folder, or a hub name (default: the profile's base model)")
    s.add_argument("--n", type=_at_least(1), default=200, help="test prompts to score (default 200)")
    s.add_argument("--k", type=_at_least(1), default=2,
                   help="2: also measure panel agreement on pairs of samples; 1: skip")
    s.add_argument("--examples", type=_at_least(0), default=4, help="sample responses to print")
    s.add_argument("--world-seed", type=_at_least(0), help="which world (default: the profile's, the shipped model's)")
    s.add_argument("--seed", type=_at_least(0), default=0, help="sampling seed (default 0)")
    _device_option(s)
    s.set_defaults(fn=cmd_evaluate)
    s = sub.add_parser("diagnose", help="where the signal gets lost: the models' recall of the world's facts and "
                       "of a passage's, and the reward model's agreement with the gold panel per criterion "
                       "(cached stages)")
    s.add_argument("--facts", type=_at_least(1), default=400,
                   help="knowledge-base facts to probe, and as many passages (default 400)")
    s.add_argument("--min-gap", type=_non_negative_float, default=0.1,
                   help="smallest gold difference of a pair that counts (default 0.1)")
    s.add_argument("--reward-model", nargs="+", metavar="PATH",
                   help="diagnose these saved reward models (`reward --out PATH`) instead of the cached one; "
                   "several are judged as an ensemble (their mean reward)")
    s.add_argument("--against", nargs="+", metavar="PATH",
                   help="also compare the held-out labelers' agreement with these saved reward models' (an ensemble "
                   "if several): the difference on the same pairs with its 95 %% paired-bootstrap interval")
    s.add_argument("--examples", type=_at_least(0), default=0, metavar="N",
                   help="print N pairs per criterion that the reward model orders against the gold panel (default 0)")
    s.add_argument("--policy", nargs="+", metavar="PATH",
                   help="also set these PPO policies (`ppo --out PATH`) beside best-of-n of the SFT model: the reward "
                   "each reaches and the gold it gets for it (the profile's reward model, or the one --reward-model "
                   "names)")
    s.add_argument("--n", type=_at_least(1), default=300, help="test prompts for --policy (default 300)")
    _device_option(s)
    s.set_defaults(fn=cmd_diagnose)
    args = p.parse_args(argv)
    from .config import SET_ENV

    before = os.environ.get(SET_ENV)
    if args.set:  # for every get_profile of this command, the pipeline's stages included
        os.environ[SET_ENV] = " ".join([before or "", *args.set]).strip()
    try:
        from .config import get_profile

        get_profile(args.profile, args.base_model)
        if getattr(args, "device", None) is not None and args.cmd != "bench":
            from .runtime import pick_device

            pick_device(args.device)  # a missing GPU or a typo stops here, before any work
        return args.fn(args)
    except (ValueError, OSError, FloatingPointError, TypeError) as e:
        if not _raised_by_us(e):
            raise  # a bug, ours or a library's: the traceback says where
        print(f"error: {e}", file=sys.stderr)  # a message we wrote for the user: one line, no traceback
        return 2
    finally:
        if before is None:
            os.environ.pop(SET_ENV, None)
        else:
            os.environ[SET_ENV] = before


def _raised_by_us(e: BaseException) -> bool:
    """True when the exception was raised by a ``raise`` in this package (a checked setting, a bad file, a NaN
    stop): those messages are written for users. Anything raised deep inside a library is shown in full."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = Path(__file__).resolve().parent
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(package)


if __name__ == "__main__":
    sys.exit(main())
