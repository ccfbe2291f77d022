"""The main job: SFT → comparisons → reward model → PPO and PPO-ptx → evaluation.

``python -m rlhf_lite pipeline [--profile tiny] [--out DIR] [--seed S] [--device auto|cpu|cuda]`` runs
:func:`run_pipeline`, prints an InstructGPT-style results table and writes ``DIR/metrics.json`` (plus plots and the
PPO logs). Stages whose output is already cached under ``runs/cache`` with identical settings are reused, not
retrained; point ``$RLHF_LITE_RUNS`` at an empty folder to time a run from scratch. The GPT-2 profiles run the same
job on a hub model (``--base-model PATH`` for one on disk), after continued pretraining on TinyWorld's corpus.
On real data (``gpt2-hub``: Dolly and HH-RLHF, or local files in their schemas) there is no gold judge and no
pretraining corpus: the job trains SFT, the reward model and PPO, and measures them with the reward model and the
KL to SFT only (:func:`reward_model_evaluation`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import matplotlib
import torch

from .cache import code_digest, config_key, continues_pretraining, device_tag
from .config import Profile, get_profile
from .data import render_prompt
from .evaluate import (
    bootstrap_ci,
    closed_tasks,
    compare_policies,
    demonstration_quality,
    evaluate_model,
    fluency_probes,
    kl_to_reference,
    prompt_win_rates,
)
from .files import clear_output_dir, open_output_dir, write_text
from .models import generate, load_base
from .policy_stages import context_limit, fitting_prompts, ppo_stage, rl_prompts
from .pretrain import corpus_blocks
from .reward import load_reward_model, score_responses
from .runtime import course_precision, placement, quiet, rounded, runs_dir, seed_everything
from .stages import base_checkpoint, comparison_data, reward_checkpoint, sft_checkpoint
from .world import world_from_config

MODELS = ("base", "sft", "ppo", "ppo_ptx")
OUTPUTS = ("metrics.json", "ppo_history.json", "samples.json", "winrates.png", "ppo_training.png", "ppo", "ppo/*",
           "ppo_ptx", "ppo_ptx/*")
"""What the pipeline writes into its ``--out`` folder: the only files such a folder may hold to be written again."""


def seeded_profile(profile, seed: int):
    """The profile with every stage's seed set to ``seed`` (the world stays the shipped model's world)."""
    return replace(profile, sft=replace(profile.sft, seed=seed), reward=replace(profile.reward, seed=seed),
                   ppo=replace(profile.ppo, seed=seed))


def run_pipeline(profile: str | Profile | None = None, out: str | Path | None = None, seed: int = 0,
                 progress: bool = True, reuse: bool = False, device: str | None = None,
                 base_model: str | None = None) -> dict:
    """Run every stage on ``device`` (default: the GPU when there is one), evaluate base, SFT, PPO and PPO-ptx on
    the test users' prompts, and save ``metrics.json`` (nested: ``base``/``sft``/``ppo``/``ppo_ptx``/``rm``/
    ``setup``/``runtime_s``), ``ppo_history.json``, ``samples.json`` and two plots in ``out`` (default
    ``runs/<timestamp>``). Returns the metrics. ``base_model``: a GPT-2 profile's model (a folder or hub name).
    ``reuse=True``: if ``out`` already holds the metrics of a run with identical settings and code
    (``setup.config_key``), return those instead of running again (notebook 06 does this). ``out`` must be new,
    empty or an earlier pipeline run's: no file of yours is ever written over."""
    quiet()
    prof = seeded_profile(profile if isinstance(profile, Profile) else get_profile(profile, base_model), seed)
    real = prof.data != "tinyworld"  # real data: no gold judge, no pretraining corpus (so no PPO-ptx)
    device, precision = placement(device)
    key = pipeline_key(prof, device, precision)
    if reuse and out and (Path(out) / "metrics.json").is_file():
        old = json.loads((Path(out) / "metrics.json").read_text())
        if old.get("setup", {}).get("config_key") == key:
            print(f"reusing the pipeline run in {shown_path(out)} (same settings); delete it to run again")
            print(results_table(old))
            return old
    out = open_output_dir(Path(out) if out else runs_dir() / time.strftime("%Y%m%d-%H%M%S"), "pipeline", OUTPUTS)
    for name in ("ppo", "ppo_ptx"):  # an earlier run's PPO checkpoints: this run trains afresh
        clear_output_dir(out / name, "ppo")
    times: dict[str, float] = {}
    t_start = time.time()
    n_stages = 5 + continues_pretraining(prof) + (not real)

    def stage(name, fn):
        print(f"[{len(times) + 1}/{n_stages}] {name}", flush=True)
        t = time.time()
        result = fn()
        times[name] = round(time.time() - t, 1)
        return result

    seed_everything(seed)
    if continues_pretraining(prof):
        stage("continued_pretraining", lambda: base_checkpoint(prof, progress, device))
    sft_dir = stage("sft", lambda: sft_checkpoint(prof, progress=progress, device=device))
    stage("comparisons", lambda: comparison_data(prof, progress=progress, device=device))
    rm_dir = stage("reward_model", lambda: reward_checkpoint(prof, progress=progress, device=device))
    rm_metrics = json.loads((rm_dir / "reward_model.json").read_text())["metrics"]
    ppo, tok, _, ppo_hist = stage("ppo", lambda: ppo_stage(prof, prof.ppo, out / "ppo", progress=progress,
                                                           device=device))
    if real:
        res, metrics = stage("evaluation", lambda: reward_model_evaluation(prof, tok, sft_dir, ppo, rm_dir, device,
                                                                           precision, seed))
        metrics["rm"] = {"accuracy_heldout_labelers": rm_metrics["accuracy_heldout_labelers"],
                         "comparisons": rm_metrics["comparisons"]}
        metrics["setup"] = {"profile": prof.name, "base_model": prof.base_model, "data": prof.data,
                            "comparisons": prof.reward.source, "device": device, "precision": precision, "seed": seed,
                            "config_key": key, "ppo_steps": prof.ppo.steps, "ppo_batch_size": prof.ppo.batch_size,
                            "beta": prof.ppo.init_kl_coef,
                            "judge": "the reward model (real data has no gold judge): a PPO gain here is a proxy gain",
                            "intervals": "95 % paired bootstrap over held-out prompts (2,000 resamples)"}
        metrics["runtime_s"] = {**times, "total": round(time.time() - t_start, 1)}
        metrics = rounded(metrics)
        _save(out, metrics, {"ppo": ppo_hist}, res)
        print(reward_model_table(metrics))
        print(f"metrics, samples and plots in {shown_path(out)}")
        return metrics
    ptx_cfg = replace(prof.ppo, ptx_coef=prof.ptx_coef)
    ptx, _, _, ptx_hist = stage("ppo_ptx", lambda: ppo_stage(prof, ptx_cfg, out / "ppo_ptx", progress=progress,
                                                             device=device))

    def evaluation():
        world = world_from_config(prof.world)
        tasks = world.splits["test"]  # every test-user prompt: the more prompts, the tighter the intervals
        closed = closed_tasks(tasks)
        heldout = corpus_blocks(tok, "heldout", prof.pretrain)
        models = {"base": (load_base(base_checkpoint(prof, progress, device), device=device)[0], None),
                  "sft": (load_base(str(sft_dir), device=device)[0], None),
                  "ppo": (ppo.lm, ppo), "ppo_ptx": (ptx.lm, ptx)}
        with torch.no_grad(), course_precision(device, precision):
            res = {name: evaluate_model(m, tok, world, tasks, closed, prof.max_new_tokens, prof.sft.prompt_format,
                                        seed, heldout, pol, progress) for name, (m, pol) in models.items()}
        held = world.panel.held_out
        for name, other in (("sft", "base"), ("ppo", "sft"), ("ppo_ptx", "sft")):
            res[name].update(comparison(world, tasks, res[name], res[other], other, seed))
        for name in ("ppo", "ppo_ptx"):  # the alignment tax against SFT, the model PPO started from
            res[name]["pretrain_loss_vs_sft"] = res[name]["pretrain_loss"] - res["sft"]["pretrain_loss"]
        tax = res["ppo"]["pretrain_loss_vs_sft"]
        res["ppo_ptx"]["tax_recovered"] = 1 - res["ppo_ptx"]["pretrain_loss_vs_sft"] / tax if tax > 0 else None
        sft_h = res["sft"]["hallucination_rate"]
        for name in ("ppo", "ppo_ptx"):
            res[name]["hallucination_vs_sft"] = res[name]["hallucination_rate"] / sft_h if sft_h else None
        rm, rm_tok = load_reward_model(rm_dir, device=device)
        with torch.no_grad(), course_precision(device, precision):
            probes = fluency_probes(world, tasks, rm, rm_tok, prof.sft.prompt_format, seed, prof.reward.max_length)
        extra = {"demonstrations": {**demonstration_quality(world, tasks),
                                    **writers_vs_sft(tasks, res["sft"]["gens"], held, seed)},
                 "fluency_probes": probes}
        return res, extra, len(tasks), len(closed)

    res, extra, n_tasks, n_closed = stage("evaluation", evaluation)

    metrics = {name: {k: v for k, v in res[name].items() if k not in ("gens", "closed_gens", "gold_scores")}
               for name in MODELS}
    metrics["rm"] = {k: rm_metrics[k] for k in ("accuracy_heldout_labelers", "accuracy_train_labelers",
                                                "panel_agreement", "comparisons") if k in rm_metrics}
    metrics.update(extra)
    metrics["setup"] = {"profile": prof.name, "base_model": prof.base_model, "device": device, "precision": precision,
                        "seed": seed, "config_key": key, "test_prompts": n_tasks,
                        "closed_domain_prompts": n_closed, "closed_domain_samples_per_prompt": 4,
                        "ppo_steps": prof.ppo.steps,
                        "ppo_batch_size": prof.ppo.batch_size, "beta": prof.ppo.init_kl_coef, "ptx_coef": prof.ptx_coef,
                        "intervals": "95 % paired bootstrap over test prompts (2,000 resamples)"}
    metrics["runtime_s"] = {**times, "total": round(time.time() - t_start, 1)}
    metrics = rounded(metrics)
    _save(out, metrics, {"ppo": ppo_hist, "ppo_ptx": ptx_hist}, res)
    print(results_table(metrics))
    print(f"metrics, samples and plots in {shown_path(out)}")
    return metrics


