"""GRPO (Shao et al. 2024, DeepSeekMath §4.1): PPO without a critic, the baseline taken from a group.

For each prompt, sample G responses and score them with the reward model; a response's advantage is its
score relative to its group's, Â_i = (r_i − mean(r)) / std(r), given to every one of its tokens. The KL to
the reference goes into the loss instead of the reward:

    J = mean_i 1/|o_i| Σ_t [ min(ρ_t Â_i, clip(ρ_t, 1 − ε, 1 + ε) Â_i) − β KL_t ],
    ρ_t = π(o_t) / π_old(o_t),   KL_t = π_ref(o_t)/π(o_t) − log(π_ref(o_t)/π(o_t)) − 1      (DeepSeekMath eqs. 3–4)

Sampling, scoring and the log-probs are PPO's own code (``rlhf_lite.rollout.rollout``), so the two are
compared with everything else equal. What GRPO saves is the critic; what it pays is G samples per prompt.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .config import GRPOConfig, LoRAConfig, validate_config
from .data import render_prompt
from .models import Generation, frozen_with_adapters
from .rollout import (
    PolicyWithValue,
    PromptOrder,
    check_step_finite,
    clip_fraction,
    iteration_metrics,
    masked_mean,
    minibatches,
    response_outputs,
    rollout,
    update,
)
from .runtime import progress_bar


# ---------------------------------------------------------------------------------------------
# The pure functions
# ---------------------------------------------------------------------------------------------
def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (DeepSeekMath §4.1.2, outcome supervision).

    scores: [B] with B = n_groups × group_size, each group's responses consecutive. Returns [B]:
    (r_i − mean_group) / (std_group + eps) with the unbiased std, or only centred when ``scale`` is False.
    A group whose responses all score the same gets advantage 0: nothing to learn from it.
    """
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    g = scores.view(-1, group_size)  # [n_groups, G]
    centred = g - g.mean(1, keepdim=True)
    if scale:
        centred = centred / (g.std(1, keepdim=True) + eps) if group_size > 1 else centred
    return centred.reshape(-1)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_range: float, kl_coef: float) -> tuple[torch.Tensor, dict]:
    """The GRPO loss (the negated objective J above).

    logprobs, old_logprobs, ref_logprobs, mask: [B, T] (log-probs of the sampled tokens under the policy being
    trained, the policy that sampled them, and the reference); advantages: [B], one per response.
    Per token: −min(ρ Â, clip(ρ) Â) + β (exp(ref − logp) − (ref − logp) − 1); averaged over each response's
    tokens, then over responses. Returns (loss, stats) with ``kl`` (mean per-token KL estimate), ``approx_kl``
    (½ E[(log ρ)²], as in PPO), ``clipfrac`` (share of tokens whose gradient the clip removed, PPO's definition:
    :func:`rlhf_lite.rollout.clip_fraction`) and ``ratio``.
    """
    real = mask > 0  # [B, T]; padding gets 0 *before* exp: an overflow there would give inf · 0 = NaN in the means
    log_ratio = torch.where(real, logprobs - old_logprobs, 0.0)  # [B, T]
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None]  # [B, 1] -> every token of a response shares its advantage
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv)  # [B, T]
    d = torch.where(real, ref_logprobs - logprobs, 0.0)
    kl = torch.exp(d) - d - 1  # [B, T], ≥ 0, unbiased for KL(π ‖ π_ref) on tokens sampled from π
    per_token = -surrogate + kl_coef * kl
    loss = masked_mean(per_token, mask, dim=1).mean()  # mean over each response's tokens, then over responses
    with torch.no_grad():
        stats = {"kl_loss": masked_mean(kl, mask).item(), "approx_kl": 0.5 * masked_mean(log_ratio ** 2, mask).item(),
                 "clipfrac": clip_fraction(ratio, adv, mask, clip_range),
                 "ratio": masked_mean(ratio, mask).item()}
    return loss, stats


