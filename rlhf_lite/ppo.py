"""Step 3 of InstructGPT: PPO against the reward model, with a per-token KL penalty to the SFT model.

Objective (Ouyang et al. 2022, eq. 2):  E[ r_θ(x, y) − β log(π_RL(y|x) / π_SFT(y|x)) ] + γ E_pretrain[log π_RL(x)].

This file starts with the pure functions the loop is built from; each is unit-tested against
hand-computed values. Conventions: tensors are batch-first, ``mask`` is 1.0 on response tokens and
0.0 on prompt and padding, and position t of ``logprobs`` is the log-probability of token t.
"""
from __future__ import annotations

import torch

from .models import last_token_index


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over all of them, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries (Bessel's n/(n−1), like ``torch.var``; TensorFlow's
    ``tf.moments``, used by the original OpenAI code, is the biased one)."""
    n = mask.sum()
    if n < 2:
        raise ValueError("masked_var needs at least two masked values")
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask) * n / (n - 1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the masked entries; with ``shift_mean=False`` the mean is added back, so
    only the scale changes (the way rewards are whitened, if at all). Unmasked entries become 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


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
    estimate of KL(old ‖ new), 0 on the first minibatch), ``clipfrac`` (share of tokens where the
    clipped term was the larger), ``ratio`` (masked mean of ρ).
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(pg1, pg2), mask)
    with torch.no_grad():
        stats = {"approx_kl": masked_mean(0.5 * log_ratio ** 2, mask).item(),
                 "clipfrac": masked_mean((pg2 > pg1).float(), mask).item(),
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