def reward_model_evaluation(prof: Profile, tok, sft_dir: Path, ppo, rm_dir: Path, device: str, precision: str,
                            seed: int = 0) -> tuple[dict, dict]:
    """How a real-data run is measured, without a gold judge: base, SFT and PPO answer the held-out prompts of the
    instruction data (its validation split, those that fit the context, at most ``n_eval_prompts``), the reward
    model scores every answer, and PPO's KL to SFT is estimated on its own samples. Win rates and score
    differences are the reward model's, with 95 % paired-bootstrap intervals over prompts. PPO optimised this very
    reward model, so its gain here is a proxy gain (Gao et al. 2023): read it beside the KL.
    Returns (per-model results with the generations, metrics)."""
    _, held_out = rl_prompts(prof, "validation")
    sft_model = load_base(str(sft_dir), device=device)[0]
    tasks = fitting_prompts(held_out, tok, prof.sft.prompt_format, context_limit(sft_model, prof), prof.max_new_tokens,
                            what="evaluation prompts")
    tasks = tasks[: prof.n_eval_prompts]
    prompts = [render_prompt(tok, t.instruction, t.context, prof.sft.prompt_format) for t in tasks]
    rm, rm_tok = load_reward_model(rm_dir, device=device)
    models = {"base": load_base(base_checkpoint(prof, False, device), device=device)[0], "sft": sft_model,
              "ppo": ppo.lm}
    res = {}
    with torch.no_grad(), course_precision(device, precision):
        for name, model in models.items():
            gens = generate(model, tok, prompts, prof.max_new_tokens, seed=seed)
            scores = score_responses(rm, rm_tok, prompts, [g.text for g in gens], [g.finished for g in gens],
                                     prof.reward.max_length)
            res[name] = {"gens": gens, "scores": scores, "rm_score": sum(scores) / len(scores),
                         "eos_rate": sum(g.finished for g in gens) / len(gens),
                         "response_length": sum(len(g.token_ids) for g in gens) / len(gens)}
        res["ppo"]["kl_to_sft"] = kl_to_reference(ppo, tok, prompts, res["ppo"]["gens"], prof.ppo.temperature)
    for name, other in (("sft", "base"), ("ppo", "sft")):
        a, b = res[name]["scores"], res[other]["scores"]
        wins = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]
        diffs = [x - y for x, y in zip(a, b)]
        res[name].update({f"rm_winrate_vs_{other}": sum(wins) / len(wins),
                          f"rm_winrate_vs_{other}_ci": bootstrap_ci(wins, seed=seed),
                          f"rm_score_vs_{other}": sum(diffs) / len(diffs),
                          f"rm_score_vs_{other}_ci": bootstrap_ci(diffs, seed=seed)})
    metrics = {name: {k: v for k, v in r.items() if k not in ("gens", "scores")} for name, r in res.items()}
    metrics["setup_prompts"] = {"held_out": len(held_out), "evaluated": len(prompts)}
    return res, metrics


