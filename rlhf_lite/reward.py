"""Step 2 of InstructGPT: a reward model trained on rankings.

The SFT model with its softmax over words replaced by one scalar (Ouyang et al. 2022, §3.5): the
reward of (prompt, response) is a linear head on the transformer's last hidden state, read at the
last real token, the response's EOS. Trained on all C(K,2) pairs of each ranking at once with

    loss(θ) = − 1/C(K,2) · E_(x, y_w, y_l) [ log σ(r_θ(x, y_w) − r_θ(x, y_l)) ]      (eq. 1)

(we average over the pairs a ranking implies: C(K,2) of them, fewer when tied pairs are dropped), then shift
the head so that the demonstrations (reference responses) score 0 on average.

Read top to bottom: the two losses, the model, tokenization and batching, the training loop,
normalisation, then measurement (accuracy against labelers, calibration), saving/loading, and several reward models
read as one (an ensemble, Coste et al. 2023).
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from .config import LoRAConfig, RewardConfig, validate_config
from .data import encode_response
from .feedback import accuracy_against, distinct_pairs, flat_ranking, pref_probs, ranking_to_pairs
from .files import atomic_dir
from .models import (
    dropout_off,
    frozen_with_adapters,
    in_float32,
    last_token_index,
    load_base,
    pad_batch,
    position_ids_from_mask,
    transformer_body,
)
from .runtime import backward, hf_bars_off, micro_batches, optimizer_step, progress_bar, warmup_linear_schedule


# ---------------------------------------------------------------------------------------------
# 1. The losses
# ---------------------------------------------------------------------------------------------
def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss of a batch of comparisons.

    chosen_rewards, rejected_rewards: [B] rewards of the preferred and the other response of each pair.
    Returns the scalar  mean_b −log σ(r_c[b] − r_r[b])  (Stiennon et al. 2020, eq. 1; Ouyang et al.
    2022, eq. 1 with K = 2). ``logsigmoid`` keeps it finite for large margins.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(f"pairwise_loss expects two [B] tensors, got {tuple(chosen_rewards.shape)} and "
                         f"{tuple(rejected_rewards.shape)}")
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def ranking_loss(rewards: torch.Tensor, ranking: Sequence[int]) -> torch.Tensor:
    """InstructGPT's loss for one ranked prompt (Ouyang et al. 2022, eq. 1).

    rewards: [K], the reward of each of the K responses; ranking: response indices best → worst
    (a nested list is a tie, see :func:`rlhf_lite.feedback.ranking_to_pairs`). Returns the scalar

        − 1/P · Σ_{(w, l)} log σ(r_w − r_l)

    over the P (winner, loser) pairs the ranking implies: P = C(K,2) for a full ranking, fewer when ties
    are dropped (the mean is over the pairs that carry a preference). All pairs share the K
    rewards of a single forward pass: the efficiency, and the reason it does not overfit, that the
    paper gives for keeping a prompt's pairs together.
    """
    pairs = ranking_to_pairs(ranking)
    if len(flat_ranking(ranking)) != rewards.numel():
        raise ValueError(f"ranking {list(ranking)} orders {len(flat_ranking(ranking))} responses but there are "
                         f"{rewards.numel()} rewards")
    if not pairs:  # everything tied: no preference, no gradient
        return rewards.sum() * 0.0
    w, l = torch.tensor(pairs, device=rewards.device).T  # [P], [P]
    return -F.logsigmoid(rewards[w] - rewards[l]).mean()


# ---------------------------------------------------------------------------------------------
# 2. The model
# ---------------------------------------------------------------------------------------------
class RewardModel(nn.Module):
    """A causal LM's transformer body (optionally with LoRA adapters) and a scalar head.

    ``forward(input_ids [B,T], attention_mask [B,T]) -> rewards [B]`` reads the head at each row's last
    real token, so left and right padding give the same reward. ``token_values`` gives the head at
    every position ([B, T]): the shape a PPO value function needs, which InstructGPT initialised from
    the reward model. The LM head is never run (for GPT-2 it is tied to the embeddings, so it costs
    no memory either).
    """

    def __init__(self, lm: nn.Module, hidden_size: int | None = None, seed: int = 0):
        super().__init__()
        self.lm = lm
        d = hidden_size or lm.config.hidden_size
        self.head = in_float32(nn.Linear(d, 1))  # [d] -> one scalar: the only output, in float32 under autocast
        with torch.random.fork_rng(devices=[]):  # N(0, 1/(d+1)) (Stiennon et al. 2020), bias 0
            torch.manual_seed(seed)
            nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(d + 1))
        nn.init.zeros_(self.head.bias)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [B, T, d]; positions count real tokens only (padding side does not matter)."""
        return transformer_body(self.lm)(input_ids=input_ids, attention_mask=attention_mask,
                                         position_ids=position_ids_from_mask(attention_mask),
                                         use_cache=False).last_hidden_state  # no KV cache: nothing is generated

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head at every position: [B, T]."""
        return self.head(self.hidden(input_ids, attention_mask)).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.hidden(input_ids, attention_mask)  # [B, T, d]
        last = h[torch.arange(h.size(0), device=h.device), last_token_index(attention_mask)]  # [B, d]
        return self.head(last).squeeze(-1)  # [B]


def build_reward_model(lm: nn.Module, cfg: RewardConfig, lora: LoRAConfig | None = None) -> RewardModel:
    """Reward model from a (SFT) causal LM: LoRA adapters on it (``cfg.lora``) or all weights trainable,
    plus a fresh scalar head. Dropout is switched off (Huang et al. 2024): with it, the same answer gets
    a different reward on every pass, which adds noise to a loss that only sees reward differences
    (in our TinyWorld runs it learned less with dropout on, and trained slower on a CPU). ``lora``: the profile's
    adapters (default ``LoRAConfig()``)."""
    if cfg.lora:
        lm = frozen_with_adapters(lm, lora, cfg.seed, task_type=None)
    else:
        dropout_off(lm)
        for p in lm.parameters():
            p.requires_grad_(True)
    return RewardModel(lm, seed=cfg.seed)


# ---------------------------------------------------------------------------------------------
# 3. Tokenization and batching
# ---------------------------------------------------------------------------------------------
def encode_records(tokenizer, records: Sequence[dict], max_length: int) -> list[list[list[int]]]:
    """Each record's K responses as token-id lists (prompt + response [+ EOS])."""
    return [[encode_response(tokenizer, r["prompt"], resp, fin, max_length)
             for resp, fin in zip(r["responses"], r.get("finished") or [True] * len(r["responses"]))] for r in records]


