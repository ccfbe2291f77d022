"""What each of the course's commands does (``python -m rlhf_lite COMMAND``): one function per command, which takes
the profile as an object and plain arguments, runs the stages, prints a short report and returns its metrics. The
command line (:mod:`rlhf_lite.__main__`) only parses arguments and calls these; a notebook or a test can call them
the same way.
"""
from __future__ import annotations

import json
import random
import textwrap
from dataclasses import asdict

from .config import Profile
from .data import render_prompt
from .evaluate import bootstrap_ci, demonstration_quality, gold_eval, prompt_win_rates
from .feedback import agreement_matrix
from .files import atomic_dir, check_output_dir
from .models import generate, load_base
from .pipeline import run_pipeline
from .policy_stages import (
    dpo_stage,
    policy_comparisons,
    ppo_stage,
    record_start,
    rejection_sampling_stage,
    saved_policy,
)
from .pretrain import pretrain as pretrain_model
from .reward import load_reward_model, record_scores, save_reward_model
from .runtime import hf_bars_off, pick_device, quiet, rounded, seed_everything
from .stages import (
    base_checkpoint,
    off_diagonal_mean,
    reward_checkpoint,
    sft_checkpoint,
    train_reward_stage,
    train_sft_model,
)
from .world import CATEGORIES, CORRUPTIONS, world_from_config


def pretrain(profile: Profile, out: str) -> dict:
    """``pretrain``: the tokenizer and the tiny GPT-2, trained from scratch on TinyWorld's corpus, saved to ``out``."""
    quiet()
    cfg = profile.pretrain
    print(f"pretraining a tiny GPT-2 on the TinyWorld corpus ({cfg.steps} steps) -> {out}")
    card = pretrain_model(cfg, out)
    print(f"done in {card['wall_time_s']:.0f} s: {card['parameters']:,} parameters, {card['tokens_seen']:,} tokens "
          f"seen, train loss {card['final_train_loss']:.3f}, held-out loss {card['final_heldout_loss']:.3f}")
    return card


def world(profile: Profile, show: int = 2, stats: bool = False, seed: int = 0) -> dict:
    """``world``: ``show`` sample instruction records (Dolly's schema) per category, or the world's statistics."""
    w = world_from_config(profile.world)
    if not stats:
        rng = random.Random(seed)
        for cat in CATEGORIES:
            pool = [t for t in w.splits["train"] if t.category == cat]
            for t in rng.sample(pool, min(show, len(pool))):
                print(f"=== {cat} ({t.task_type}, {t.prompt_id}, user {t.user_id})")
                print(json.dumps(t.to_dolly(), indent=1, ensure_ascii=False))
        return {}
    rng = random.Random(0)
    pairs = [(t, *rng.sample(list(w.variants(t).values()), 2)) for t in w.splits["test"]]
    per_user: dict[str, int] = {}
    for t in w.tasks:
        per_user[t.user_id] = per_user.get(t.user_id, 0) + 1
    out = {"seed": w.seed, "facts": len(w.kb.facts), "prompts": len(w.tasks), "users": len(per_user),
           "max_prompts_per_user": max(per_user.values()), "splits": {k: len(v) for k, v in w.splits.items()},
           "categories": {c: sum(t.category == c for t in w.tasks) for c in CATEGORIES},
           "panel": [lab.name + (" (held out)" if lab.held_out else "") for lab in w.panel.labelers],
           "panel_agreement_on_test_variant_pairs": round(w.panel.agreement(pairs), 4), "corruptions": CORRUPTIONS,
           "train_demonstrations": rounded(demonstration_quality(w, w.splits["train"])), "digest": w.digest()}
    print(json.dumps(out, indent=1))
    return out