def reward_model_table(m: dict) -> str:
    """The table of a real-data run: the reward model's view of base, SFT and PPO."""
    rows = [f"{'model':<6} {'RM score':>9} {'RM win rate [95 % interval]':>36} {'EOS':>6} {'KL→SFT':>7}"]
    for name, other in (("base", None), ("sft", "base"), ("ppo", "sft")):
        r, win = m[name], "—"
        if other:
            lo, hi = r[f"rm_winrate_vs_{other}_ci"]
            win = f"{r[f'rm_winrate_vs_{other}']:.1%} [{lo:.1%}, {hi:.1%}] vs {other}"
        kl = f"{r['kl_to_sft']:.2f}" if "kl_to_sft" in r else "—"
        rows.append(f"{name:<6} {r['rm_score']:>9.3f} {win:>36} {r['eos_rate']:>6.1%} {kl:>7}")
    rows.append(f"judge: {m['setup']['judge']}; {m['setup_prompts']['evaluated']} held-out prompts; reward-model "
                f"accuracy {m['rm']['accuracy_heldout_labelers']:.3f} on held-out pairs; total time "
                f"{m['runtime_s']['total']:.0f} s")
    return "\n".join(rows)


def pipeline_key(profile: Profile, device: str = "cpu", precision: str = "fp32") -> str:
    """What a pipeline run's results depend on: the settings it uses (notebook 07's DPO and GRPO settings change
    nothing here), the code of this module and of everything it imports, and (on a GPU) where it ran."""
    return config_key({k: v for k, v in asdict(profile).items() if k not in ("dpo", "grpo")},
                      code_digest("pipeline"), *device_tag(device, precision))


