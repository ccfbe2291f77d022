"""Step 3 of InstructGPT: PPO against the reward model, with a per-token KL penalty to the SFT model.

Objective (Ouyang et al. 2022, eq. 2):  E[ r_θ(x, y) − β log(π_RL(y|x) / π_SFT(y|x)) ] + γ E_pretrain[log π_RL(x)].

Read top to bottom: the pure functions the loop is built from (each unit-tested against hand-computed
values), the policy (LoRA on the SFT model; adapters off = the reference) and its critic, ``ppo_step``
(one iteration in eight numbered stages), and ``train_ppo`` (steps, logging, checkpoints, resume).
Conventions: tensors are batch-first, ``mask`` is 1.0 on response tokens and 0.0 on prompt and
padding, and position t of ``logprobs`` is the log-probability of token t.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import LoRAConfig, PPOConfig, validate_config
from .data import render_prompt
from .models import Generation, frozen_with_adapters, in_float32, last_token_index
from .rollout import (
    PolicyWithValue,
    PromptOrder,
    check_step_finite,
    clip_fraction,
    iteration_metrics,
    masked_mean,
    masked_var,
    masked_whiten,
    minibatches,
    response_outputs,
    rollout,
    update,
)
from .runtime import progress_bar


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                         beta: float) -> torch.Tensor:
    """Per-token rewards r_t for PPO (Ziegler et al. 2019; Stiennon et al. 2020, eq. 1; InstructGPT eq. 2).

    scores: [B] reward-model score of each response; logprobs, ref_logprobs: [B, T] log-probabilities of
    the sampled tokens under the policy and the reference (SFT) model; mask: [B, T]. Returns [B, T]:

        r_t = −β (log π(y_t) − log π_ref(y_t))            on response tokens,
        r_T += score                                        at each row's last response token,

    and 0 elsewhere. The score lands on the last *response* token (the EOS, if the model stopped), not
    on the padding after it.
    """
    rewards = -beta * (logprobs - ref_logprobs) * mask  # [B, T]
    if not (mask.sum(1) > 0).all():
        raise ValueError("kl_penalized_rewards: a row has no response token (mask all zero)")
    last = last_token_index(mask)  # [B] the last response token of each row
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's response tokens.

    rewards, values, mask: [B, T]. Walking backwards over the masked positions of a row,

        δ_t = r_t + γ V_{t+1} − V_t,     A_t = δ_t + γ λ A_{t+1},

    where t+1 is the next *response* position, and V and A after the last response token are 0 (the
    episode ends there). Returns (advantages, returns = advantages + values), both 0 off the mask.
    """
    adv = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])  # [B]
    next_value = torch.zeros_like(rewards[:, 0])  # [B]
    for t in reversed(range(rewards.size(1))):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        gae = delta + gamma * lam * last_gae
        adv[:, t] = gae * m
        last_gae = torch.where(m > 0, gae, last_gae)  # positions off the mask pass the running values through
        next_value = torch.where(m > 0, values[:, t], next_value)
    return adv, (adv + values) * mask


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_range: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    logprobs: [B, T] under the policy being updated; old_logprobs: [B, T] at rollout time; advantages,
    mask: [B, T]. With ρ_t = exp(logprobs − old_logprobs):

        L = masked_mean( max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)) )

    over all response tokens of the batch. Stats: ``approx_kl`` = masked mean of ½(log ρ)² (an
    estimate of KL(old ‖ new), 0 on the first minibatch), ``clipfrac`` (share of tokens whose gradient the
    clip removed, :func:`rlhf_lite.rollout.clip_fraction`), ``ratio`` (masked mean of ρ).
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(pg1, pg2), mask)
    with torch.no_grad():
        stats = {"approx_kl": masked_mean(0.5 * log_ratio ** 2, mask).item(),
                 "clipfrac": clip_fraction(ratio, advantages, mask, clip_range),
                 "ratio": masked_mean(ratio, mask).item()}
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_range_value: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss (as in OpenAI's baselines PPO2 and the RLHF code after it).

    values: [B, T] current predictions; old_values: [B, T] at rollout time; returns, mask: [B, T].

        L_V = ½ masked_mean( max((V − R)², (clip(V, V_old − c, V_old + c) − R)²) )

    Stats: ``vf_clipfrac`` (share of tokens where the clipped error was the larger), ``explained_variance``
    1 − Var(R − V) / Var(R) over the masked tokens.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    err1, err2 = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err1, err2), mask)
    with torch.no_grad():
        var_r = masked_var(returns, mask) if mask.sum() > 1 else torch.tensor(0.0)
        ev = 1 - masked_var(returns - values, mask) / var_r if var_r > 0 else torch.tensor(float("nan"))
        stats = {"vf_clipfrac": masked_mean((err2 > err1).float(), mask).item(), "explained_variance": float(ev)}
    return loss, stats


