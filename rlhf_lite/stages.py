"""Stages for a profile, built once and cached: the plumbing above the algorithms.

Each stage function takes a :class:`~rlhf_lite.config.Profile`, runs the algorithm modules with its settings and
caches what later stages need under ``runs/cache`` (``$RLHF_LITE_RUNS`` moves it):

* :func:`base_checkpoint`: the model SFT starts from ("tiny", or a hub model after continued pretraining on
  TinyWorld's corpus for the ``gpt2`` profiles);
* :func:`sft_checkpoint`: the SFT model (step 1, adapters merged);
* :func:`comparison_data`: K samples of the SFT model per prompt, ranked by the labeler panel;
* :func:`reward_checkpoint`: the reward model trained on them (step 2), normalised and measured;
* :func:`ppo_stage`: PPO or PPO-ptx against it (step 3; not cached, it writes checkpoints to ``out_dir``);
* :func:`policy_comparisons`: a second round, the labelers ranking a trained policy's own answers (not cached; a
  reward model trained on both rounds, ``train_reward_stage(more=…)``, is what ``ppo_stage(reward_model=…)`` takes).

A cache folder's name is a hash of every setting the stage depends on *and of the source code of the modules
that compute it* (:func:`rlhf_lite.runtime.code_digest`), so changing ``train_sft`` or the labelers retrains
instead of silently reusing an old model. Every notebook and command goes through these functions, so none
retrains what an earlier one built with the same settings.

``device`` (every stage function's keyword; default ``$RLHF_LITE_DEVICE``, else the GPU when there is one) is
where the models load and train; on a GPU the work runs under the precision of
:func:`~rlhf_lite.runtime.pick_precision` (bf16 autocast where the GPU computes it natively). A stage built on a
GPU is cached apart from the CPU's (its floating-point results differ); CPU keys are unchanged by this.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch

from .checkpoint import trained_state
from .config import DPOConfig, PPOConfig, Profile, RewardConfig, SFTConfig, get_profile
from .data import load_instruction_dataset, render_prompt
from .dpo import build_dpo_policy, train_dpo
from .ensemble import load_reward_ensemble
from .feedback import (
    RankingStore,
    agreement_matrix,
    collect_comparisons,
    expected_agreement,
    load_preference_dataset,
    read_comparisons,
    variant_comparisons,
)
from .models import TINY_BASE, load_base
from .ppo import build_policy, train_ppo
from .pretrain import continue_pretraining, corpus_blocks
from .rejection import best_of_n_records
from .reward import (
    RewardModel,
    build_reward_model,
    load_reward_model,
    normalize_rewards,
    rm_accuracy,
    save_reward_model,
    train_reward_model,
)
from .runtime import (
    atomic_dir,
    autocast,
    code_digest,
    config_key,
    device_tag,
    hf_bars_off,
    pick_device,
    pick_precision,
    rounded,
    runs_dir,
    save_state,
    seed_everything,
)
from .sft import add_lora, count_parameters, load_quantized, train_sft
from .world import world_from_config

# The code whose source is part of each stage's cache key. Not config.py: the keys hash the settings' values
# themselves, so a new default for a later stage (PPO's learning rate, say) leaves the SFT model cached.
SFT_CODE = ("data", "models", "sft", "world")
COMPARISONS_CODE = SFT_CODE + ("feedback",)
REWARD_CODE = COMPARISONS_CODE + ("reward",)
SFT_ADAPTERS = "lora/adapters.safetensors"  # in an SFT folder: the LoRA adapters alone (under 1 MB on tiny)


# ---------------------------------------------------------------------------------------------
# Where the work runs, and the model SFT starts from
# ---------------------------------------------------------------------------------------------
def placement(device: str | None = None) -> tuple[str, str]:
    """(device, precision) for a stage: :func:`~rlhf_lite.runtime.pick_device` and
    :func:`~rlhf_lite.runtime.pick_precision` (``$RLHF_LITE_PRECISION``, else bf16 on GPUs that have it)."""
    device = pick_device(device)
    return device, pick_precision(device)


def continues_pretraining(profile: Profile) -> bool:
    """True when the profile's base model must first learn TinyWorld's language: a hub model on TinyWorld data."""
    return profile.base_model != "tiny" and profile.data == "tinyworld"


def base_key(profile: Profile, device: str = "cpu") -> str:
    """The continued-pretraining cache key: the hub model (for a local one, its weights and tokenizer), the
    pretraining settings, the code that trains it, and (on a GPU) where it ran."""
    return f"base-{profile.name}-" + config_key(profile.base_model, base_digest(profile.base_model), profile.pretrain,
                                               code_digest("pretrain", "world"), *device_tag(*placement(device)))


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
        with autocast(device, precision):
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
    with autocast(device, precision):
        history = train_sft(model, tok, data, cfg, progress=progress)
    history["parameters"] = count_parameters(model)
    history["n_train_examples"] = len(data["train"])
    return model, tok, history


def sft_key(profile: Profile, device: str = "cpu") -> str:
    """The SFT cache key: the base model (for a local one, its weights and tokenizer; after continued pretraining,
    that stage's key), the world, the SFT and LoRA settings, the code that trains it, and (on a GPU) where."""
    extra = [base_key(profile, device)] if continues_pretraining(profile) else []
    return f"sft-{profile.name}-" + config_key(profile.base_model, base_digest(profile.base_model), profile.world,
                                              profile.sft, profile.lora, code_digest(*SFT_CODE),
                                              *extra, *device_tag(*placement(device)))


def base_digest(name: str) -> str:
    """A short hash of a local base model's weights and tokenizer ("tiny": ``data/tiny-base``), so a rebuilt base
    model is never mistaken for the one a cached stage started from; "" for a hub name."""
    local = TINY_BASE if name == "tiny" else Path(name)
    files = [local / f for f in ("model.safetensors", "tokenizer.json")]
    if not all(f.is_file() for f in files):
        return ""
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def comparisons_key(profile: Profile, sft_name: str, device: str = "cpu") -> str:
    """The comparisons' cache key: the SFT model they were sampled from, the world, every collection setting
    (K, temperature, response length, prompts, seed), the prompt format, the code that samples and ranks, and (on
    a GPU) where they were sampled."""
    cfg = profile.reward
    collection = {k: getattr(cfg, k) for k in ("source", "n_prompts", "n_eval_prompts", "k_min", "k_max", "temperature",
                                                "max_new_tokens", "seed")}
    return f"comparisons-{profile.name}-" + config_key(sft_name, profile.world, collection, profile.sft.prompt_format,
                                                      code_digest(*COMPARISONS_CODE), *device_tag(*placement(device)))


def reward_key(profile: Profile, sft_name: str, upstream: str, device: str = "cpu") -> str:
    """The reward model's cache key: the SFT model, the comparisons (``upstream``: their cache folder, or the data
    source), the reward and LoRA settings, the prompt format, the code that trains and measures it, and (on a GPU)
    where it trained."""
    return f"reward-{profile.name}-" + config_key(sft_name, upstream, profile.world, profile.reward, profile.lora,
                                                 profile.sft.prompt_format, code_digest(*REWARD_CODE),
                                                 *device_tag(*placement(device)))


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
def _ranked(model, tok, world, profile: Profile, tasks, seed: int, store: RankingStore | None = None,
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
    with atomic_dir(out, "comparisons") as tmp, autocast(device, precision):
        for split, n, seed in (("train", cfg.n_prompts, cfg.seed), ("validation", cfg.n_eval_prompts, cfg.seed + 1)):
            _ranked(model, tok, world, profile, world.splits[split][:n], seed, RankingStore(tmp / f"{split}.jsonl"),
                    progress)
        (tmp / "info.json").write_text(json.dumps({"seconds": round(time.time() - t0, 1), "sft": sft_dir.name}))
    print(f"sampled and ranked the comparisons in {time.time() - t0:.0f} s (cached in runs/cache/{out.name})")
    return out


def comparison_data(profile: Profile | None = None, progress: bool = True,
                    device: str | None = None) -> dict[str, list[dict]]:
    """The profile's comparisons: ``{"train": [...], "validation": [...]}``, built once and cached.

    TinyWorld: the SFT model (:func:`sft_checkpoint`) samples K responses per prompt; training prompts are ranked
    by the training labelers, one labeler per prompt; validation prompts (held-out users) too, to measure the
    reward model on people it has not seen. Held-out labelers never rank anything here: they only judge. Real data
    (``source`` "hh-rlhf" or a file): its own splits.
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
        return {"train": train[: cfg.n_prompts], "validation": val[: cfg.n_eval_prompts]}
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
    ``more``: a second round's comparisons (:func:`policy_comparisons`), trained on together with the first's
    (measured on the first round's validation pairs, as always; ``reward --policy`` adds the policy's own)."""
    profile = profile or get_profile()
    cfg = cfg or profile.reward
    device, precision = placement(device)
    data = comparison_data(profile, progress=progress, device=device)
    train = data["train"] + (more["train"] if more else [])
    lm, tok = load_base(str(sft_checkpoint(profile, progress=progress, device=device)), device=device)
    rm = build_reward_model(lm, cfg, profile.lora).to(device)
    with autocast(device, precision):
        history = train_reward_model(rm, tok, train, cfg, data["validation"], progress=progress)
    metrics = {"comparisons": history["pairs"], "prompts": len(train),
               "wall_time_s": round(history["wall_time_s"], 1), "validation_loss": history["eval"][-1]["loss"],
               "validation_accuracy": history["eval"][-1]["accuracy"]}
    with autocast(device, precision):
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
        return [world.panel.gold_score(t.instruction, t.context, r, f, task=t) for r,
                f in zip(rec["responses"], rec["finished"])]

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


START = "start.json"  # in the --out folder of a run that started from a saved policy (``--init``)


def policy_adapter(path: str | Path, what: str = "") -> Path:
    """The adapter folder of a saved policy: ``path`` is the ``--out`` folder of ``python -m rlhf_lite ppo``,
    ``rejection-sampling`` or ``dpo`` (its ``adapter`` folder) or an adapter folder itself; a clear error (prefixed with
    ``what``, e.g. "--init ") when there is none."""
    adapter = Path(path) / "adapter" if (Path(path) / "adapter").is_dir() else Path(path)
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{what}{path}: no policy adapter there (adapter_config.json); pass the --out folder "
                                "of `python -m rlhf_lite ppo`, `rejection-sampling` or `dpo`, or its adapter folder")
    return adapter


def recorded_start(folder: str | Path) -> str | None:
    """The saved policy a run in ``folder`` started from (its ``start.json``), or None: it started from SFT."""
    start = Path(folder) / START
    return json.loads(start.read_text())["init"] if start.is_file() else None


def record_start(folder: str | Path, init: str) -> None:
    """Write ``start.json`` into a run's ``folder``: the saved policy it starts from, for :func:`load_policy`."""
    (Path(folder) / START).write_text(json.dumps({"init": init}) + "\n")


def starting_model(profile: Profile, init: str | Path | None = None, progress: bool = True,
                   device: str | None = None):
    """The model a stage starts from: the cached SFT model, or with ``init`` a saved policy with its adapters merged
    into the weights, so that new adapters can start from it and, switched off, give it back as the KL reference.
    Returns (model, tokenizer)."""
    if init is None:
        return load_base(str(sft_checkpoint(profile, progress=progress, device=device)), device=device)
    model, tok = load_policy(profile, init, device)
    return model.merge_and_unload(), tok


def load_policy(profile: Profile, path: str | Path, device: str | None = None):
    """A saved policy (:func:`policy_adapter`) on the model it was trained from: the profile's SFT model, or, for a
    run that started from another saved policy (``start.json`` beside the adapter folder), that policy merged into
    the weights (:func:`starting_model`). Returns (model, tokenizer), in eval mode."""
    from peft import PeftModel

    adapter = policy_adapter(path)
    device = pick_device(device)
    base, tok = starting_model(profile, recorded_start(adapter.parent), device=device)
    with hf_bars_off():
        return PeftModel.from_pretrained(base, str(adapter)).eval(), tok


def second_round_prompts(profile: Profile, world, prompts: str = "unranked") -> list:
    """The training tasks a second round ranks: those the first round left unranked (``reward.n_prompts`` on;
    ``prompts="unranked"``) or every training task, the first round's included (``prompts="all"``)."""
    if prompts not in ("unranked", "all"):
        raise ValueError(f"prompts={prompts!r}: choose 'unranked' (the training prompts the first round left) or "
                         "'all' (every training prompt)")
    tasks = world.splits["train"][profile.reward.n_prompts if prompts == "unranked" else 0:]
    if not tasks:
        raise ValueError(f"every training prompt of profile {profile.name!r} was ranked in the first round "
                         f"(reward.n_prompts = {profile.reward.n_prompts}); lower it to leave prompts for a second "
                         "round, or rank them all again (prompts='all')")
    return tasks


def policy_comparisons(profile: Profile, policy: str | Path, progress: bool = True,
                       device: str | None = None, prompts: str = "unranked") -> dict[str, list[dict]]:
    """A second round of comparisons, on a trained policy's own answers (InstructGPT and Llama 2 collected their
    later comparisons this way): K of its samples for each training prompt of :func:`second_round_prompts` and for
    the first round's held-out users' validation prompts, ranked by the training labelers exactly as
    :func:`comparisons_dir` ranks the SFT model's. ``policy``: a ``ppo --out`` folder (:func:`load_policy`).
    Returns ``{"train": [...], "validation": [...]}``."""
    cfg = profile.reward
    if cfg.source != "tinyworld":
        raise ValueError(f"a second round needs labelers to rank the policy's answers: profile {profile.name!r} "
                         f"trains its reward model on fixed data ({cfg.source}); use a TinyWorld profile")
    device, precision = placement(device)
    world = world_from_config(profile.world)
    train_tasks = second_round_prompts(profile, world, prompts)
    model, tok = load_policy(profile, policy, device)
    rounds = {}
    with autocast(device, precision), torch.no_grad():
        for split, tasks, seed in (("train", train_tasks, cfg.seed + 10),
                                   ("validation", world.splits["validation"][: cfg.n_eval_prompts], cfg.seed + 11)):
            rounds[split] = _ranked(model, tok, world, profile, tasks, seed, progress=progress)
    return rounds


# ---------------------------------------------------------------------------------------------
# Step 3: PPO against the reward model
# ---------------------------------------------------------------------------------------------
def ppo_stage(profile: Profile | None = None, cfg: PPOConfig | None = None, out_dir: str | Path | None = None,
              resume: bool = False, progress: bool = True, callback=None, device: str | None = None,
              reward_model: str | Path | Sequence[str | Path] | None = None, init: str | Path | None = None,
              combine: str = "mean"):
    """Step 3 for a profile: the cached SFT model and reward model, a LoRA policy, ``train_ppo`` on the
    training users' prompts (PPO-ptx when ``cfg.ptx_coef`` > 0, mixing in the pretraining corpus), on ``device``.
    ``reward_model``: a saved reward model's folder (``reward --out``) to train against instead of the cached one,
    or several, read as one :class:`~rlhf_lite.ensemble.RewardEnsemble` whose members' rewards ``combine`` joins
    (``"mean"`` or ``"min"``).
    ``init``: a saved policy (:func:`load_policy`) to start from instead of the SFT model, e.g. a rejection-sampling
    one as in Llama 2 (§3.2.3); it is also the KL reference (Llama 2's π₀, the policy PPO starts from).
    Returns (policy, tokenizer, reward model, history)."""
    profile = profile or get_profile()
    cfg = cfg or profile.ppo
    if profile.data != "tinyworld" and cfg.ptx_coef > 0:
        raise ValueError("PPO-ptx mixes in the pretraining corpus, which the course has for TinyWorld only; set "
                         f"ptx_coef=0 for profile {profile.name!r}")
    device, precision = placement(device)
    paths = [reward_model] if isinstance(reward_model, (str, Path)) else list(reward_model or [])
    if len(paths) > 1 and cfg.value_init != "zero":
        raise ValueError(f"PPOConfig.value_init={cfg.value_init!r} copies the reward model's head into the critic; "
                         "an ensemble of reward models has no single head to copy: use value_init='zero'")
    rm = (load_reward_ensemble(paths, combine, device)[0] if len(paths) > 1 else
          load_reward_model(paths[0] if paths else reward_checkpoint(profile, progress=progress, device=device),
                            device=device)[0])
    for p in rm.parameters():
        p.requires_grad_(False)
    sft, tok = starting_model(profile, init, progress, device)
    policy = build_policy(sft, rm, cfg, profile.lora)
    world, prompts = rl_prompts(profile)
    ptx = corpus_blocks(tok, "train", profile.pretrain, max_docs=4000) if cfg.ptx_coef > 0 else None
    with autocast(device, precision):
        history = train_ppo(policy, rm, tok, prompts, cfg, profile.sft.prompt_format, world, ptx, out_dir, resume,
                            progress, callback)
    return policy, tok, rm, history


def rejection_sampling_stage(profile: Profile | None = None, n: int = 8, n_prompts: int = 0, epochs: int = 2,
                             progress: bool = True, device: str | None = None, init: str | Path | None = None):
    """Rejection-sampling fine-tuning (:mod:`rlhf_lite.rejection`) for a TinyWorld profile: the cached SFT model
    samples ``n`` answers to each of the first ``n_prompts`` training prompts (0: all), the cached reward model keeps
    the best of each, and LoRA adapters on the SFT model learn them for ``epochs`` with the profile's SFT settings.
    ``init``: a saved policy (:func:`load_policy`) to sample from and put the adapters on instead, Llama 2's next
    round. Returns (model, tokenizer, records, history); ``load_policy`` reads the adapter it saves."""
    profile = profile or get_profile()
    if profile.data != "tinyworld":
        raise ValueError(f"rejection sampling here draws TinyWorld's training prompts; profile {profile.name!r} uses "
                         f"{profile.data}: use tiny, smoke or gpt2")
    device, precision = placement(device)
    rm, _ = load_reward_model(reward_checkpoint(profile, progress=progress, device=device), device=device)
    sft, tok = starting_model(profile, init, progress, device)
    tasks = world_from_config(profile.world).splits["train"][: n_prompts or None]
    cfg = replace(profile.sft, epochs=epochs)
    with autocast(device, precision):
        records = best_of_n_records(sft, tok, rm, tasks, n, cfg.prompt_format, profile.max_new_tokens,
                                    profile.reward.max_length, seed=cfg.seed + 100, progress=progress)
        seed_everything(cfg.seed)
        model = add_lora(sft, cfg, profile.lora)
        history = train_sft(model, tok, {"train": records}, cfg, progress=progress)
    return model, tok, records, history


def dpo_stage(profile: Profile | None = None, cfg: DPOConfig | None = None, progress: bool = True,
              device: str | None = None):
    """DPO (:mod:`rlhf_lite.dpo`) for a profile: LoRA adapters on the cached SFT model (adapters off: the reference)
    trained on the cached comparisons' training rankings, validated on their validation rankings. The same run as
    notebook 07's, as a command. Returns (model, tokenizer, history); ``load_policy`` reads the adapter it saves."""
    profile = profile or get_profile()
    cfg = cfg or profile.dpo
    device, precision = placement(device)
    data = comparison_data(profile, progress=progress, device=device)
    sft, tok = load_base(str(sft_checkpoint(profile, progress=progress, device=device)), device=device)
    model = build_dpo_policy(sft, cfg, profile.lora)
    with autocast(device, precision):
        history = train_dpo(model, tok, data["train"], cfg, data["validation"], progress=progress)
    return model, tok, history


def rl_prompts(profile: Profile) -> tuple[object | None, list]:
    """(world, prompts) for the RL stage: TinyWorld's training-user tasks and the world, whose gold panel then
    scores every batch of rollouts; for real data, the instructions (and contexts) of the demonstration data's
    training split, and no world: the reward model is the only judge there."""
    if profile.data == "tinyworld":
        world = world_from_config(profile.world)
        return world, world.splits["train"]
    rows = load_instruction_dataset(profile.data)["train"]
    return None, [SimpleNamespace(instruction=r["instruction"], context=r.get("context") or "") for r in rows]