def _records_loss(rm: RewardModel, enc: Sequence[list[list[int]]], records: Sequence[dict], pad_id: int):
    """Mean ranking loss of a batch of records: all their responses in one forward pass."""
    flat = [s for seqs in enc for s in seqs]
    b = {k: v.to(rm.head.weight.device) for k, v in pad_batch(flat, pad_id).items()}
    rewards = rm(**b)  # [N] for all responses of all records
    losses, acc, i = [], [], 0
    for seqs, rec in zip(enc, records):
        r = rewards[i:i + len(seqs)]
        i += len(seqs)
        losses.append(ranking_loss(r, rec["ranking"]))
        pairs = ranking_to_pairs(rec["ranking"])
        if pairs:
            w, l = torch.tensor(pairs).T
            acc += (r[w] > r[l]).tolist()
    return torch.stack(losses).mean(), acc


def split_pairs(records: Sequence[dict]) -> list[dict]:
    """The ablation's data: every (winner, loser) pair of every ranking as its own K = 2 record."""
    return [{**r, "responses": [r["responses"][w], r["responses"][l]],
             "finished": [(r.get("finished") or [True] * len(r["responses"]))[i] for i in (w, l)], "ranking": [0, 1]}
            for r in records for w, l in ranking_to_pairs(r["ranking"])]


# ---------------------------------------------------------------------------------------------
# 4. Training
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_rm(rm: RewardModel, tokenizer, records: Sequence[dict], max_length: int = 256,
                batch_size: int = 16) -> dict:
    """Mean ranking loss and pairwise accuracy against the recorded rankings (dropout off)."""
    was = rm.training
    rm.eval()
    enc = encode_records(tokenizer, records, max_length)
    total, acc = 0.0, []
    for i in range(0, len(records), batch_size):
        loss, a = _records_loss(rm, enc[i:i + batch_size], records[i:i + batch_size], tokenizer.pad_token_id)
        total += loss.item() * len(records[i:i + batch_size])
        acc += a
    rm.train(was)
    return {"loss": total / max(len(records), 1), "accuracy": sum(acc) / max(len(acc), 1)}


