"""The cached stages for a profile, each built once: the plumbing above the algorithms.

Each stage function takes a :class:`~rlhf_lite.config.Profile`, runs the algorithm modules with its settings and
caches what later stages need under ``runs/cache`` (``$RLHF_LITE_RUNS`` moves it):

* :func:`base_checkpoint`: the model SFT starts from ("tiny", or a hub model after continued pretraining on
  TinyWorld's corpus for the ``gpt2`` profiles);
* :func:`sft_checkpoint`: the SFT model (step 1, adapters merged);
* :func:`comparison_data`: K samples of the SFT model per prompt, ranked by the labeler panel;
* :func:`reward_checkpoint`: the reward model trained on them (step 2), normalised and measured.

The policies trained on top of them (PPO, DPO, rejection sampling; not cached) are in
:mod:`rlhf_lite.policy_stages`.

A cache folder's name (:mod:`rlhf_lite.cache`) hashes every setting the stage depends on, the data (a local file by
its contents) *and the source of this module and of every package module it imports*, so changing ``train_sft``,
the labelers or the learning-rate schedule retrains instead of silently reusing an old model. Every notebook and
command goes through these functions, so none retrains what an earlier one built with the same settings.

``device`` (every stage function's keyword; default ``$RLHF_LITE_DEVICE``, else the GPU when there is one) is
where the models load and train; on a GPU the work runs under the precision of
:func:`~rlhf_lite.runtime.pick_precision` (bf16 autocast where the GPU computes it natively). A stage built on a
GPU is cached apart from the CPU's (its floating-point results differ).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from .cache import STAGE_CODE, base_key, comparisons_key, continues_pretraining, reward_key, sft_key
from .checkpoint import trained_state
from .config import Profile, RewardConfig, SFTConfig, get_profile
from .data import load_instruction_dataset, render_prompt
from .feedback import (
    RankingStore,
    agreement_matrix,
    collect_comparisons,
    expected_agreement,
    in_policy_format,
    load_preference_dataset,
    read_comparisons,
    variant_comparisons,
)
from .files import atomic_dir, save_state
from .models import load_base
from .pretrain import continue_pretraining
from .reward import (
    RewardModel,
    build_reward_model,
    normalize_rewards,
    rm_accuracy,
    save_reward_model,
    train_reward_model,
)
from .runtime import course_precision, hf_bars_off, pick_device, placement, rounded, runs_dir, seed_everything
from .sft import add_lora, count_parameters, load_quantized, train_sft
from .world import world_from_config

SFT_CODE = REWARD_CODE = STAGE_CODE  # what the notebooks' saved cells built on these stages are keyed on
SFT_ADAPTERS = "lora/adapters.safetensors"  # in an SFT folder: the LoRA adapters alone (under 1 MB on tiny)


# ---------------------------------------------------------------------------------------------
# Where the work runs, and the model SFT starts from
# ---------------------------------------------------------------------------------------------
def base_checkpoint(profile: Profile | None = None, progress: bool = True, device: str | None = None) -> str:
    """The model SFT starts from, as ``load_base`` takes it: "tiny" (the shipped model); a hub model's name or folder
    for real data (``profile.data`` other than "tinyworld"); or, for a hub model on TinyWorld, that model after
    continued pretraining on the TinyWorld corpus (``profile.pretrain``'s steps), trained and cached on first use."""
    profile = profile or get_profile()
    if not continues_pretraining(profile):
        return profile.base_model
    device, precision = placement(device)
    out = runs_dir() / "cache" / base_key(profile, device)
    if not (out / "config.json").is_file():
        print(f"{profile.base_model} has not learned TinyWorld's language yet: continued pretraining on its corpus "
              f"({profile.pretrain.steps} steps, cached in runs/cache/{out.name})")
        with course_precision(device, precision):
            card = continue_pretraining(profile.base_model, profile.pretrain, out, device, progress)
        print(f"continued pretraining done in {card['wall_time_s']:.0f} s: held-out loss "
              f"{card['heldout_loss_before']:.3f} -> {card['final_heldout_loss']:.3f}")
    return str(out)


# ---------------------------------------------------------------------------------------------
# Step 1: the SFT model
# ---------------------------------------------------------------------------------------------
def train_sft_model(profile: Profile, cfg: SFTConfig | None = None, progress: bool = True, device: str | None = None):
    """The whole SFT stage for a profile: load the base model (:func:`base_checkpoint`; quantized if asked) on
    ``device``, add LoRA, train on the profile's demonstrations (``profile.data``: TinyWorld's writers, Dolly-15k, or
    a local file in Dolly's schema).
    Returns (model, tokenizer, history)."""
    cfg = cfg or profile.sft
    device, precision = placement(device)
    base = base_checkpoint(profile, progress, device)
    seed_everything(cfg.seed)
    data = load_instruction_dataset(profile.data, world_config=profile.world)
    if cfg.quantization != "none":
        model, tok, _ = load_quantized(base, cfg.quantization, device)
    else:
        model, tok = load_base(base, device=device)
    model = add_lora(model, cfg, profile.lora) if cfg.lora else model
    with course_precision(device, precision):
        history = train_sft(model, tok, data, cfg, progress=progress)
    history["parameters"] = count_parameters(model)
    history["n_train_examples"] = len(data["train"])
    return model, tok, history


def sft_checkpoint(profile: Profile | None = None, progress: bool = True, device: str | None = None) -> Path:
    """Folder of the profile's SFT model (adapters merged), trained on ``device`` and cached under ``runs/cache``
    on first use. Later stages (comparisons, reward model, PPO) and notebooks start from it."""
    profile = profile or get_profile()
    device = pick_device(device)
    out = runs_dir() / "cache" / sft_key(profile, device)
    if (out / "config.json").is_file():
        return out
    print(f"no SFT model for profile {profile.name!r} yet: training one on {device} (cached in runs/cache/{out.name})")
    model, tok, history = train_sft_model(profile, progress=progress, device=device)
    write_sft_checkpoint(out, model, tok, history, profile.sft.lora)
    print(f"trained the SFT model in {history['wall_time_s']:.0f} s")
    return out


def write_sft_checkpoint(out: Path, model, tok, history: dict, lora: bool) -> None:
    """Write an SFT model folder atomically: the merged model and tokenizer, ``history.json``, and (LoRA) the
    adapters alone in ``lora/adapters.safetensors``, the small form the notebooks keep of it
    (``rlhf_lite.course.saved``)."""
    with atomic_dir(out, "sft") as tmp, hf_bars_off():
        if lora:
            (tmp / "lora").mkdir()  # a subfolder: the model folder's own *.safetensors are the model's weights
            save_state(tmp / SFT_ADAPTERS, trained_state(model))
        merged = model.merge_and_unload() if lora else model
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "history.json").write_text(json.dumps({k: v for k, v in history.items() if k != "config"}, default=str))


