"""Step 3 of InstructGPT: PPO against the reward model, with a per-token KL penalty to the SFT model.

Objective (Ouyang et al. 2022, eq. 2):  E[ r_θ(x, y) − β log(π_RL(y|x) / π_SFT(y|x)) ] + γ E_pretrain[log π_RL(x)].

Read top to bottom: the pure functions the loop is built from (each unit-tested against hand-computed
values), the policy (LoRA on the SFT model; adapters off = the reference) and its critic, ``ppo_step``
(one iteration in eight numbered stages), and ``train_ppo`` (steps, logging, checkpoints, resume).
Conventions: tensors are batch-first, ``mask`` is 1.0 on response tokens and 0.0 on prompt and
padding, and position t of ``logprobs`` is the log-probability of token t.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .config import PPOConfig, validate_config
from .models import (Generation, add_lora_adapters, dropout_off, generate, last_token_index, position_ids_from_mask,
                     transformer_body, trim_padding)
from .runtime import check_finite, load_state, progress_bar, save_state, writable_dir
from .sft import length_grouped_batches


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


# ---------------------------------------------------------------------------------------------
# The policy: LoRA adapters on the SFT model, a value head on its hidden states
# ---------------------------------------------------------------------------------------------
class PolicyWithValue(nn.Module):
    """π_RL, π_SFT and V without a second copy of any model.

    ``lm`` is the SFT model with LoRA adapters (peft): with the adapters on it is the policy, and inside
    ``with policy.reference():`` (adapters disabled) it is exactly the SFT model, the KL reference.

    ``value_head`` is the critic: a linear head on the *reward model's* hidden states. PPO runs the
    (frozen) reward model on every rollout anyway to get the score, so its hidden state at every
    response position comes for free, and the critic's gradient never touches the policy. InstructGPT
    initialised its value model from the reward model; ``PPOConfig.value_init="reward_model"`` does the
    same with the head. The default starts it at zero instead: our reward model was trained at the last
    token only, so mid-response its head outputs noise (strongly negative explained variance), and GAE
    with λ < 1 passes a critic's errors into the advantages. In development, a first version with the
    head on the policy's own hidden states, copied from the RM, pushed the policy towards whatever the
    head liked: even with the gold score itself as the reward, the gold score fell while KL grew.
    Notebook 05's third exercise compares the two starts.
    """

    def __init__(self, lm: nn.Module, value_head: nn.Linear | None):
        super().__init__()
        self.lm, self.value_head = lm, value_head  # value_head None: a policy without a critic (GRPO, DPO)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def reference(self):
        """Context manager: inside it, ``self.lm`` is the SFT model (adapters disabled)."""
        return self.lm.disable_adapter()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def build_policy(sft_model: nn.Module, reward_model, cfg: PPOConfig) -> PolicyWithValue:
    """LoRA policy on ``sft_model`` (dropout off everywhere) and a critic head on the reward model's hidden
    states: zeros, or a copy of ``reward_model.head`` (``cfg.value_init``)."""
    if cfg.value_init not in ("zero", "reward_model"):
        raise ValueError(f"PPOConfig.value_init must be 'zero' or 'reward_model', got {cfg.value_init!r}")
    dropout_off(sft_model)
    lm = add_lora_adapters(sft_model, cfg.lora_r, cfg.lora_alpha, ("c_attn", "c_proj", "c_fc"), 0.0, cfg.seed)
    head = nn.Linear(reward_model.head.in_features, 1)
    if cfg.value_init == "reward_model":
        head.load_state_dict(reward_model.head.state_dict())
    else:
        nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    return PolicyWithValue(lm, head.to(reward_model.head.weight.device))


def response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, prompt_len: int, temperature: float) -> torch.Tensor:
    """Log-probability of each response token under ``logits / temperature``.

    logits: [B, P+R, V] over prompt (left-padded to P) + response (right-padded to R); input_ids: [B, P+R].
    Position t's logits predict token t+1, so response token j (at P+j) is read from position P+j−1.
    Returns [B, R]. Dividing by the sampling temperature matters: the tokens were drawn from
    softmax(logits / T), and a ratio or KL against softmax(logits) measures a different policy.
    """
    logits = logits[:, prompt_len - 1:-1] / temperature  # [B, R, V]
    return torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, prompt_len:, None]).squeeze(-1)


def rollout_tensors(tokenizer, prompts: Sequence[str], gens: Sequence[Generation], device="cpu") -> dict:
    """Prompts left-padded to P and responses (EOS included when emitted) right-padded to R, joined.

    Returns input_ids/attention_mask [B, P+R], ``mask`` [B, R] (1 on response tokens, EOS included),
    ``finished`` [B] (bool), and ``prompt_len`` P. The attention mask is built from lengths, never from
    token values: GPT-2's pad token *is* EOS.
    """
    eos = tokenizer.eos_token_id
    p = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in prompts]
    r = [g.token_ids + ([eos] if g.finished else []) for g in gens]
    P, R = max(map(len, p)), max(map(len, r))
    ids = torch.full((len(p), P + R), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (a, b) in enumerate(zip(p, r)):
        ids[i, P - len(a):P], attn[i, P - len(a):P] = torch.tensor(a), 1
        ids[i, P:P + len(b)], attn[i, P:P + len(b)] = torch.tensor(b), 1
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "mask": attn[:, P:].float().to(device),
            "finished": torch.tensor([g.finished for g in gens], device=device), "prompt_len": P}


def response_outputs(policy: PolicyWithValue, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int, temperature: float,
                     reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the response tokens and per-token entropy, both [b, R], for rows of a rollout.

    Equal to running the LM on (ids, attn) and taking :func:`response_logprobs`, but cheaper: columns that
    are padding in every row are cut off first (so length-grouped minibatches waste little compute on
    padding), and the LM head runs only where a response token is predicted (with a 2,048-token
    vocabulary it would otherwise spend a fifth of the forward pass on prompt positions nobody reads).
    ``reference=True``: adapters off, the SFT model.
    """
    R = ids.size(1) - prompt_len
    ids_t, attn_t, lo = trim_padding(ids, attn)
    P = prompt_len - lo
    with policy.reference() if reference else contextlib.nullcontext():
        h = transformer_body(policy.lm)(input_ids=ids_t, attention_mask=attn_t, position_ids=position_ids_from_mask(attn_t),
                                        use_cache=False).last_hidden_state  # [b, T', d]
    logits = policy.lm.get_output_embeddings()(h[:, P - 1:-1]).float() / temperature  # [b, R', V]
    logp_all = torch.log_softmax(logits, -1)
    logprobs = logp_all.gather(-1, ids_t[:, P:, None]).squeeze(-1)  # [b, R']
    entropy = -(logp_all.exp() * logp_all).sum(-1).detach()  # [b, R']
    pad = R - logprobs.size(1)  # right columns cut off above: back to [b, R] (they are off the mask)
    return nn.functional.pad(logprobs, (0, pad)), nn.functional.pad(entropy, (0, pad))


