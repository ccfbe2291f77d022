"""The policy stages for a profile, trained on top of the cached ones (:mod:`rlhf_lite.stages`) and not cached
themselves: each writes to the folder it is given.

* :func:`ppo_stage`: PPO or PPO-ptx against the reward model (step 3), checkpoints in ``out_dir``;
* :func:`dpo_stage`: DPO on the cached comparisons;
* :func:`rejection_sampling_stage`: best-of-n answers of the SFT model, learned by new adapters (Llama 2);
* :func:`policy_comparisons`: a second round, the labelers ranking a trained policy's own answers;
* :func:`load_policy`: a saved policy (any of the above) on the model it was trained from.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch

from .best_of_n import best_of_n_records
from .checkpoint import CHECKPOINT
from .config import DPOConfig, PPOConfig, Profile, get_profile
from .data import load_instruction_dataset, render_prompt
from .dpo import build_dpo_policy, train_dpo
from .files import atomic_dir, check_output_dir, open_output_dir, write_text
from .models import encode_prompt, load_base
from .ppo import build_policy, train_ppo
from .pretrain import corpus_blocks
from .reward import load_reward_ensemble, load_reward_model, same_tokenizer
from .runtime import course_precision, hf_bars_off, pick_device, placement, seed_everything
from .sft import add_lora, train_sft
from .stages import comparison_data, rank_samples, reward_checkpoint, sft_checkpoint
from .world import world_from_config

PPO_FILES = (CHECKPOINT, "start.json", "adapter", "adapter/*")
"""What a PPO run writes into its ``out_dir``: the only files such a folder may hold to be written into again."""


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
    return recorded_run(folder).get("init")


def recorded_run(folder: str | Path) -> dict:
    """What a run in ``folder`` was trained from (its ``start.json``): ``init`` (the saved policy it started from,
    None for the SFT model) and, for PPO, ``reward_model`` (the saved reward models it trained against, None for the
    profile's cached one) and ``combine``. An empty dict when the folder holds no record."""
    start = Path(folder) / START
    if not start.is_file():
        return {}
    try:
        run = json.loads(start.read_text())
        return run if isinstance(run, dict) else {}
    except ValueError:
        raise ValueError(f"{start} is not valid JSON; it records what the run in {folder} started from. Restore it "
                         "or start a new run in a new folder") from None


def record_start(folder: str | Path, init: str | None, **more) -> None:
    """Write ``start.json`` into a run's ``folder``: the saved policy it starts from (``init``, None for the SFT
    model), for :func:`load_policy`, and anything else the run was trained from (``more``)."""
    write_text(Path(folder) / START, json.dumps({"init": init, **more}) + "\n")


def saved_policy(path: str | Path, out: str | Path | None = None, what: str = "--init") -> str:
    """``init``, checked before anything trains: the absolute path of a saved policy's folder, which must not be
    ``out`` (the new adapter would be written over the policy it starts from)."""
    policy_adapter(path, f"{what} ")
    init = Path(path).resolve()
    if out and Path(out).resolve() == init:
        raise ValueError(f"{what} and --out both name {out}: the new adapter would be written over the policy it "
                         "starts from; pick a new folder for --out")
    return str(init)


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
    with course_precision(device, precision), torch.no_grad():
        for split, tasks, seed in (("train", train_tasks, cfg.seed + 10),
                                   ("validation", world.splits["validation"][: cfg.n_eval_prompts], cfg.seed + 11)):
            rounds[split] = rank_samples(model, tok, world, profile, tasks, seed, progress=progress)
    return rounds


# ---------------------------------------------------------------------------------------------
# Step 3: PPO against the reward model
# ---------------------------------------------------------------------------------------------
def ppo_stage(profile: Profile | None = None, cfg: PPOConfig | None = None, out_dir: str | Path | None = None,
              resume: bool = False, progress: bool = True, callback=None, device: str | None = None,
              reward_model: str | Path | Sequence[str | Path] | None = None, init: str | Path | None = None,
              combine: str | None = None):
    """Step 3 for a profile: the cached SFT model and reward model, a LoRA policy, ``train_ppo`` on the
    training users' prompts (PPO-ptx when ``cfg.ptx_coef`` > 0, mixing in the pretraining corpus), on ``device``.
    ``reward_model``: a saved reward model's folder (``reward --out``) to train against instead of the cached one,
    or several, read as one :class:`~rlhf_lite.reward.RewardEnsemble` whose members' rewards ``combine`` joins
    (``"mean"``, the default, or ``"min"``).
    ``init``: a saved policy (:func:`load_policy`) to start from instead of the SFT model, e.g. a rejection-sampling
    one as in Llama 2 (§3.2.3); it is also the KL reference (Llama 2's π₀, the policy PPO starts from).
    ``out_dir``: where checkpoints and the final adapter go (``adapter/``, with ``start.json``: what the run was
    trained from); it must be new, empty or an earlier PPO run's, and ``resume`` continues the run whose checkpoint
    it holds (its recorded ``init`` and reward models, unless others are named: then they must be the same).
    Returns (policy, tokenizer, reward model, history)."""
    profile = profile or get_profile()
    cfg = cfg or profile.ppo
    if profile.data != "tinyworld" and cfg.ptx_coef > 0:
        raise ValueError("PPO-ptx mixes in the pretraining corpus, which the course has for TinyWorld only; set "
                         f"ptx_coef=0 for profile {profile.name!r}")
    paths = [reward_model] if isinstance(reward_model, (str, Path)) else list(reward_model or [])
    if len(paths) > 1 and cfg.value_init != "zero":
        raise ValueError(f"PPOConfig.value_init={cfg.value_init!r} copies the reward model's head into the critic; "
                         "an ensemble of reward models has no single head to copy: use value_init='zero'")
    if out_dir is not None:  # before any model is loaded or trained
        out_dir, init, paths, combine = _ppo_run(out_dir, resume, init, paths, combine)
    elif init is not None:
        init = saved_policy(init)
    combine = combine or "mean"
    device, precision = placement(device)
    rm_path = paths[0] if len(paths) == 1 else None if paths else reward_checkpoint(profile, progress, device)
    rm, rm_tok = load_reward_ensemble(paths, combine, device) if len(paths) > 1 else \
        load_reward_model(rm_path, device=device)
    for p in rm.parameters():
        p.requires_grad_(False)
    sft, tok = starting_model(profile, init, progress, device)
    if not same_tokenizer(tok, rm_tok):
        raise ValueError(f"the reward model{'s' if len(paths) > 1 else ''} ({', '.join(map(str, paths or [rm_path]))})"
                         " read text with another tokenizer than the policy's; train the reward model from the same "
                         "SFT model (the same profile and base model)")
    policy = build_policy(sft, rm, cfg, profile.lora)
    world, prompts = rl_prompts(profile)
    prompts = fitting_prompts(prompts, tok, profile.sft.prompt_format, context_limit(sft, profile), cfg.max_new_tokens,
                              report=profile.data != "tinyworld")
    ptx = corpus_blocks(tok, "train", profile.pretrain, max_docs=4000) if cfg.ptx_coef > 0 else None
    with course_precision(device, precision):
        history = train_ppo(policy, rm, tok, prompts, cfg, profile.sft.prompt_format, world, ptx, out_dir, resume,
                            progress, callback)
    if out_dir is not None:
        with atomic_dir(out_dir / "adapter", "ppo-adapter") as tmp, hf_bars_off():  # never half an adapter
            policy.lm.save_pretrained(tmp)
    return policy, tok, rm, history


def _ppo_run(out_dir, resume: bool, init, paths: list, combine: str | None) -> tuple[Path, str | None, list, str]:
    """``ppo_stage``'s output folder, checked and claimed before any work, and what the run trains from: a resumed
    run's recorded start and reward models unless others are named (then they must be the same)."""
    out = check_output_dir(out_dir, "ppo")
    if resume and not (out / CHECKPOINT).is_file():
        raise FileNotFoundError(f"--resume, but there is no checkpoint in --out {out}; pass the --out folder of the "
                                "interrupted run, or leave out --resume to start a new one")
    out = open_output_dir(out, "ppo", PPO_FILES)
    before = recorded_run(out) if (out / CHECKPOINT).is_file() else {}  # nothing trained yet: nothing to match
    if (out / CHECKPOINT).is_file() and not resume:
        raise ValueError(f"--out {out} holds the checkpoint of an earlier PPO run; add --resume to continue it, or "
                         "pick a new folder")
    if init is None and resume:
        init = before.get("init")
    init = saved_policy(init, out) if init is not None else None
    models = [str(Path(p).resolve()) for p in paths] or (before.get("reward_model") if resume else None) or []
    combine = combine or (before.get("combine") if resume else None) or "mean"
    run = {"init": init, "reward_model": models or None, "combine": combine if len(models) > 1 else None}
    if before and {k: before.get(k) for k in run} != run:
        raise ValueError(f"--out {out} holds a run trained from {before}, not from {run}; resume it with the same "
                         "--init and --reward-model, or pick a new folder")
    record_start(out, init, reward_model=run["reward_model"], combine=run["combine"])
    return out, init, models, combine


def rejection_sampling_stage(profile: Profile | None = None, n: int = 8, n_prompts: int = 0, epochs: int = 2,
                             progress: bool = True, device: str | None = None, init: str | Path | None = None):
    """Rejection-sampling fine-tuning (:mod:`rlhf_lite.best_of_n`) for a TinyWorld profile: the cached SFT model
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
    cfg = replace(profile.sft, epochs=epochs, max_steps=0)  # all of the epochs asked for, whatever SFT's step cap
    with course_precision(device, precision):
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
    with course_precision(device, precision):
        history = train_dpo(model, tok, data["train"], cfg, data["validation"], progress=progress)
    return model, tok, history


def context_limit(model, profile: Profile) -> int:
    """The most tokens a prompt and its answer may take: the model's context window, and no more than the SFT
    stage's ``max_length`` (what the policy learned to answer at, and what the memory plan counts on)."""
    window = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    return min(profile.sft.max_length, window or profile.sft.max_length)


def fitting_prompts(tasks: Sequence, tokenizer, fmt: str, limit: int, max_new_tokens: int,
                    report: bool = True, what: str = "RL prompts") -> list:
    """The tasks whose prompt, rendered in ``fmt``, leaves room for a ``max_new_tokens`` answer within ``limit``
    tokens. Dolly has contexts of thousands of characters; sampling after one would overrun the model's window.
    Prints how many were kept (always with ``report``, else only when some were left out)."""
    room = limit - max_new_tokens
    kept = [t for t in tasks
            if len(encode_prompt(tokenizer, render_prompt(tokenizer, t.instruction, t.context, fmt))) <= room]
    if report or len(kept) < len(tasks):
        print(f"{what}: {len(kept):,} of {len(tasks):,} fit in {room} tokens, leaving {max_new_tokens} for the "
              f"answer within {limit}; {len(tasks) - len(kept):,} longer ones are left out")
    if not kept:
        raise ValueError(f"no prompt fits in {room} tokens ({limit} less {max_new_tokens} for the answer); raise "
                         "sft.max_length or lower ppo.max_new_tokens")
    return kept


def rl_prompts(profile: Profile, split: str = "train") -> tuple[object | None, list]:
    """(world, prompts) for the RL stage: TinyWorld's tasks of ``split`` and the world, whose gold panel then
    scores every batch of rollouts; for real data, the instructions (and contexts) of the demonstration data's
    ``split`` ("validation": the held-out prompts a real-data run is evaluated on), and no world: the reward model
    is the only judge there."""
    if profile.data == "tinyworld":
        world = world_from_config(profile.world)
        return world, world.splits[split]
    rows = load_instruction_dataset(profile.data)[split]
    return None, [SimpleNamespace(instruction=r["instruction"], context=r.get("context") or "") for r in rows]