class FixedKLController:
    """β stays where it is."""

    def __init__(self, beta: float):
        self.value = beta

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. 2019, §2.2: steer β so that the KL to the reference stays near ``target``.

        e = clip((KL − target) / target, −0.2, 0.2),     β ← β (1 + e · n_steps / horizon)

    KL above target raises β (a stronger pull back), below target lowers it. ``n_steps``: samples (or
    steps) since the last update, in the units ``horizon`` is measured in.
    """

    def __init__(self, beta: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max((current_kl - self.target) / self.target, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


# ---------------------------------------------------------------------------------------------
# The policy: LoRA adapters on the SFT model and a critic (``rlhf_lite.rollout.PolicyWithValue``)
# ---------------------------------------------------------------------------------------------
def build_policy(sft_model: nn.Module, reward_model, cfg: PPOConfig, lora: LoRAConfig | None = None) -> PolicyWithValue:
    """LoRA policy on ``sft_model`` (dropout off everywhere; ``lora``: the profile's adapters, default
    ``LoRAConfig()``) and a critic head on the reward model's hidden states: zeros, or a copy of
    ``reward_model.head`` (``cfg.value_init``)."""
    if cfg.value_init not in ("zero", "reward_model"):
        raise ValueError(f"PPOConfig.value_init must be 'zero' or 'reward_model', got {cfg.value_init!r}")
    lm = frozen_with_adapters(sft_model, lora, cfg.seed)
    head = in_float32(nn.Linear(reward_model.head.in_features, 1))  # V in float32 under autocast
    if cfg.value_init == "reward_model":
        head.load_state_dict(reward_model.head.state_dict())
    else:
        nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    return PolicyWithValue(lm, head.to(reward_model.head.weight.device))


def ppo_optimizer(policy: PolicyWithValue, cfg: PPOConfig) -> torch.optim.Adam:
    """Adam over the policy's adapters (``cfg.lr``) and the critic's head (``cfg.vf_lr``), two parameter groups."""
    return torch.optim.Adam([{"params": [p for p in policy.lm.parameters() if p.requires_grad], "lr": cfg.lr},
                             {"params": list(policy.value_head.parameters()), "lr": cfg.vf_lr}], eps=1e-5)


def ppo_step(policy: PolicyWithValue, reward_model, tokenizer, prompts: Sequence[str], cfg: PPOConfig, optimizer,
             kl_ctl, step: int = 0, ptx_rows: torch.Tensor | None = None) -> tuple[dict, list[Generation]]:
    """One PPO iteration on ``prompts``: rollout, score, KL-penalised rewards, GAE, clipped updates.
    Returns (metrics, the sampled responses). ``ptx_rows`` [N, T]: pretraining rows for PPO-ptx."""
    # 1–3. Rollout, reward-model scores, log-probs of policy and reference (shared with GRPO)
    ro = rollout(policy, reward_model, tokenizer, prompts, cfg, step)
    mask, P = ro.mask, ro.prompt_len  # [B, R]
    with torch.no_grad():
        values = policy.value_head(ro.feats).squeeze(-1) * mask  # [B, R] V(state before response token j)
        # 4. Per-token rewards: −β·(log π − log π_ref) on every token, the score added at the last one
        rewards = kl_penalized_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, mask, kl_ctl.value)
        # 5. Whitening: rewards optionally (scale only), advantages always (per batch, mean shifted to 0)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        # 6. GAE over each response; returns are the value targets
        advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
    check_step_finite("reward", rewards, step)

    # 7. Several epochs of minibatch updates on this rollout (the first minibatch is exactly on-policy)
    stats: list[dict] = []
    ptx_gen = torch.Generator().manual_seed(cfg.seed * 100003 + step + 10**9)  # PPO-ptx rows: their own draws
    t_update, update_tokens = time.perf_counter(), 0
    for mb in minibatches(ro, cfg.ppo_epochs, cfg.minibatch_size, cfg.seed, step):
        ids, attn = ro.input_ids[mb], ro.attention_mask[mb]
        update_tokens += int(attn.sum())
        new_logprobs, _ = response_outputs(policy, ids, attn, P, cfg.temperature)
        new_values = policy.value_head(ro.feats[mb]).squeeze(-1)
        pg_loss, pg_stats = ppo_policy_loss(new_logprobs, ro.logprobs[mb], advantages[mb], mask[mb], cfg.clip_range)
        vf_loss, vf_stats = ppo_value_loss(new_values, values[mb], returns[mb], mask[mb], cfg.clip_range_value)
        loss = pg_loss + cfg.vf_coef * vf_loss
        ptx_loss = torch.tensor(0.0)
        if cfg.ptx_coef > 0 and ptx_rows is not None:  # PPO-ptx: γ · the pretraining LM loss (InstructGPT eq. 2)
            rows = ptx_rows[torch.randint(len(ptx_rows), (cfg.ptx_batch_size,), generator=ptx_gen)].to(policy.device)
            ptx_loss = policy.lm(input_ids=rows, attention_mask=torch.ones_like(rows), labels=rows,
                                 use_cache=False).loss
            loss = loss + cfg.ptx_coef * ptx_loss
        update(policy, loss, optimizer, cfg.grad_clip, step, "PPO", "policy loss" if not torch.isfinite(pg_loss) else
               "value loss" if not torch.isfinite(vf_loss) else "pretraining loss")
        stats.append({"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "ptx_loss": ptx_loss.item(),
                      **pg_stats, **vf_stats})

    # 8. Metrics, and the KL controller's update (n = episodes seen)
    metrics = {**iteration_metrics(ro, stats, step, kl_ctl.value), "update_s": time.perf_counter() - t_update,
               "update_tokens": update_tokens}
    kl_ctl.update(metrics["kl"], len(prompts))
    return metrics, ro.gens


# ---------------------------------------------------------------------------------------------
# The loop: ppo_step after ppo_step, with logging, checkpoints and resume
# ---------------------------------------------------------------------------------------------
def train_ppo(policy: PolicyWithValue, reward_model, tokenizer, tasks: Sequence, cfg: PPOConfig, fmt: str = "alpaca",
              world=None, ptx_rows: torch.Tensor | None = None, out_dir: str | Path | None = None, resume: bool = False,
              progress: bool = True, callback=None) -> list[dict]:
    """Run ``cfg.steps`` PPO iterations on prompts drawn from ``tasks``; returns the per-step metrics.

    ``world`` (TinyWorld) adds the gold score of every batch of rollouts to the log: the number the proxy
    reward stands in for. ``out_dir``: a checkpoint (:mod:`rlhf_lite.checkpoint`) is written there every
    ``cfg.checkpoint_every`` steps, and with ``resume=True`` training continues from it, giving the same run as
    one never interrupted.
    ``callback(metrics, gens)`` is called after each step (the notebook's live dashboard).
    """
    validate_config(cfg)
    torch.manual_seed(cfg.seed)
    pool = list(tasks[: cfg.n_prompts] if cfg.n_prompts else tasks)
    prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t in pool]
    optimizer = ppo_optimizer(policy, cfg)
    kl_ctl = AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl \
        else FixedKLController(cfg.init_kl_coef)
    order, history, start = PromptOrder(len(pool), cfg.seed), [], 0
    ckpt = Path(out_dir) / CHECKPOINT if out_dir else None
    if resume:  # the state of an interrupted run: the same run continues as if never interrupted
        history, start, order.pos, order.order = load_checkpoint(ckpt, policy, optimizer, kl_ctl, order.gen, cfg)
    bar = progress_bar(range(start, cfg.steps), desc="PPO" if cfg.ptx_coef == 0 else "PPO-ptx", enabled=progress,
                       initial=start, total=cfg.steps)
    for step in bar:
        idx = order.take(cfg.batch_size)
        t0 = time.time()
        metrics, gens = ppo_step(policy, reward_model, tokenizer, [prompts[i] for i in idx], cfg, optimizer, kl_ctl,
                                 step, ptx_rows)
        if world is not None:
            metrics["gold"] = sum(world.panel.gold_scores([pool[i] for i in idx], gens)) / len(idx)
        metrics["time_s"] = time.time() - t0
        history.append(metrics)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.2f}",
                        **({"gold": f"{metrics['gold']:.3f}"} if "gold" in metrics else {}))
        if callback is not None:
            callback(metrics, gens)
        if ckpt is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(ckpt, policy, optimizer, kl_ctl, order.gen, cfg, step + 1, history, order.pos, order.order)
    return history