def evaluate(profile: Profile, model: str | None = None, n: int = 200, k: int = 2, examples: int = 4, seed: int = 0,
             device: str | None = None) -> dict:
    """``evaluate``: the gold panel's score of a model's answers to ``n`` test prompts, and (``k`` = 2) the panel's
    agreement on pairs of its samples."""
    quiet()
    seed_everything(seed)
    w = world_from_config(profile.world)
    lm, tok = load_base(model or profile.base_model, device=pick_device(device))
    tasks = w.splits["test"][:n]
    fmt = profile.sft.prompt_format
    r = gold_eval(lm, tok, w, tasks, max_new_tokens=profile.max_new_tokens, seed=seed, fmt=fmt, progress=True)
    print(f"model {model or profile.base_model} on {len(tasks)} test prompts (profile {profile.name}):")
    print(f"  gold score of its responses: {r['gold']:.3f}   reference responses: {r['reference_gold']:.3f}   "
          f"EOS rate: {r['eos_rate']:.2f}")
    print("  by category: " + ", ".join(f"{c} {v:.2f}" for c, v in r["by_category"].items()))
    print("  criteria:    " + ", ".join(f"{c} {v:.2f}" for c, v in r["criteria"].items()))
    metrics = {k_: r[k_] for k_ in ("gold", "reference_gold", "eos_rate", "by_category", "criteria")}
    if k > 1:  # panel agreement on pairs of this model's own samples, as InstructGPT measured it
        pairs = []
        for i, t in enumerate(tasks):
            g = generate(lm, tok, [render_prompt(tok, t.instruction, t.context, fmt)] * 2, profile.max_new_tokens,
                         seed=seed + 1000 + i)
            pairs.append((t, g[0].text, g[1].text))
        metrics["panel_agreement"] = w.panel.agreement(pairs)
        print(f"  panel agreement on pairs of its samples: {metrics['panel_agreement']:.3f} (InstructGPT labelers: "
              "0.726)")
    for t, g, s in r["samples"][:examples]:
        print(textwrap.indent(f"--- {t.category}: {t.instruction[:100]!r}\n    -> {g.text[:160]!r} (gold {s:.2f})",
                              "  "))
    return rounded(metrics)


def sft_versus_base(profile: Profile, model, tok, n: int = 200, device: str | None = None) -> dict:
    """The SFT model against the model it started from, on the first ``n`` test prompts: gold scores, the held-out
    labelers' win rate with its 95 % paired-bootstrap interval, and the writers' own demonstrations against the same
    base answers (the most that imitating them can win)."""
    cfg, w = profile.sft, world_from_config(profile.world)
    tasks = w.splits["test"][:n]

    def judged(lm):
        return gold_eval(lm, tok, w, tasks, profile.max_new_tokens, seed=0, fmt=cfg.prompt_format, progress=True)

    sft = judged(model)
    if cfg.lora:  # the base model is the same weights with the adapter switched off
        with model.disable_adapter():
            base = judged(model)
    else:
        base = judged(load_base(base_checkpoint(profile, device=device), device=pick_device(device))[0])
    base_gens = [g for _, g, _ in base["samples"]]
    wins = prompt_win_rates(tasks, [g for _, g, _ in sft["samples"]], base_gens, w.panel.held_out)
    demo = prompt_win_rates(tasks, [t.demonstration or t.response for t in tasks], base_gens, w.panel.held_out)
    return rounded({"n_test_prompts": len(tasks), "gold_sft": sft["gold"], "gold_base": base["gold"],
                    "gold_reference": sft["reference_gold"], "win_rate_vs_base_held_out": sum(wins) / len(wins),
                    "win_rate_vs_base_ci": bootstrap_ci(wins), "demonstrations_win_rate_vs_base": sum(demo) / len(demo),
                    "demonstrations_win_rate_vs_base_ci": bootstrap_ci(demo), "eos_rate_sft": sft["eos_rate"],
                    "eos_rate_base": base["eos_rate"], "criteria_sft": sft["criteria"],
                    "by_category_sft": sft["by_category"]})


