"""What PPO and GRPO share: the policy with its critic, turning sampled responses into tensors, log-probs of the
response tokens, and one rollout (sample → score → log-probs). Also the masked statistics both losses use.

Conventions: tensors are batch-first; a rollout row is a prompt left-padded to P columns followed by its response
right-padded to R columns; ``mask`` [B, R] is 1.0 on response tokens (EOS included) and 0.0 on padding; position
j of a [B, R] log-prob tensor is the log-probability of response token j.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .data import length_grouped_batches
from .models import (
    Generation,
    encode_prompt,
    generate,
    last_token_index,
    position_ids_from_mask,
    transformer_body,
    trim_padding,
)
from .runtime import check_finite


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


def clip_fraction(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float) -> float:
    """Share of the masked tokens whose gradient the clip removed: those where the clipped term −A·clip(ρ, 1 ± ε) is
    the larger loss, i.e. the one the max (PPO) or min (GRPO's objective) picks. One definition for PPO and GRPO.
    ratio, mask: [B, T]; advantages: [B, T] or [B, 1]."""
    with torch.no_grad():
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
        return masked_mean((clipped > unclipped).float(), mask).item()


# ---------------------------------------------------------------------------------------------
# The policy: LoRA adapters on the SFT model, a critic head on the reward model's hidden states
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


# ---------------------------------------------------------------------------------------------
# From sampled responses to log-probs
# ---------------------------------------------------------------------------------------------
def rollout_tensors(tokenizer, prompts: Sequence[str], gens: Sequence[Generation], device="cpu") -> dict:
    """Prompts left-padded to P and responses (EOS included when emitted) right-padded to R, joined.

    Returns input_ids/attention_mask [B, P+R], ``mask`` [B, R] (1 on response tokens, EOS included),
    ``finished`` [B] (bool), and ``prompt_len`` P. The attention mask is built from lengths, never from
    token values: GPT-2's pad token *is* EOS.
    """
    eos = tokenizer.eos_token_id
    p = [encode_prompt(tokenizer, x) for x in prompts]  # exactly the ids ``generate`` sampled after
    r = [g.token_ids + ([eos] if g.finished else []) for g in gens]
    P, R = max(map(len, p)), max(map(len, r))
    ids = torch.full((len(p), P + R), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (a, b) in enumerate(zip(p, r)):
        ids[i, P - len(a):P], attn[i, P - len(a):P] = torch.tensor(a), 1
        ids[i, P:P + len(b)], attn[i, P:P + len(b)] = torch.tensor(b), 1
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "mask": attn[:, P:].float().to(device),
            "finished": torch.tensor([g.finished for g in gens], device=device), "prompt_len": P}


def response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, prompt_len: int,
                      temperature: float) -> torch.Tensor:
    """Log-probability of each response token under ``logits / temperature``.

    logits: [B, P+R, V] over prompt (left-padded to P) + response (right-padded to R); input_ids: [B, P+R].
    Position t's logits predict token t+1, so response token j (at P+j) is read from position P+j−1.
    Returns [B, R]. Dividing by the sampling temperature matters: the tokens were drawn from
    softmax(logits / T), and a ratio or KL against softmax(logits) measures a different policy.
    """
    logits = logits[:, prompt_len - 1:-1] / temperature  # [B, R, V]
    return torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, prompt_len:, None]).squeeze(-1)


def policy_logprobs(policy: PolicyWithValue, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int, temperature: float,
                    reference: bool = False) -> torch.Tensor:
    """The plain definition: log-probs [b, R] of the response tokens of rollout rows (ids/attn [b, P+R]) under the
    policy, or the reference (``reference=True``: adapters off). One forward pass over every column, positions
    counted over real tokens only, then :func:`response_logprobs`. The training loop uses :func:`response_outputs`,
    which gives the same numbers faster."""
    with policy.reference() if reference else contextlib.nullcontext():
        logits = policy.lm(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                           use_cache=False).logits  # [b, P+R, V]
    return response_logprobs(logits, ids, prompt_len, temperature) * attn[:, prompt_len:]


def response_outputs(policy: PolicyWithValue, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int,
                     temperature: float, reference: bool = False,
                     entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens [b, R] for rows of a rollout, and (``entropy=True``, where it is logged:
    the rollout) the policy's entropy at each response position [b, R], else None.

    The speed path of :func:`policy_logprobs` (the plain spec: one forward pass, then :func:`response_logprobs`);
    ``tests/test_ppo.py`` checks both give the same numbers. Cheaper because columns that
    are padding in every row are cut off first (so length-grouped minibatches waste little compute on
    padding), and the LM head runs only where a response token is predicted (with a 2,048-token
    vocabulary it would otherwise spend a fifth of the forward pass on prompt positions nobody reads).
    ``reference=True``: adapters off, the SFT model.
    """
    R = ids.size(1) - prompt_len
    ids_t, attn_t, lo = trim_padding(ids, attn)
    P = prompt_len - lo
    with policy.reference() if reference else contextlib.nullcontext():
        h = transformer_body(policy.lm)(input_ids=ids_t, attention_mask=attn_t,
                                        position_ids=position_ids_from_mask(attn_t),
                                        use_cache=False).last_hidden_state  # [b, T', d]
    logits = policy.lm.get_output_embeddings()(h[:, P - 1:-1]).float() / temperature  # [b, R', V], float32
    logp_all = torch.log_softmax(logits, -1)
    logprobs = logp_all.gather(-1, ids_t[:, P:, None]).squeeze(-1)  # [b, R']
    pad = R - logprobs.size(1)  # right columns cut off above: back to [b, R] (they are off the mask)
    if not entropy:  # a full-vocabulary pass saved in every update minibatch
        return nn.functional.pad(logprobs, (0, pad)), None
    ent = -(logp_all.exp() * logp_all).sum(-1).detach()  # [b, R']
    return nn.functional.pad(logprobs, (0, pad)), nn.functional.pad(ent, (0, pad))


def score_and_features(reward_model, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor,
                                                                                                      torch.Tensor]:
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


# ---------------------------------------------------------------------------------------------
# One rollout: stages 1–3 of an RL iteration
# ---------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One batch of sampled episodes and everything the losses need from it (no gradient). B episodes, P prompt
    columns (left-padded), R response columns (right-padded), d the reward model's width."""

    gens: list[Generation]
    """The B sampled responses (text, token ids, whether EOS ended them)."""
    input_ids: torch.Tensor
    """[B, P+R] prompt + response tokens."""
    attention_mask: torch.Tensor
    """[B, P+R] 1 on real tokens (from lengths, never from token values: GPT-2's pad token is EOS)."""
    mask: torch.Tensor
    """[B, R] float, 1.0 on response tokens (EOS included)."""
    finished: torch.Tensor
    """[B] bool, the response ended with EOS."""
    prompt_len: int
    """P."""
    lengths: list[int]
    """Real tokens per row, and ``chunks``: the rows grouped into length-sorted minibatches."""
    chunks: list[list[int]]
    rm_scores: torch.Tensor
    """[B] the reward model's score, read at each row's last token."""
    scores: torch.Tensor
    """[B] the score used for training: ``rm_scores``, or the no-EOS penalty for unfinished responses."""
    feats: torch.Tensor
    """[B, R, d] the reward model's hidden state before each response token (the critic's input)."""
    logprobs: torch.Tensor
    """[B, R] log-probs of the sampled tokens under the policy that sampled them (at the sampling temperature)."""
    ref_logprobs: torch.Tensor
    """[B, R] the same under the reference (adapters off: the SFT model)."""
    entropy: torch.Tensor
    """[B, R] the policy's entropy at each response position."""


def rollout(policy: PolicyWithValue, reward_model, tokenizer, prompts: Sequence[str], cfg, step: int = 0) -> Rollout:
    """Stages 1–3 of an RL iteration, shared by PPO and GRPO (``cfg`` is a PPOConfig or GRPOConfig):
    sample one response per prompt, score it, and compute the log-probs the losses need, all without gradient."""
    device = policy.device
    # 1. Rollout: sample one response per prompt from the current policy (left-padded prompts, stop at EOS)
    gens = generate(policy.lm, tokenizer, list(prompts), cfg.max_new_tokens, temperature=cfg.temperature,
                    batch_size=len(prompts))
    batch = rollout_tensors(tokenizer, prompts, gens, device)
    ids, attn, mask, P = (batch["input_ids"], batch["attention_mask"], batch["mask"],
                          batch["prompt_len"])  # [B,P+R] [B,R]
    with torch.no_grad():
        # 2. Score with the reward model, read at the last response token; no EOS -> a fixed penalty.
        #    The same pass gives the critic's input (RM hidden states); everything in length-grouped chunks
        lengths = attn.sum(1).tolist()
        chunks = length_grouped_batches(lengths, cfg.minibatch_size, torch.Generator().manual_seed(cfg.seed + step))
        rm_scores = torch.zeros(len(prompts), device=device)  # [B]
        feats = torch.zeros(len(prompts), mask.size(1), reward_model.head.in_features, device=device)  # [B, R, d]
        for mb in chunks:
            rm_scores[mb], feats[mb] = score_and_features(reward_model, ids[mb], attn[mb], P)
        scores = (rm_scores if cfg.no_eos_penalty is None else torch.where(batch["finished"], rm_scores,
                                                                           torch.full_like(rm_scores,
                                                                                           cfg.no_eos_penalty)))
        # 3. Log-probs of the sampled tokens under the policy and the reference (same temperature)
        logprobs, ref_logprobs, entropy = (torch.zeros(len(prompts), mask.size(1), device=device) for _ in range(3))
        for mb in chunks:
            logprobs[mb], entropy[mb] = response_outputs(policy, ids[mb], attn[mb], P, cfg.temperature, entropy=True)
            ref_logprobs[mb] = response_outputs(policy, ids[mb], attn[mb], P, cfg.temperature, reference=True)[0]
    return Rollout(gens, ids, attn, mask, batch["finished"], P, lengths, chunks, rm_scores, scores, feats, logprobs,
                   ref_logprobs, entropy)


# ---------------------------------------------------------------------------------------------
# What both RL loops share around their losses: minibatches, the update, the metrics, the prompt order
# ---------------------------------------------------------------------------------------------
def kl_per_response(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t (log π(y_t) − log π_ref(y_t)) over each response's tokens (EOS included): [B], the sample estimate of
    KL(π ‖ π_ref) in nats per response that PPO, GRPO and the evaluation log (on tokens sampled from π)."""
    return ((logprobs - ref_logprobs) * mask).sum(1)


def minibatches(ro: Rollout, epochs: int, minibatch_size: int, seed: int, step: int):
    """The minibatches (row indices) of ``epochs`` passes over a rollout: the first pass in the rollout's own
    length-grouped chunks, so the very first minibatch is exactly on-policy (ratio 1), later passes reshuffled."""
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    for epoch in range(epochs):
        yield from (ro.chunks if epoch == 0 else length_grouped_batches(ro.lengths, minibatch_size, gen))


def update(policy: PolicyWithValue, loss: torch.Tensor, optimizer, grad_clip: float, step: int, algo: str = "PPO",
           what: str = "policy loss") -> None:
    """One optimizer step on ``loss``: a non-finite loss or gradient norm stops before the weights change."""
    check_step_finite(what, loss, step, algo)
    loss.backward()
    check_step_finite("gradient norm", torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), grad_clip),
                      step, algo)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def iteration_metrics(ro: Rollout, stats: list[dict], step: int, beta: float) -> dict:
    """What one RL iteration logs: the reward model's mean score (``reward``) and the training score (``score``,
    with the no-EOS penalty), KL per response (:func:`kl_per_response`), β, entropy, response length, EOS rate,
    the first minibatch's ratio and approximate KL (1 and 0 when the implementation is right), and the mean of every
    per-minibatch statistic in ``stats``."""
    mask = ro.mask
    return {"step": step + 1, "reward": ro.rm_scores.mean().item(), "score": ro.scores.mean().item(),
            "kl": kl_per_response(ro.logprobs, ro.ref_logprobs, mask).mean().item(), "beta": beta,
            "entropy": masked_mean(ro.entropy, mask).item(), "response_length": mask.sum(1).mean().item(),
            "eos_rate": ro.finished.float().mean().item(), "first_ratio": stats[0]["ratio"],
            "first_approx_kl": stats[0]["approx_kl"], **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}}


class PromptOrder:
    """The order an RL loop visits its prompt pool in: batches drawn without replacement from a seeded shuffle,
    a fresh shuffle for each pass. ``order``, ``pos`` and ``gen`` are its whole state (PPO's checkpoint keeps it)."""

    def __init__(self, n: int, seed: int):
        self.n, self.gen = n, torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(n, generator=self.gen), 0

    def take(self, k: int) -> list[int]:
        """The next ``k`` prompt indices."""
        if self.pos + k > len(self.order):  # next pass over the pool
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        self.pos += k
        return self.order[self.pos - k:self.pos].tolist()
