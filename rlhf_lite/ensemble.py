"""Reward-model ensembles (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization"): several
reward models trained on the same comparisons, read as one reward. PPO finds whatever its reward model gets wrong
(Gao et al. 2022); members trained differently get different answers wrong, so their mean errs less, and their
minimum (worst-case optimisation) pays an answer only what every member agrees it is worth.

1. :func:`combine_rewards`: the members' rewards [..., K] -> one reward [...] (mean or minimum)
2. :class:`RewardEnsemble`: the members as one module with a :class:`~rlhf_lite.reward.RewardModel`'s interface
   (``hidden``, ``head``, ``forward``), so PPO's rollout reads its scores and the critic's features unchanged
3. :func:`load_reward_ensemble`: saved reward models (``reward --out``) as an ensemble; the command is
   ``python -m rlhf_lite ppo --reward-model A B C --combine min``
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .reward import RewardModel, load_reward_model, same_tokenizer

COMBINE = ("mean", "min")


def combine_rewards(scores: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """The ensemble's reward from its K members' rewards ``scores`` [..., K] -> [...] (Coste et al. 2023):

    - ``"mean"``: r = (1/K) Σ_k r_k, mean optimisation;
    - ``"min"``: r = min_k r_k, worst-case optimisation (WCO).
    """
    if how == "mean":
        return scores.mean(-1)
    if how == "min":
        return scores.min(-1).values
    raise ValueError(f"combine_rewards: how={how!r}; choose one of {', '.join(COMBINE)}")


class EnsembleHead(nn.Module):
    """The members' scalar heads side by side: features [..., K·d] (the members' hidden states, concatenated in
    member order) -> the combined reward [..., 1]. ``in_features`` (K·d) and ``weight`` (the first head's, for its
    device) are what PPO reads from a reward model's head."""

    def __init__(self, heads: Sequence[nn.Linear], how: str):
        super().__init__()
        self.heads, self.how = nn.ModuleList(heads), how
        self.d = heads[0].in_features
        self.in_features = self.d * len(heads)

    @property
    def weight(self) -> torch.Tensor:
        return self.heads[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([h(x[..., k * self.d:(k + 1) * self.d]) for k, h in enumerate(self.heads)], -1)  # [..., K]
        return combine_rewards(s, self.how).unsqueeze(-1)  # [..., 1]


class RewardEnsemble(nn.Module):
    """K reward models as one. ``forward(input_ids [B,T], attention_mask [B,T]) -> rewards [B]`` combines the
    members' rewards (:func:`combine_rewards`); ``hidden`` gives their last hidden states concatenated [B, T, K·d],
    which ``head`` turns into the same reward at any position, so a PPO critic on these features sees what every
    member sees. The members must share a tokenizer (all trained from the same SFT model)."""

    def __init__(self, members: Sequence[RewardModel], how: str = "mean"):
        super().__init__()
        if how not in COMBINE:
            raise ValueError(f"RewardEnsemble: how={how!r}; choose one of {', '.join(COMBINE)}")
        if not members:
            raise ValueError("RewardEnsemble needs at least one reward model")
        if len({m.head.in_features for m in members}) != 1:
            raise ValueError("RewardEnsemble: the members' hidden sizes differ; train them all from the same SFT model")
        self.members, self.how = nn.ModuleList(members), how
        self.head = EnsembleHead([m.head for m in members], how)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.hidden(input_ids, attention_mask) for m in self.members], -1)  # [B, T, K·d]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return combine_rewards(torch.stack([m(input_ids, attention_mask) for m in self.members], -1), self.how)  # [B]


def load_reward_ensemble(paths: Sequence[str | Path], how: str = "mean",
                         device: str = "cpu") -> tuple[RewardEnsemble, object]:
    """Saved reward models (:func:`rlhf_lite.reward.save_reward_model` folders) as one :class:`RewardEnsemble`, in
    eval mode. Returns (ensemble, tokenizer); a member whose tokenizer differs from the first's is refused."""
    if len(paths) < 2:
        raise ValueError(f"load_reward_ensemble: an ensemble needs at least two reward models, got {len(paths)}")
    members, tok = [], None
    for path in paths:
        rm, t = load_reward_model(path, device=device)
        if tok is not None and not same_tokenizer(t, tok):
            raise ValueError(f"reward model {path} uses another tokenizer than {paths[0]}; an ensemble's members must "
                             "all be trained from the same SFT model")
        members.append(rm)
        if tok is None:
            tok = t
    return RewardEnsemble(members, how).eval(), tok