# ---------------------------------------------------------------------------------------------
# The policy and one iteration
# ---------------------------------------------------------------------------------------------
def build_grpo_policy(sft_model, cfg: GRPOConfig, lora: LoRAConfig | None = None) -> PolicyWithValue:
    """LoRA adapters (``lora``: the profile's, default ``LoRAConfig()``) on the SFT model (dropout off); adapters
    disabled = the reference. No critic."""
    return PolicyWithValue(frozen_with_adapters(sft_model, lora, cfg.seed), None)


def grpo_step(policy: PolicyWithValue, reward_model, tokenizer, prompts: Sequence[str], cfg: GRPOConfig, optimizer,
              step: int = 0) -> tuple[dict, list[Generation]]:
    """One GRPO iteration: ``cfg.group_size`` responses to each of ``prompts``, group-relative advantages,
    clipped updates with the KL in the loss. Returns (metrics, the responses, grouped by prompt)."""
    # 1–3. Rollout, scores, log-probs of policy and reference: PPO's code, each prompt repeated G times
    ro = rollout(policy, reward_model, tokenizer, [p for p in prompts for _ in range(cfg.group_size)], cfg, step)
    ids, attn, mask, P = ro.input_ids, ro.attention_mask, ro.mask, ro.prompt_len
    # 4. Advantages: each response's score against its own group's (no critic, no GAE)
    advantages = group_advantages(ro.scores, cfg.group_size, cfg.scale_rewards)  # [B]
    check_step_finite("reward", advantages, step, "GRPO")
    # 5. Epochs of minibatch updates; the first minibatch is on-policy (ratio 1), later ones are clipped
    stats: list[dict] = []
    for mb in minibatches(ro, cfg.epochs, cfg.minibatch_size, cfg.seed, step):
        new_logprobs, _ = response_outputs(policy, ids[mb], attn[mb], P, cfg.temperature)
        loss, s = grpo_loss(new_logprobs, ro.logprobs[mb], ro.ref_logprobs[mb], advantages[mb], mask[mb],
                            cfg.clip_range, cfg.kl_coef)
        update(policy, loss, optimizer, cfg.grad_clip, step, "GRPO")
        stats.append({"policy_loss": loss.item(), **s})
    # 6. Metrics (``kl``: nats per response on the sampled tokens, the same estimate PPO logs)
    group_std = ro.scores.view(-1, cfg.group_size).std(1).mean().item() if cfg.group_size > 1 else 0.0
    return {**iteration_metrics(ro, stats, step, cfg.kl_coef), "group_std": group_std}, ro.gens


def train_grpo(policy: PolicyWithValue, reward_model, tokenizer, tasks: Sequence, cfg: GRPOConfig, fmt: str = "alpaca",
               world=None, progress: bool = True, callback=None) -> list[dict]:
    """Run ``cfg.steps`` GRPO iterations on prompts drawn from ``tasks`` (a fresh shuffle each pass); returns the
    per-step metrics, with the gold score of every batch when ``world`` is given. ``callback(metrics, gens)``
    runs after each step."""
    validate_config(cfg)
    torch.manual_seed(cfg.seed)
    pool = list(tasks[: cfg.n_prompts] if cfg.n_prompts else tasks)
    prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t in pool]
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=cfg.lr, eps=1e-5)
    order, history = PromptOrder(len(pool), cfg.seed), []
    for step in progress_bar(range(cfg.steps), desc="GRPO", enabled=progress):
        idx = order.take(cfg.prompts_per_step)
        t0 = time.time()
        metrics, gens = grpo_step(policy, reward_model, tokenizer, [prompts[i] for i in idx], cfg, optimizer, step)
        if world is not None:
            tasks_rep = [pool[i] for i in idx for _ in range(cfg.group_size)]
            metrics["gold"] = sum(world.panel.gold_scores(tasks_rep, gens)) / len(gens)
        metrics["time_s"] = time.time() - t0
        history.append(metrics)
        if callback is not None:
            callback(metrics, gens)
    return history