# ---------------------------------------------------------------------------------------------
# Step 2: comparisons, then the reward model
# ---------------------------------------------------------------------------------------------
def rank_samples(model, tok, world, profile: Profile, tasks, seed: int, store: RankingStore | None = None,
            progress: bool = True) -> list[dict]:
    """K samples of ``model`` per task, ranked by the training labelers, with the profile's comparison settings."""
    cfg = profile.reward
    return collect_comparisons(model, tok, world, tasks, world.panel.train, cfg.k_min, cfg.k_max, cfg.max_new_tokens,
                               cfg.temperature, profile.sft.prompt_format, seed, store=store, progress=progress)


def comparisons_dir(profile: Profile, progress: bool = True, device: str | None = None) -> Path:
    """The cache folder of a TinyWorld profile's comparisons (built if missing): train.jsonl, validation.jsonl."""
    cfg = profile.reward
    device, precision = placement(device)
    sft_dir = sft_checkpoint(profile, progress=progress, device=device)
    out = runs_dir() / "cache" / comparisons_key(profile, sft_dir.name, device)
    if (out / "train.jsonl").is_file():
        return out
    t0 = time.time()
    print(f"no comparisons for profile {profile.name!r} yet: sampling {cfg.k_min}-{cfg.k_max} answers for "
          f"{cfg.n_prompts + cfg.n_eval_prompts} prompts and ranking them")
    world = world_from_config(profile.world)
    model, tok = load_base(str(sft_dir), device=device)
    with atomic_dir(out, "comparisons") as tmp, course_precision(device, precision):
        for split, n, seed in (("train", cfg.n_prompts, cfg.seed), ("validation", cfg.n_eval_prompts, cfg.seed + 1)):
            rank_samples(model, tok, world, profile, world.splits[split][:n], seed,
                         RankingStore(tmp / f"{split}.jsonl"), progress)
        (tmp / "info.json").write_text(json.dumps({"seconds": round(time.time() - t0, 1), "sft": sft_dir.name}))
    print(f"sampled and ranked the comparisons in {time.time() - t0:.0f} s (cached in runs/cache/{out.name})")
    return out