def sft(profile: Profile, out: str | None = None, n: int = 200, device: str | None = None) -> dict:
    """``sft``: supervised fine-tuning with the profile's settings, then (TinyWorld) the gold score and win rate
    against the base model; ``out`` gets the adapter, the merged model, ``metrics.json`` and ``history.json``."""
    if out:
        check_output_dir(out, "sft")  # before training, not after it
    quiet()
    cfg, device = profile.sft, pick_device(device)
    print(f"SFT on {profile.data} with {'LoRA' if cfg.lora else 'full fine-tuning'} on {device}")
    model, tok, history = train_sft_model(profile, device=device)
    params = history["parameters"]
    print(f"{params['trainable']:,} of {params['total']:,} parameters trained on {history['n_train_examples']} "
          "examples")
    evals = history["eval"]
    metrics = {"profile": profile.name, "wall_time_s": round(history["wall_time_s"], 1),
               "steps": len(history["train"]), "train_tokens": history["tokens"],
               "trainable_parameters": params["trainable"],
               "final_validation_loss": evals[-1]["loss"] if evals else None}
    print(f"trained {metrics['steps']} steps in {metrics['wall_time_s']:.0f} s" +
          (f"; validation loss {evals[0]['loss']:.3f} -> {evals[-1]['loss']:.3f}" if evals else ""))
    if profile.data == "tinyworld":
        metrics.update(sft_versus_base(profile, model, tok, n, device))
        m = metrics
        print(f"gold score on {m['n_test_prompts']} test-user prompts: SFT {m['gold_sft']:.3f} | base "
              f"{m['gold_base']:.3f} | reference {m['gold_reference']:.3f}")
        lo, hi = m["win_rate_vs_base_ci"]
        print(f"win rate SFT vs base, held-out labelers: {m['win_rate_vs_base_held_out']:.1%} [95 %: {lo:.1%}, "
              f"{hi:.1%}]   EOS rate SFT {m['eos_rate_sft']:.2f} (base {m['eos_rate_base']:.2f})")
        lo, hi = m["demonstrations_win_rate_vs_base_ci"]
        print(f"for scale, the writers' demonstrations vs base: {m['demonstrations_win_rate_vs_base']:.1%} "
              f"[95 %: {lo:.1%}, {hi:.1%}]")
    if out:
        with atomic_dir(out, "sft") as tmp:  # nothing half-written if saving fails
            with hf_bars_off():
                if cfg.lora:
                    model.save_pretrained(tmp / "adapter")  # first: merging folds the adapter away
                (model.merge_and_unload() if cfg.lora else model).save_pretrained(tmp / "merged")
            tok.save_pretrained(tmp / "merged")
            (tmp / "metrics.json").write_text(json.dumps({**metrics, "config": asdict(cfg)}, indent=1,
                                                         default=str) + "\n")
            (tmp / "history.json").write_text(json.dumps({k: v for k, v in history.items() if k != "config"},
                                                         default=str) + "\n")
        print(f"saved adapter, merged model and metrics to {out}")
    return metrics


def second_round_accuracy(profile: Profile, rm, tok, more: dict, first, device: str | None = None) -> dict:
    """A reward model trained on a second round (``more``) against the first round's (``first``: its folder), on the
    pairs of the policy's own answers: the held-out labelers' agreement with each, the difference with its 95 %
    paired-bootstrap interval, and the labelers' agreement with each other there."""
    from .course.diagnose import accuracy_difference  # a measurement of the course's, not an algorithm

    w = world_from_config(profile.world)
    d = accuracy_difference(w, more["validation"], record_scores(rm, tok, profile.reward.max_length),
                            record_scores(*load_reward_model(first, device=pick_device(device)),
                                          profile.reward.max_length), w.panel.held_out)
    return rounded({"accuracy_heldout_labelers": d["a"], "first_round_accuracy": d["b"],
                    "difference": d["difference"], "difference_ci": d["difference_ci"], "pairs": d["pairs"],
                    "prompts": d["prompts"],
                    "panel_agreement": off_diagonal_mean(agreement_matrix(w, more["validation"], w.panel.labelers))})