def train_reward_model(rm: RewardModel, tokenizer, train: Sequence[dict], cfg: RewardConfig,
                       validation: Sequence[dict] = (), progress: bool = True) -> dict:
    """Train ``rm`` on comparison records (in place) with the ranking loss.

    ``cfg.grouped`` (the InstructGPT way): a batch is ``cfg.batch_size`` prompts and all K responses of
    each go through one forward pass; the loss is eq. 1 per prompt, averaged. Otherwise (the ablation)
    every pair becomes its own example, shuffled, with as many pairs per step as the grouped run sees,
    so both runs take the same number of steps on the same pairs. Validation is always the grouped loss.
    Returns ``{"train": [{step, loss, accuracy}], "eval": [{step, loss, accuracy}], "wall_time_s", "pairs",
    "responses_forwarded"}``.
    """
    validate_config(cfg)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    n_pairs = sum(len(ranking_to_pairs(r["ranking"])) for r in train)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    data = list(train) if cfg.grouped else split_pairs(train)
    per_step = cfg.batch_size if cfg.grouped else math.ceil(len(data) / steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    enc = encode_records(tokenizer, data, cfg.max_length)
    params = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_linear_schedule(opt, cfg.warmup_steps, total)
    history: dict = {"train": [], "eval": [], "pairs": n_pairs, "responses_forwarded": 0}

    def log_eval(step: int) -> None:
        if validation:
            history["eval"].append({"step": step, **evaluate_rm(rm, tokenizer, validation, cfg.max_length)})

    rm.train()
    log_eval(0)
    step, bar = 0, progress_bar(total=total, desc="reward model", enabled=progress)
    for _ in range(cfg.epochs):
        order = list(range(len(data)))
        rng.shuffle(order)
        for i in range(0, len(order), per_step):
            idx = order[i:i + per_step]
            parts = micro_batches(idx, cfg.micro_batch_size)  # one part, unless gradients are accumulated
            what, hint = f"reward-model step {step + 1}", f"Lower RewardConfig.lr (now {cfg.lr})."
            logged, acc = 0.0, []
            for k, part in enumerate(parts):
                loss, part_acc = _records_loss(rm, [enc[j] for j in part], [data[j] for j in part],
                                               tokenizer.pad_token_id)
                if len(parts) > 1:  # the batch's loss is a mean over its prompts: weigh each part by its share
                    loss = loss * (len(part) / len(idx))
                logged, acc = logged + loss.item(), acc + part_acc
                if k + 1 < len(parts):
                    backward(loss, what, hint)
            optimizer_step(loss, params, opt, sched, cfg.grad_clip, what, hint)
            step += 1
            history["responses_forwarded"] += sum(len(enc[j]) for j in idx)
            history["train"].append({"step": step, "loss": logged, "accuracy": sum(acc) / max(len(acc), 1)})
            bar.update(1)
            bar.set_postfix(loss=f"{logged:.3f}")
            if step % cfg.eval_every == 0 or step == total:
                log_eval(step)
    bar.close()
    rm.eval()
    history["wall_time_s"] = time.time() - t0
    return history


# ---------------------------------------------------------------------------------------------
# 5. Scoring and normalisation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def score_responses(rm: RewardModel, tokenizer, prompts: Sequence[str], responses: Sequence[str],
                    finished: Sequence[bool] | None = None, max_length: int = 256, batch_size: int = 64) -> list[float]:
    """Reward of each (prompt, response); ``finished[i]`` False means the response had no EOS."""
    fin = list(finished) if finished is not None else [True] * len(responses)
    seqs = [encode_response(tokenizer, p, r, f, max_length) for p, r, f in zip(prompts, responses, fin)]
    was = rm.training
    rm.eval()
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        b = {k: v.to(rm.head.weight.device)
             for k, v in pad_batch(seqs[i:i + batch_size], tokenizer.pad_token_id).items()}
        out += rm(**b).float().tolist()
    rm.train(was)
    return out


@torch.no_grad()
def normalize_rewards(rm: RewardModel, tokenizer, prompts: Sequence[str], references: Sequence[str],
                      max_length: int = 256) -> float:
    """Shift the head's bias so the reference (demonstration) responses score 0 on average, as
    InstructGPT did before RL (the reward's offset is arbitrary: the loss sees only differences).
    Returns the shift that was subtracted."""
    shift = sum(score_responses(rm, tokenizer, prompts, references, max_length=max_length)) / len(references)
    rm.head.bias -= shift
    return shift


def record_scores(rm: RewardModel, tokenizer, max_length: int = 256):
    """A judge for :func:`rlhf_lite.feedback.expected_agreement`: the RM's rewards of a record's responses."""
    def judge(rec: dict) -> list[float]:
        return score_responses(rm, tokenizer, [rec["prompt"]] * len(rec["responses"]), rec["responses"],
                               rec.get("finished"), max_length)
    return judge


# ---------------------------------------------------------------------------------------------
# 6. Measurement: accuracy against labelers, calibration
# ---------------------------------------------------------------------------------------------
def rm_accuracy(rm: RewardModel, tokenizer, world, records: Sequence[dict], labelers, max_length: int = 256) -> float:
    """Expected pairwise accuracy of the RM against ``labelers``' choices on the distinct-response pairs of
    ``records``: mean over pairs and labelers of P(labeler picks the pair's higher-reward response)."""
    return accuracy_against(world, records, record_scores(rm, tokenizer, max_length), labelers)