def score_and_features(reward_model, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the (frozen) reward model over rollout rows: the score [b], read at each row's last real
    token, and its hidden states [b, R, d] at the positions before each response token (the critic's input)."""
    R = ids.size(1) - prompt_len
    ids_t, attn_t, lo = trim_padding(ids, attn)
    h = reward_model.hidden(ids_t, attn_t)  # [b, T', d]
    scores = reward_model.head(h[torch.arange(h.size(0)), last_token_index(attn_t)]).squeeze(-1)  # [b]
    feats = h[:, prompt_len - lo - 1:-1]  # [b, R', d]
    return scores, nn.functional.pad(feats, (0, 0, 0, R - feats.size(1)))


def check_step_finite(name: str, x: torch.Tensor, step: int, algo: str = "PPO") -> None:
    """Stop if ``x`` has a NaN/inf; ``step`` is 0-based, the message counts from 1 like the logs."""
    check_finite(x, f"{algo} step {step + 1}: {name}",
                 f"Lower {algo}Config.lr, raise its KL coefficient, or check the reward model's scores.")


def rollout(policy: PolicyWithValue, reward_model, tokenizer, prompts: Sequence[str], cfg, step: int = 0) -> dict:
    """Stages 1–3 of an RL iteration, shared by PPO and GRPO (``cfg`` is a PPOConfig or GRPOConfig):
    sample one response per prompt, score it, and compute the log-probs the losses need, all without gradient.

    Returns ``gens``, the rollout tensors (``input_ids``/``attention_mask`` [B, P+R], ``mask`` [B, R],
    ``finished`` [B], ``prompt_len``), ``lengths`` and the length-grouped ``chunks`` of row indices,
    ``rm_scores`` [B] (the reward model's), ``scores`` [B] (after the no-EOS penalty), ``feats`` [B, R, d] (the
    RM's hidden states, the critic's input), and ``logprobs``, ``ref_logprobs``, ``entropy`` [B, R].
    """
    device = policy.device
    # 1. Rollout: sample one response per prompt from the current policy (left-padded prompts, stop at EOS)
    gens = generate(policy.lm, tokenizer, list(prompts), cfg.max_new_tokens, temperature=cfg.temperature,
                    batch_size=len(prompts))
    batch = rollout_tensors(tokenizer, prompts, gens, device)
    ids, attn, mask, P = batch["input_ids"], batch["attention_mask"], batch["mask"], batch["prompt_len"]  # [B,P+R] [B,R]
    with torch.no_grad():
        # 2. Score with the reward model, read at the last response token; no EOS -> a fixed penalty.
        #    The same pass gives the critic's input (RM hidden states); everything in length-grouped chunks
        lengths = attn.sum(1).tolist()
        chunks = length_grouped_batches(lengths, cfg.minibatch_size, torch.Generator().manual_seed(cfg.seed + step))
        rm_scores = torch.zeros(len(prompts), device=device)  # [B]
        feats = torch.zeros(len(prompts), mask.size(1), reward_model.head.in_features, device=device)  # [B, R, d]
        for mb in chunks:
            rm_scores[mb], feats[mb] = score_and_features(reward_model, ids[mb], attn[mb], P)
        scores = rm_scores if cfg.no_eos_penalty is None else torch.where(
            batch["finished"], rm_scores, torch.full_like(rm_scores, cfg.no_eos_penalty))
        # 3. Log-probs of the sampled tokens under the policy and the reference (same temperature)
        logprobs, ref_logprobs, entropy = (torch.zeros(len(prompts), mask.size(1), device=device) for _ in range(3))
        for mb in chunks:
            logprobs[mb], entropy[mb] = response_outputs(policy, ids[mb], attn[mb], P, cfg.temperature)
            ref_logprobs[mb] = response_outputs(policy, ids[mb], attn[mb], P, cfg.temperature, reference=True)[0]
    return {**batch, "gens": gens, "lengths": lengths, "chunks": chunks, "rm_scores": rm_scores, "scores": scores,
            "feats": feats, "logprobs": logprobs, "ref_logprobs": ref_logprobs, "entropy": entropy}


def ppo_step(policy: PolicyWithValue, reward_model, tokenizer, prompts: Sequence[str], cfg: PPOConfig, optimizer,
             kl_ctl, step: int = 0, ptx_rows: torch.Tensor | None = None) -> tuple[dict, list[Generation]]:
    """One PPO iteration on ``prompts``: rollout, score, KL-penalised rewards, GAE, clipped updates.
    Returns (metrics, the sampled responses). ``ptx_rows`` [N, T]: pretraining rows for PPO-ptx."""
    device = policy.device
    # 1–3. Rollout, reward-model scores, log-probs of policy and reference (shared with GRPO: ``rollout``)
    ro = rollout(policy, reward_model, tokenizer, prompts, cfg, step)
    gens, ids, attn, mask, P = ro["gens"], ro["input_ids"], ro["attention_mask"], ro["mask"], ro["prompt_len"]
    lengths, chunks, feats, logprobs, ref_logprobs = ro["lengths"], ro["chunks"], ro["feats"], ro["logprobs"], ro["ref_logprobs"]
    rm_scores, scores, entropy = ro["rm_scores"], ro["scores"], ro["entropy"]
    with torch.no_grad():
        values = policy.value_head(feats).squeeze(-1) * mask  # [B, R] V(state before response token j)
        # 4. Per-token rewards: −β·(log π − log π_ref) on every token, the score added at the last one
        kl_tokens = (logprobs - ref_logprobs) * mask  # [B, R]
        rewards = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_ctl.value)
        # 5. Whitening: rewards optionally (scale only), advantages always (per batch, mean shifted to 0)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        # 6. GAE over each response; returns are the value targets
        advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
    check_step_finite("reward", rewards, step)

    # 7. Several epochs of minibatch updates on this rollout (the first minibatch is exactly on-policy)
    stats: list[dict] = []
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + step)
    t_update, update_tokens = time.perf_counter(), 0
    for epoch in range(cfg.ppo_epochs):
        for mb in (chunks if epoch == 0 else length_grouped_batches(lengths, cfg.minibatch_size, gen)):
            update_tokens += int(attn[mb].sum())
            new_logprobs, _ = response_outputs(policy, ids[mb], attn[mb], P, cfg.temperature)
            new_values = policy.value_head(feats[mb]).squeeze(-1)
            pg_loss, pg_stats = ppo_policy_loss(new_logprobs, logprobs[mb], advantages[mb], mask[mb], cfg.clip_range)
            vf_loss, vf_stats = ppo_value_loss(new_values, values[mb], returns[mb], mask[mb],
                                               cfg.clip_range_value)
            loss = pg_loss + cfg.vf_coef * vf_loss
            ptx_loss = torch.tensor(0.0)
            if cfg.ptx_coef > 0 and ptx_rows is not None:
                rows = ptx_rows[torch.randint(len(ptx_rows), (cfg.ptx_batch_size,), generator=gen)].to(device)
                ptx_loss = policy.lm(input_ids=rows, attention_mask=torch.ones_like(rows), labels=rows, use_cache=False).loss
                loss = loss + cfg.ptx_coef * ptx_loss
            check_step_finite("policy loss" if not torch.isfinite(pg_loss) else "value loss" if not torch.isfinite(vf_loss)
                          else "pretraining loss", loss, step)
            loss.backward()
            check_step_finite("gradient norm", torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), cfg.grad_clip),
                              step)  # before the update: a NaN never reaches the weights
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats.append({"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "ptx_loss": ptx_loss.item(),
                          **pg_stats, **vf_stats})

    # 8. Metrics, and the KL controller's update (n = episodes seen)
    kl = kl_tokens.sum(1).mean().item()  # nats per response, estimated on the sampled tokens
    metrics = {"step": step + 1, "reward": rm_scores.mean().item(), "score": scores.mean().item(), "kl": kl,
               "beta": kl_ctl.value, "entropy": masked_mean(entropy, mask).item(), "response_length": mask.sum(1).mean().item(),
               "eos_rate": ro["finished"].float().mean().item(), "first_ratio": stats[0]["ratio"],
               "first_approx_kl": stats[0]["approx_kl"], "update_s": time.perf_counter() - t_update,
               "update_tokens": update_tokens, **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}}
    kl_ctl.update(kl, len(prompts))
    return metrics, gens


