"""Resumable RL training: what a PPO checkpoint holds, written as safetensors + JSON (never a pickle).

A checkpoint is everything ``train_ppo`` needs to continue an interrupted run exactly: the trainable weights (LoRA
adapters and value head; the rest is the frozen SFT model), the optimizer's state, β, the log so far, the position
in the prompt order, and every random state (CPU and CUDA). Loading it can never run code from the file.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import PPOConfig
from .files import load_state, save_state

if TYPE_CHECKING:  # for the annotations only: the SFT stage, which saves its adapters here, never runs PPO code
    from .rollout import PolicyWithValue

CHECKPOINT = "ppo_checkpoint.safetensors"


def trainable_state(policy: PolicyWithValue) -> dict[str, torch.Tensor]:
    """What a checkpoint stores of the policy: the LoRA adapters and the value head."""
    return {k: v.detach().clone() for k, v in policy.state_dict().items() if k.startswith("value_head") or "lora_" in k}


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights fine-tuning trains (name -> tensor): the parameters that require gradients, e.g. the LoRA
    adapters of an SFT model, or a reward model's adapters and head. Small on ``tiny``: under 1 MB."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def load_trained_state(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str = "these weights") -> None:
    """Put what :func:`trained_state` returned back into a model built the same way (an error naming ``source``
    if they do not fit)."""
    _load_exactly(model, weights, set(trained_state(model)), f"{source} do not fit this model",
                  "they were saved for another model or LoRA setting")


def load_trainable(policy: PolicyWithValue, weights: dict[str, torch.Tensor], source: str = "these weights") -> None:
    """Put what :func:`trainable_state` returned back into a policy built the same way (the frozen SFT weights are
    not in it). Weights for another model or LoRA setting are an error naming ``source``."""
    _load_exactly(policy, weights, set(trainable_state(policy)), f"{source} does not fit this policy",
                  "it was written for another model or LoRA setting")


def _load_exactly(module: torch.nn.Module, weights: dict[str, torch.Tensor], expected: set[str], misfit: str,
                  why: str) -> None:
    """Load ``weights`` into ``module`` when their names are exactly ``expected`` and their shapes the module's;
    otherwise stop with ``misfit``, the names missing, unexpected or of another shape, and ``why``."""
    found = set(weights)
    if found != expected:
        raise ValueError(f"{misfit} (missing {sorted(expected - found)[:3]}, "
                         f"unexpected {sorted(found - expected)[:3]}); {why}")
    own = module.state_dict()
    wrong = [f"{k} {tuple(weights[k].shape)} (here {tuple(own[k].shape)})" for k in sorted(found)
             if weights[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"{misfit} (another shape: {', '.join(wrong[:3])}); {why}")
    module.load_state_dict(weights, strict=False)


def save_checkpoint(path: Path, policy: PolicyWithValue, optimizer, kl_ctl, order_gen: torch.Generator, cfg: PPOConfig,
                    step: int, history: list[dict], pos: int, order: torch.Tensor) -> None:
    """Write the state after ``step`` iterations to ``path`` atomically (a crash keeps the previous checkpoint)."""
    save_state(path, {"step": step, "trainable": trainable_state(policy), "optimizer": optimizer.state_dict(),
                      "beta": kl_ctl.value, "history": history, "pos": pos, "order": order,
                      "order_gen": order_gen.get_state(), "rng": torch.get_rng_state(),
                      "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                      "config": asdict(cfg)})


def load_checkpoint(path: Path | None, policy: PolicyWithValue, optimizer, kl_ctl, order_gen: torch.Generator,
                    cfg: PPOConfig) -> tuple[list[dict], int, int, torch.Tensor]:
    """Restore a checkpoint into ``policy``, ``optimizer``, ``kl_ctl``, ``order_gen`` and the global random states.
    Returns (history, steps done, position in the prompt order, the prompt order). The settings must be the same
    as when it was written (only ``steps`` may grow), and its weights must fit this policy."""
    if path is None or not path.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}; pass the out_dir of the "
                                "interrupted run, or resume=False to start fresh")
    state = load_state(path)
    changed = sorted(k for k, v in asdict(cfg).items()
                     if k not in ("steps", "checkpoint_every") and state["config"].get(k) != v)
    if changed:
        raise ValueError(f"the checkpoint in {path} was written with different settings ({', '.join(changed)}); "
                         "resume with the same PPOConfig (only steps may grow), or start a new out_dir")
    load_trainable(policy, state["trainable"], f"the checkpoint in {path}")
    optimizer.load_state_dict(state["optimizer"])
    kl_ctl.value = state["beta"]
    order_gen.set_state(state["order_gen"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda_rng"]))
    return state["history"], state["step"], state["pos"], state["order"]