def reward(profile: Profile, out: str | None = None, policy: str | None = None, policy_prompts: str = "unranked",
           device: str | None = None) -> dict:
    """``reward``: comparisons from the SFT model, the reward model trained on them and measured on held-out users;
    with ``policy``, a second round ranking that policy's answers is trained on too, and both rounds' models are
    compared on the policy's own pairs. ``out`` gets the reward model."""
    if out:
        check_output_dir(out, "reward")  # before training, not after it
    if policy:
        saved_policy(policy, what="--policy")
    quiet()
    cfg, device = profile.reward, pick_device(device)
    seed_everything(cfg.seed)
    more = policy_comparisons(profile, policy, device=device, prompts=policy_prompts) if policy else None
    if more:
        print(f"second round: {len(more['train']):,} training and {len(more['validation'])} validation prompts, the "
              f"answers sampled from {policy} and ranked by the training labelers")
    print(f"reward model for profile {profile.name}: comparisons from {cfg.source}{' (both rounds)' if more else ''}, "
          f"{'K-choose-2 batches' if cfg.grouped else 'shuffled pairs (ablation)'}, "
          f"{'LoRA' if cfg.lora else 'full fine-tuning'}")
    rm, tok, metrics, history = train_reward_stage(profile, device=device, more=more)
    print(f"trained on {metrics['comparisons']:,} comparisons from {metrics['prompts']:,} prompts in "
          f"{metrics['wall_time_s']:.0f} s; validation loss {history['eval'][0]['loss']:.3f} -> "
          f"{metrics['validation_loss']:.3f}")
    if "accuracy_train_labelers" in metrics:
        m = metrics
        print(f"pairwise accuracy on held-out users' pairs: training labelers {m['accuracy_train_labelers']:.3f}, "
              f"held-out labelers {m['accuracy_heldout_labelers']:.3f}; labelers agree with each other "
              f"{m['panel_agreement']:.3f}; the gold score itself reaches {m['gold_ceiling']:.3f}")
        v = metrics["variant_pairs"]
        print(f"on reference-vs-corruption answers: held-out labelers {v['accuracy_heldout_labelers']:.3f}, "
              f"labelers agree {v['panel_agreement']:.3f}")
    if more:  # the first round's reward model, with the same settings (cached), on the policy's own answers
        p = metrics["policy_pairs"] = second_round_accuracy(profile, rm, tok, more,
                                                            reward_checkpoint(profile, device=device), device)
        lo, hi = p["difference_ci"]
        print(f"on {p['pairs']:,} pairs of the policy's own answers ({p['prompts']} held-out users' prompts): held-out "
              f"labelers {p['accuracy_heldout_labelers']:.3f}, the first round's reward model "
              f"{p['first_round_accuracy']:.3f}, difference {p['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] (95 % "
              f"paired bootstrap); labelers agree {p['panel_agreement']:.3f}")
    if out:
        save_reward_model(rm, out, base=sft_checkpoint(profile, device=device),
                          extra={"metrics": metrics, "history": history})
        print(f"saved to {out}")
    print(json.dumps(metrics))
    return metrics


def ppo(profile: Profile, out: str | None = None, resume: bool = False, reward_model: list[str] | None = None,
        combine: str | None = None, init: str | None = None, device: str | None = None) -> dict:
    """``ppo``: PPO (or PPO-ptx, ``ppo.ptx_coef``) from the SFT model (or the saved policy ``init``) against the
    cached reward model (or the saved ones in ``reward_model``, an ensemble if several: ``combine``); checkpoints
    and the final adapter in ``out``, which ``resume`` continues. Returns the last iteration's metrics."""
    if combine and len(reward_model or []) < 2:
        raise ValueError("--combine joins the rewards of several reward models; name at least two with --reward-model")
    quiet()
    cfg = profile.ppo
    print(f"PPO{f'-ptx (γ = {cfg.ptx_coef})' if cfg.ptx_coef else ''} on profile {profile.name}: {cfg.steps} steps of "
          f"{cfg.batch_size} episodes, β = {cfg.init_kl_coef}" + (f", checkpoints in {out}" if out else ""))
    if reward_model:
        print(f"against the {combine or 'mean'} of {len(reward_model)} reward models: " + ", ".join(reward_model)
              if len(reward_model) > 1 else f"against the reward model in {reward_model[0]}")
    if init:
        print(f"starting from the policy in {init} (also the KL reference)")
    _, _, _, history = ppo_stage(profile, cfg, out_dir=out, resume=resume, device=device, reward_model=reward_model,
                                 init=init, combine=combine)
    last = {k: round(history[-1][k], 4) for k in ("step", "reward", "kl", "gold", "eos_rate", "response_length")
            if k in history[-1]}
    print(json.dumps(last))
    if out:
        print(f"adapter saved to {out}/adapter (load it with rlhf_lite.policy_stages.load_policy; compare it with "
              f"`diagnose --policy {out}`)")
    return last