def shown_path(path: Path) -> str:
    """``path`` relative to the current folder when it is below it or nearby (what a notebook prints should not
    show the folders of the machine that ran it), else as given."""
    rel = os.path.relpath(Path(path).resolve())
    return rel if not rel.startswith("../../") else str(path)


def comparison(world, tasks, a: dict, b: dict, b_name: str, seed: int = 0) -> dict:
    """Model a against model b by the course's protocol (:func:`~rlhf_lite.evaluate.compare_policies`), under
    the metric names of ``metrics.json``: ``winrate_vs_<b>``, ``gold_vs_<b>``, ``criteria_vs_<b>``, each with
    its 95 % paired-bootstrap interval (``…_ci``)."""
    c = compare_policies(world, tasks, a, b, seed)
    return {f"winrate_vs_{b_name}": c["winrate"], f"winrate_vs_{b_name}_ci": c["winrate_ci"],
            f"gold_vs_{b_name}": c["gold_diff"], f"gold_vs_{b_name}_ci": c["gold_diff_ci"],
            f"criteria_vs_{b_name}": c["criteria_diff"], f"criteria_vs_{b_name}_ci": c["criteria_diff_ci"]}


def writers_vs_sft(tasks, sft_gens, labelers, seed: int = 0) -> dict:
    """How often the held-out labelers prefer the writers' demonstrations, and the perfect references, to the SFT
    model's samples (with 95 % paired-bootstrap intervals): the second is the most any policy could win against
    SFT before the labelers' own noise, the yardstick for PPO's win rate."""
    out = {}
    for name, texts in (("", [t.demonstration or t.response for t in tasks]),
                        ("reference_", [t.response for t in tasks])):
        wins = prompt_win_rates(tasks, texts, sft_gens, labelers)
        out[f"{name}winrate_vs_sft"] = sum(wins) / len(wins)
        out[f"{name}winrate_vs_sft_ci"] = bootstrap_ci(wins, seed=seed)
    return out


