"""Rejection-sampling fine-tuning (Touvron et al. 2023, Llama 2, §3.2.3): sample n answers to each training prompt
from the SFT model, keep the one the reward model scores highest, and fine-tune on the kept answers with the SFT
loss. It is best-of-n distilled into one sample: the policy learns answers of the kind the reward model was trained
to rank (the SFT model's own), where best-of-n's gold follows its reward, instead of searching beyond them as PPO
does. Llama 2 used it before PPO in its later rounds.

1. :func:`best_of_n_records`: n samples per prompt, scored by the reward model, the best one kept as a record
2. :func:`train_sft` (``rlhf_lite.sft``) on those records, LoRA on the SFT model: the stage is
   ``rlhf_lite.stages.rejection_sampling_stage``, the command ``python -m rlhf_lite rejection-sampling``
"""

from __future__ import annotations

from typing import Sequence

import torch

from .data import render_prompt
from .models import generate
from .reward import score_responses
from .runtime import progress_bar


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
