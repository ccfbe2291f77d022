"""Best-of-n: sample n answers, keep the one the reward model scores highest; and rejection-sampling fine-tuning
(Touvron et al. 2023, Llama 2, §3.2.3), best-of-n distilled into one sample.

Best-of-n needs no training: its KL to the sampling policy is known in closed form (:func:`best_of_n_kl`), which
makes it the yardstick every trained policy is set beside (Gao et al. 2022). Rejection sampling fine-tunes on the
best-of-n answers with the SFT loss: the policy learns answers of the kind the reward model was trained to rank (the
SFT model's own), where best-of-n's gold follows its reward, instead of searching beyond them as PPO does. Llama 2
used it before PPO in its later rounds.

1. :func:`best_of_n_kl`, :func:`best_of_n`: the selection and its KL
2. :func:`pick_best`, :func:`best_of_n_records`: n samples per prompt, scored by the reward model, the best finished
   one kept as a record
3. :func:`train_sft` (``rlhf_lite.sft``) on those records, LoRA on the SFT model: the stage is
   ``rlhf_lite.policy_stages.rejection_sampling_stage``, the command ``python -m rlhf_lite rejection-sampling``
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .data import render_prompt
from .models import generate
from .reward import score_responses
from .runtime import progress_bar


def best_of_n_kl(n: int) -> float:
    """Analytic KL of best-of-n sampling to the sampling policy: log n − (n − 1)/n nats (Stiennon et al.
    2020, App. G; Gao et al. 2022, §2.2). 0 for n = 1, growing like log n."""
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n(scores: Sequence[Sequence[float]], n: int) -> list[int]:
    """For each prompt's candidate scores (at least ``n`` of them), the index of the highest-scoring among
    the first ``n``: best-of-n selection against a reward model."""
    if any(len(s) < n for s in scores):
        raise ValueError(f"best_of_n needs at least n={n} candidates per prompt")
    return [max(range(n), key=lambda j: s[j]) for s in scores]


def pick_best(rewards: Sequence[Sequence[float]], finished: Sequence[Sequence[bool]]) -> list[int | None]:
    """For each prompt's n candidates (``rewards[i][j]``, ``finished[i][j]``: candidate j ended with EOS), the index
    of the highest reward among the finished ones (the first on a tie), or None when none finished: the SFT loss
    would teach EOS after an answer that was cut off."""
    out = []
    for r, f in zip(rewards, finished):
        done = [j for j in range(len(r)) if f[j]]
        out.append(max(done, key=lambda j: r[j]) if done else None)
    return out


@torch.no_grad()
def best_of_n_records(model, tokenizer, reward_model, tasks: Sequence, n: int, fmt: str = "alpaca",
                      max_new_tokens: int = 64, max_length: int = 256, seed: int = 0,
                      progress: bool = True) -> list[dict]:
    """``n`` samples (temperature 1, seeds ``seed`` … ``seed + n − 1``) from ``model`` for each task, scored by
    ``reward_model``; the best finished one (:func:`pick_best`) becomes a Dolly record ``{instruction, context,
    response, reward, prompt_id}``. Tasks whose n samples all ran out of tokens are left out."""
    if n < 1:
        raise ValueError(f"best_of_n_records: n must be at least 1, got {n}")
    prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t in tasks]
    rewards, finished, texts = [], [], []  # each [n][N]
    for s in progress_bar(range(n), desc="best-of-n samples", enabled=progress):
        gens = generate(model, tokenizer, prompts, max_new_tokens, seed=seed + s, batch_size=64)
        texts.append([g.text for g in gens])
        finished.append([g.finished for g in gens])
        rewards.append(score_responses(reward_model, tokenizer, prompts, texts[-1], finished[-1], max_length))
    picks = pick_best([[r[i] for r in rewards] for i in range(len(tasks))],
                      [[f[i] for f in finished] for i in range(len(tasks))])
    return [{"instruction": t.instruction, "context": t.context, "response": texts[j][i], "reward": rewards[j][i],
             "prompt_id": t.prompt_id} for i, (t, j) in enumerate(zip(tasks, picks)) if j is not None]