def _save(out: Path, metrics: dict, histories: dict, res: dict) -> None:
    """metrics.json, ppo_history.json, samples.json and the plots; each file appears whole or not at all."""
    write_text(out / "ppo_history.json", json.dumps(histories, indent=1) + "\n")
    write_text(out / "samples.json",
               json.dumps({name: [g.text for g in r["gens"][:50]] for name, r in res.items()}, indent=1) + "\n")
    plot_results(metrics, histories, out)
    write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")


def results_table(m: dict) -> str:
    """The InstructGPT-style table of one pipeline run."""
    def pct(x):
        return "—" if x is None else f"{x:.1%}"

    def num(x, f="{:.3f}"):
        return "—" if x is None else f.format(x)

    rows = [f"{'model':<8} {'gold':>6} {'win rate [95 % interval]':>31} {'unsafe':>7} {'halluc.':>8} {'EOS':>6} "
            f"{'KL→SFT':>7} {'pretrain loss':>14}"]
    against = {"sft": "base", "ppo": "sft", "ppo_ptx": "sft"}
    for name in MODELS:
        r, other = m[name], against.get(name)
        win = "—"
        if other and f"winrate_vs_{other}" in r:
            lo, hi = r[f"winrate_vs_{other}_ci"]
            win = f"{pct(r[f'winrate_vs_{other}'])} [{lo:.1%}, {hi:.1%}] vs {'SFT' if other == 'sft' else other}"
        rows.append(f"{name:<8} {r['gold_score']:>6.3f} {win:>31} {pct(r['unsafe_rate']):>7} "
                    f"{pct(r['hallucination_rate']):>8} {pct(r['eos_rate']):>6} {num(r.get('kl_to_sft'), '{:.2f}'):>7} "
                    f"{num(r.get('pretrain_loss')):>14}")
    d = m.get("demonstrations", {})
    if "reference_winrate_vs_sft" in d:
        rows.append(f"for scale: the writers' demonstrations win {pct(d['winrate_vs_sft'])} against SFT, the perfect "
                    f"references {pct(d['reference_winrate_vs_sft'])} (the labelers' noise caps any win rate)")
    rm = m["rm"]
    rows.append(f"reward model: accuracy {rm['accuracy_heldout_labelers']:.3f} on held-out labelers "
                f"(labeler-labeler agreement {rm['panel_agreement']:.3f})   total time {m['runtime_s']['total']:.0f} s")
    return "\n".join(rows)


def plot_results(metrics: dict, histories: dict, out: Path) -> None:
    """winrates.png (InstructGPT Figure 1 for our models) and ppo_training.png (reward, KL, gold per step)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend

    fig, ax = plt.subplots(figsize=(5, 3.2))
    judge = "" if "ppo_ptx" in metrics else "rm_"  # real data: the reward model's win rates, no PPO-ptx
    pairs = (("SFT vs base", "sft", "base"), ("PPO vs SFT", "ppo", "sft"), ("PPO-ptx vs SFT", "ppo_ptx", "sft"))
    bars = [(label, metrics[name], o) for label, name, o in pairs if name in metrics]
    heights = [r[f"{judge}winrate_vs_{o}"] for _, r, o in bars]
    errors = [[h - r[f"{judge}winrate_vs_{o}_ci"][0] for h, (_, r, o) in zip(heights, bars)],
              [r[f"{judge}winrate_vs_{o}_ci"][1] - h for h, (_, r, o) in zip(heights, bars)]]
    ax.bar([b[0] for b in bars], heights, yerr=errors, capsize=4, color=["#999", "#d62728", "#ff9896"][:len(bars)])
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_ylabel(("win rate, held-out labelers" if not judge else "win rate by the reward model")
                  + "\n(95 % paired bootstrap)")
    fig.tight_layout()
    fig.savefig(out / "winrates.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for key, ax in zip(("reward", "kl", "gold"), axes):
        for name, hist in histories.items():
            ax.plot([h["step"] for h in hist], [h.get(key, float("nan")) for h in hist], label=name)
        ax.set_title({"reward": "proxy reward (RM)", "kl": "KL to SFT (nats)", "gold": "gold score of rollouts"}[key])
        ax.set_xlabel("PPO step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "ppo_training.png", dpi=120)
    plt.close(fig)