# ---------------------------------------------------------------------------------------------
# The loop: ppo_step after ppo_step, with logging, checkpoints and resume
# ---------------------------------------------------------------------------------------------
CHECKPOINT = "ppo_checkpoint.safetensors"


def _trainable_state(policy: PolicyWithValue) -> dict[str, torch.Tensor]:
    """What a checkpoint stores of the policy: the LoRA adapters and the value head (the rest is the frozen SFT model)."""
    return {k: v.detach().clone() for k, v in policy.state_dict().items() if k.startswith("value_head") or "lora_" in k}


def train_ppo(policy: PolicyWithValue, reward_model, tokenizer, tasks: Sequence, cfg: PPOConfig, fmt: str = "alpaca",
              world=None, ptx_rows: torch.Tensor | None = None, out_dir: str | Path | None = None, resume: bool = False,
              progress: bool = True, callback=None) -> list[dict]:
    """Run ``cfg.steps`` PPO iterations on prompts drawn from ``tasks``; returns the per-step metrics.

    ``world`` (TinyWorld) adds the gold score of every batch of rollouts to the log: the number the proxy
    reward stands in for. ``out_dir``: a checkpoint (``ppo_checkpoint.safetensors``: adapters, value head,
    optimizer, β, random states, log) is written there every ``cfg.checkpoint_every`` steps, and with
    ``resume=True`` training continues from it, giving the same run as one never interrupted.
    ``callback(metrics, gens)`` is called after each step (the notebook's live dashboard).
    """
    from .data import render_prompt

    validate_config(cfg)
    torch.manual_seed(cfg.seed)
    pool = list(tasks[: cfg.n_prompts] if cfg.n_prompts else tasks)
    prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t in pool]
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=cfg.lr, eps=1e-5)
    kl_ctl = AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl \
        else FixedKLController(cfg.init_kl_coef)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    order, pos, history, start = torch.randperm(len(pool), generator=order_gen), 0, [], 0
    ckpt = Path(out_dir) / CHECKPOINT if out_dir else None
    if ckpt is not None:
        writable_dir(out_dir)  # an unwritable --out fails now, not after the first checkpoint's worth of training
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt}; pass the out_dir of the "
                                    "interrupted run, or resume=False to start fresh")
        state = load_state(ckpt)  # safetensors + JSON: loading never runs code from the file
        changed = sorted(k for k, v in asdict(cfg).items()
                         if k not in ("steps", "checkpoint_every") and state["config"].get(k) != v)
        if changed:
            raise ValueError(f"the checkpoint in {ckpt} was written with different settings ({', '.join(changed)}); "
                             "resume with the same PPOConfig (only steps may grow), or start a new out_dir")
        expected = set(_trainable_state(policy))
        if set(state["trainable"]) != expected:
            missing, extra = sorted(expected - set(state["trainable"])), sorted(set(state["trainable"]) - expected)
            raise ValueError(f"the checkpoint in {ckpt} does not fit this policy (missing {missing[:3]}, unexpected "
                             f"{extra[:3]}); it was written for another model or LoRA setting")
        policy.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        kl_ctl.value, history, start, pos, order = state["beta"], state["history"], state["step"], state["pos"], state["order"]
        order_gen.set_state(state["order_gen"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(state["cuda_rng"]))
    bar = progress_bar(range(start, cfg.steps), desc="PPO" if cfg.ptx_coef == 0 else "PPO-ptx", enabled=progress,
                       initial=start, total=cfg.steps)
    for step in bar:
        if pos + cfg.batch_size > len(order):  # next pass over the prompt pool
            order, pos = torch.randperm(len(pool), generator=order_gen), 0
        idx = order[pos:pos + cfg.batch_size].tolist()
        pos += cfg.batch_size
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
            save_state(ckpt, {"step": step + 1, "trainable": _trainable_state(policy), "optimizer": optimizer.state_dict(),
                              "beta": kl_ctl.value, "history": history, "pos": pos, "order": order,
                              "order_gen": order_gen.get_state(), "rng": torch.get_rng_state(),
                              "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                              "config": asdict(cfg)})  # written atomically: a crash keeps the previous checkpoint
    return history


def ppo_stage(profile=None, cfg: PPOConfig | None = None, out_dir: str | Path | None = None, resume: bool = False,
              progress: bool = True, callback=None):
    """Step 3 for a profile: the cached SFT model and reward model, a LoRA policy, ``train_ppo`` on the
    training users' prompts (PPO-ptx when ``cfg.ptx_coef`` > 0, mixing in the pretraining corpus).
    Returns (policy, tokenizer, reward model, history)."""
    from .config import get_profile
    from .models import load_base
    from .pretrain import corpus_blocks
    from .reward import load_reward_model, reward_checkpoint
    from .sft import sft_checkpoint
    from .world import world_from_config

    profile = profile or get_profile()
    cfg = cfg or profile.ppo
    if profile.base_model != "tiny" and cfg.ptx_coef > 0:
        raise ValueError("PPO-ptx needs the base model's pretraining corpus, which only TinyWorld ships; "
                         "set ptx_coef=0 for the gpt2 profile")
    rm, _ = load_reward_model(reward_checkpoint(profile, progress=progress))
    for p in rm.parameters():
        p.requires_grad_(False)
    sft, tok = load_base(str(sft_checkpoint(profile, progress=progress)))
    policy = build_policy(sft, rm, cfg)
    world = world_from_config(profile.world)
    ptx = corpus_blocks(tok, "train", profile.pretrain, max_docs=4000) if cfg.ptx_coef > 0 else None
    history = train_ppo(policy, rm, tok, world.splits["train"], cfg, profile.sft.prompt_format, world, ptx, out_dir,
                        resume, progress, callback)
    return policy, tok, rm, history