def variance_split(groups: Sequence[Sequence[float]]) -> dict:
    """How much of a score's variance is *which prompt* and how much is *which answer*.

    groups: one list of scores per prompt (several answers each). With m_p a prompt's mean and N all scores,

        within  = (1/N) Σ_p Σ_i (s_pi − m_p)²,      between = (1/N) Σ_p n_p (m_p − m)²,

    so within + between is the scores' total (population) variance. ``baseline_share`` = between / total: the
    share of a single sample's variance that a perfect per-prompt baseline (PPO's critic at the prompt) removes.
    Without it, an advantage mostly says whether the prompt was an easy one."""
    scores = [s for g in groups for s in g]
    n, m = len(scores), sum(scores) / len(scores)
    means = [sum(g) / len(g) for g in groups]
    within = sum((s - mp) ** 2 for g, mp in zip(groups, means) for s in g) / n
    between = sum(len(g) * (mp - m) ** 2 for g, mp in zip(groups, means)) / n
    return {"within": within, "between": between, "baseline_share": between / (within + between)}


def calibration(rm: RewardModel, tokenizer, world, records: Sequence[dict], labelers, bins: int = 8,
                max_length: int = 256) -> list[dict]:
    """Reliability table: pairs binned by the RM's predicted P(a ≻ b) = σ(r_a − r_b), against how often
    the ``labelers`` actually prefer a (in expectation). A calibrated RM lies on the diagonal."""
    judge = record_scores(rm, tokenizer, max_length)
    pred, true = [], []
    for rec in records:
        s = judge(rec)
        probs = [sum(p) / len(p) for p in zip(*[pref_probs(world, rec, lab) for lab in labelers])]
        for (i, j), p in zip(distinct_pairs(rec), probs):
            a, b = (i, j) if s[i] >= s[j] else (j, i)  # orient each pair so the RM's prediction is >= 0.5
            pred.append(1 / (1 + math.exp(-(s[a] - s[b]))))
            true.append(p if a == i else 1 - p)
    edges = [0.5 + 0.5 * k / bins for k in range(bins + 1)]
    table = []
    for lo, hi in zip(edges, edges[1:]):
        sel = [(p, t) for p, t in zip(pred, true) if lo <= p < hi or (hi == 1.0 and p == 1.0)]
        if sel:
            table.append({"predicted": sum(p for p, _ in sel) / len(sel), "observed": sum(t for _, t in sel) / len(sel),
                          "n": len(sel)})
    return table


# ---------------------------------------------------------------------------------------------
# 7. Saving and loading
# ---------------------------------------------------------------------------------------------
def save_reward_model(rm: RewardModel, path: str | Path, base: str | Path, extra: dict | None = None) -> None:
    """Write the adapters (or the full model), the head and ``reward_model.json`` (base model, shift)."""
    lora = hasattr(rm.lm, "peft_config")
    with atomic_dir(path, "reward") as tmp, hf_bars_off():
        rm.lm.save_pretrained(tmp / ("adapter" if lora else "model"))
        save_file({k: v.detach().cpu().contiguous() for k, v in rm.head.state_dict().items()},
                  str(tmp / "head.safetensors"))
        (tmp / "reward_model.json").write_text(json.dumps({"base": str(base), "lora": lora, **(extra or {})}, indent=1))


def same_tokenizer(a, b) -> bool:
    """True when two tokenizers turn text into the same ids (a reward model must read the policy's tokens)."""
    return a is b or (a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id)


def load_reward_model(path: str | Path, device: str = "cpu") -> tuple[RewardModel, object]:
    """Load what :func:`save_reward_model` wrote. Returns (reward model in eval mode, tokenizer)."""
    path = Path(path)
    meta_file = path / "reward_model.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved reward model (no reward_model.json); train one with "
                                "rlhf_lite.reward.train_reward_model and save_reward_model")
    meta = json.loads(meta_file.read_text())
    lm, tok = load_base(meta["base"], device=device)
    if meta["lora"]:
        lm = PeftModel.from_pretrained(lm, str(path / "adapter"))
    else:
        lm = AutoModelForCausalLM.from_pretrained(str(path / "model"), dtype=torch.float32).to(device)
    rm = RewardModel(lm)
    rm.head.load_state_dict(load_file(str(path / "head.safetensors")))
    return rm.to(device).eval(), tok


# ---------------------------------------------------------------------------------------------
# 8. Several reward models as one (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization")
# ---------------------------------------------------------------------------------------------
# PPO finds whatever its reward model gets wrong (Gao et al. 2022); members trained differently get different answers
# wrong, so their mean errs less, and their minimum (worst-case optimisation) pays an answer only what every member
# agrees it is worth. A RewardEnsemble has a RewardModel's interface (``hidden``, ``head``, ``forward``), so PPO's
# rollout reads its scores and the critic's features unchanged: ``python -m rlhf_lite ppo --reward-model A B --combine
# min``.
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