def rejection_sampling(profile: Profile, out: str, n: int = 8, n_prompts: int = 0, epochs: int = 2,
                       init: str | None = None, device: str | None = None) -> dict:
    """``rejection-sampling``: best-of-``n`` answers of the SFT model (or the saved policy ``init``), as the reward
    model picks them, learned by new LoRA adapters for ``epochs``; ``out`` gets the adapter and the kept answers."""
    check_output_dir(out, "rejection-sampling")  # before any model is loaded or trained
    init = saved_policy(init, out) if init else None
    quiet()
    print(f"rejection sampling on profile {profile.name}: best of {n} "
          f"{'samples of the policy in ' + init if init else 'SFT samples'} (the reward model picks) for "
          f"{'every' if not n_prompts else f'the first {n_prompts:,}'} training prompt{'s' if n_prompts > 1 else ''}"
          f", then {epochs} epoch{'s' if epochs > 1 else ''} of LoRA fine-tuning on them")
    model, _, records, history = rejection_sampling_stage(profile, n, n_prompts, epochs, device=device, init=init)
    metrics = {"kept": len(records), "mean_reward": sum(r["reward"] for r in records) / max(1, len(records)),
               "steps": len(history["train"]), "final_loss": history["train"][-1]["loss"]}
    print(f"kept {metrics['kept']:,} answers (mean reward {metrics['mean_reward']:+.3f}); trained {metrics['steps']} "
          f"steps in {history['wall_time_s']:.0f} s, final loss {metrics['final_loss']:.3f}")
    with atomic_dir(out, "rejection-sampling") as tmp, hf_bars_off():  # nothing half-written if saving fails
        model.save_pretrained(tmp / "adapter")
        (tmp / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        if init:  # what load_policy merges under this adapter
            record_start(tmp, init)
    print(f"adapter saved to {out}/adapter, the kept answers to {out}/records.jsonl (compare it with "
          f"`diagnose --policy {out}`)")
    return rounded(metrics)


def dpo(profile: Profile, out: str, device: str | None = None) -> dict:
    """``dpo``: Direct Preference Optimization, LoRA on the SFT model trained on the cached comparisons (notebook 07's
    run); ``out`` gets the adapter and the training history. Returns the last validation metrics."""
    check_output_dir(out, "dpo")  # before any model is loaded or trained
    quiet()
    cfg = profile.dpo
    print(f"DPO on profile {profile.name}: β = {cfg.beta}, LoRA on the SFT model, "
          f"{'all' if not cfg.n_prompts else f'the first {cfg.n_prompts:,}'} ranked training prompts")
    model, _, history = dpo_stage(profile, cfg, device=device)
    e0, e1 = history["eval"][0], history["eval"][-1]
    print(f"{history['pairs']:,} pairs, {len(history['train'])} steps in {history['wall_time_s']:.0f} s; validation "
          f"loss {e0['loss']:.3f} -> {e1['loss']:.3f}, implicit-reward accuracy {e0['accuracy']:.3f} -> "
          f"{e1['accuracy']:.3f}; implicit reward of chosen {e1['chosen_reward']:+.3f}, of rejected "
          f"{e1['rejected_reward']:+.3f}")
    with atomic_dir(out, "dpo") as tmp, hf_bars_off():  # nothing half-written if saving fails
        model.save_pretrained(tmp / "adapter")
        (tmp / "history.json").write_text(json.dumps(history, indent=1))
    print(f"adapter saved to {out}/adapter (compare it with `diagnose --policy {out}`)")
    return e1


def pipeline(profile: Profile, out: str | None = None, seed: int = 0, device: str | None = None) -> dict:
    """``pipeline``: the main job (:func:`rlhf_lite.pipeline.run_pipeline`)."""
    return run_pipeline(profile, out, seed, device=device)