def comparison_data(profile: Profile | None = None, progress: bool = True,
                    device: str | None = None) -> dict[str, list[dict]]:
    """The profile's comparisons: ``{"train": [...], "validation": [...]}``, built once and cached.

    TinyWorld: the SFT model (:func:`sft_checkpoint`) samples K responses per prompt; training prompts are ranked
    by the training labelers, one labeler per prompt; validation prompts (held-out users) too, to measure the
    reward model on people it has not seen. Held-out labelers never rank anything here: they only judge. Real data
    (``source`` "hh-rlhf" or a file): its own splits (a tenth of a file held out), prompts rendered in the policy's
    prompt format (:func:`~rlhf_lite.feedback.in_policy_format`).
    """
    profile = profile or get_profile()
    cfg = profile.reward
    if cfg.source != "tinyworld":
        train = load_preference_dataset(cfg.source, "train")
        if cfg.source == "hh-rlhf":
            val = load_preference_dataset(cfg.source, "test")
        else:
            rng = random.Random(cfg.seed)
            rng.shuffle(train)
            val, train = train[: max(1, len(train) // 10)], train[max(1, len(train) // 10):]
        fmt = profile.sft.prompt_format  # the reward model reads prompts as the policy will write them
        tok = None if fmt == "alpaca" else load_base(base_checkpoint(profile, progress, "cpu"))[1]
        return {"train": in_policy_format(train[: cfg.n_prompts], tok, fmt),
                "validation": in_policy_format(val[: cfg.n_eval_prompts], tok, fmt)}
    out = comparisons_dir(profile, progress, device)
    return {split: read_comparisons(out / f"{split}.jsonl") for split in ("train", "validation")}


def train_reward_stage(profile: Profile | None = None, cfg: RewardConfig | None = None, progress: bool = True,
                       device: str | None = None, more: dict[str, list[dict]] | None = None):
    """Everything of step 2 for a profile: comparisons (cached), a reward model on the SFT model,
    trained for ``cfg.epochs``, normalised on the demonstrations, then measured. Returns
    (reward model, tokenizer, metrics, history). Metrics (TinyWorld): ``accuracy_train_labelers`` and
    ``accuracy_heldout_labelers`` (expected agreement with each group on held-out users' pairs),
    ``panel_agreement`` (two different labelers: the human-level ceiling), ``gold_ceiling`` (the gold
    score itself as a judge of the held-out labelers), ``validation_loss``, ``comparisons``, ``wall_time_s``,
    and ``variant_pairs`` (held-out accuracy and panel agreement on reference-vs-corruption answers).
    ``more``: a second round's comparisons (:func:`~rlhf_lite.policy_stages.policy_comparisons`), trained on
    together with the first's (measured on the first round's validation pairs, as always; ``reward --policy`` adds
    the policy's own)."""
    profile = profile or get_profile()
    cfg = cfg or profile.reward
    device, precision = placement(device)
    data = comparison_data(profile, progress=progress, device=device)
    train = data["train"] + (more["train"] if more else [])
    lm, tok = load_base(str(sft_checkpoint(profile, progress=progress, device=device)), device=device)
    rm = build_reward_model(lm, cfg, profile.lora).to(device)
    with course_precision(device, precision):
        history = train_reward_model(rm, tok, train, cfg, data["validation"], progress=progress)
    metrics = {"comparisons": history["pairs"], "prompts": len(train),
               "wall_time_s": round(history["wall_time_s"], 1), "validation_loss": history["eval"][-1]["loss"],
               "validation_accuracy": history["eval"][-1]["accuracy"]}
    with course_precision(device, precision):
        if cfg.source == "tinyworld":
            metrics.update(_measure_reward_model(rm, tok, profile, cfg, data["validation"]))
        else:
            normalize_rewards(rm, tok, [r["prompt"] for r in data["train"][:200]],
                              [r["responses"][0] for r in data["train"][:200]], cfg.max_length)  # chosen replies
            metrics["accuracy_heldout_labelers"] = metrics["validation_accuracy"]  # others' labels, held-out prompts

    return rm, tok, rounded(metrics), history


def _measure_reward_model(rm: RewardModel, tok, profile: Profile, cfg: RewardConfig, val: list[dict]) -> dict:
    """Normalise the reward model on TinyWorld's demonstrations (the writers' answers, as InstructGPT did), then
    measure it against the labeler panel."""
    world = world_from_config(profile.world)
    demos = world.splits["train"][:200]
    shift = normalize_rewards(rm, tok,
                              [render_prompt(tok, t.instruction, t.context, profile.sft.prompt_format) for t in demos],
                              [t.demonstration or t.response for t in demos], cfg.max_length)
    train_labs, held = world.panel.train, world.panel.held_out
    m = agreement_matrix(world, val, world.panel.labelers)

    def gold(rec):
        t = world.tasks_by_id[rec["prompt_id"]]
        return [world.panel.gold_score(t.instruction, t.context, r, f, task=t)
                for r, f in zip(rec["responses"], rec["finished"])]

    variants = variant_comparisons(world, world.splits["validation"][: cfg.n_eval_prompts], train_labs, tok,
                                   profile.sft.prompt_format, seed=cfg.seed)
    mv = agreement_matrix(world, variants, world.panel.labelers)
    return {"normalization_shift": shift,
            "accuracy_train_labelers": rm_accuracy(rm, tok, world, val, train_labs, cfg.max_length),
            "accuracy_heldout_labelers": rm_accuracy(rm, tok, world, val, held, cfg.max_length),
            "panel_agreement": off_diagonal_mean(m),
            "gold_ceiling": sum(expected_agreement(world, val, gold, lab) for lab in held) / len(held),
            "variant_pairs": {"accuracy_heldout_labelers": rm_accuracy(rm, tok, world, variants, held, cfg.max_length),
                              "panel_agreement": off_diagonal_mean(mv)}}


def off_diagonal_mean(m: list[list[float]]) -> float:
    """Mean agreement between two *different* labelers (the off-diagonal of an agreement matrix)."""
    n = len(m)
    return sum(m[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))


def reward_checkpoint(profile: Profile | None = None, progress: bool = True, device: str | None = None) -> Path:
    """Folder of the profile's trained reward model (with its metrics in ``reward_model.json``), built once and
    cached. Its key covers the comparisons it was trained on (and so the SFT model and their settings)."""
    profile = profile or get_profile()
    device = pick_device(device)
    upstream = (comparisons_dir(profile, progress, device).name if profile.reward.source == "tinyworld"
                else profile.reward.source)
    sft_dir = sft_checkpoint(profile, progress=progress, device=device)
    out = runs_dir() / "cache" / reward_key(profile, sft_dir.name, upstream, device)
    if not (out / "reward_model.json").is_file():
        rm, _, metrics, history = train_reward_stage(profile, progress=progress, device=device)
        save_reward_model(rm, out, base=sft_dir, extra={"metrics": metrics, "history": history})
    return out
