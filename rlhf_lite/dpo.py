"""Direct Preference Optimization: the policy learns from the comparisons themselves, no reward model, no RL.

Rafailov et al. (2023) show that the KL-regularised objective PPO maximises, E[r(x, y)] − β KL(π ‖ π_ref),
has the closed-form optimum π*(y|x) ∝ π_ref(y|x) exp(r(x, y)/β). Turned around, every policy defines an
*implicit reward* r̂(x, y) = β log π(y|x)/π_ref(y|x) (plus a term that cancels within a pair), and the
Bradley–Terry loss of the reward model (eq. 1 of InstructGPT) can be written directly in the policy:

    L_DPO = −E[ log σ( β (log π(y_w|x) − log π_ref(y_w|x)) − β (log π(y_l|x) − log π_ref(y_l|x)) ) ]   (DPO eq. 7)

Read top to bottom: the loss (a pure function), sequence log-probs, the training loop on the same
comparison records the reward model used (all C(K,2) pairs of a prompt in one batch element), and the
implicit reward model's accuracy against the labelers, measured like the explicit one's.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .config import DPOConfig, LoRAConfig, validate_config
from .data import encode_response
from .feedback import accuracy_against, ranking_to_pairs
from .models import frozen_with_adapters, pad_batch, position_ids_from_mask, transformer_body
from .runtime import backward, micro_batches, optimizer_step, progress_bar, warmup_linear_schedule


# ---------------------------------------------------------------------------------------------
# 1. The loss
# ---------------------------------------------------------------------------------------------
def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """The DPO loss of a batch of B preference pairs (Rafailov et al. 2023, eq. 7).

    Each argument is [B]: the log-probability of the whole chosen (y_w) or rejected (y_l) response, summed
    over its tokens (EOS included), under the policy π or the frozen reference π_ref (the SFT model).

        r̂_w = β (log π(y_w) − log π_ref(y_w)),   r̂_l = β (log π(y_l) − log π_ref(y_l))      (implicit rewards)
        loss = mean_B −log σ(r̂_w − r̂_l)

    Returns (loss, stats) with stats (detached): ``chosen_rewards`` [B], ``rejected_rewards`` [B],
    ``margins`` [B] = r̂_w − r̂_l, and ``accuracy``: the share of pairs with a positive margin, ties counted
    as half (at the start the policy *is* the reference, every margin is 0 and the accuracy is 0.5).
    """
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)  # [B]
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)  # [B]
    margins = chosen - rejected  # [B]
    loss = -F.logsigmoid(margins).mean()
    accuracy = pair_correct(margins).mean()
    return loss, {"chosen_rewards": chosen.detach(), "rejected_rewards": rejected.detach(), "margins": margins.detach(),
                  "accuracy": accuracy.detach()}


def pair_correct(margins: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 if the implicit reward prefers the chosen answer, 0 if the rejected one, ½ for a tie. [B] -> [B]."""
    return (margins > 0).float() + 0.5 * (margins == 0).float()


# ---------------------------------------------------------------------------------------------
# 2. Sequence log-probabilities
# ---------------------------------------------------------------------------------------------
def encode_pairs_batch(tokenizer, records: Sequence[dict], max_length: int) -> tuple[dict, list[int]]:
    """Every response of every record as prompt + response (+ EOS if it ended), right-padded to [N, T], with
    ``response_mask`` [N, T] = 1 on the response tokens (EOS included). Also each record's response count."""
    seqs, n_resp, counts = [], [], []
    for rec in records:
        fin = rec.get("finished") or [True] * len(rec["responses"])
        for resp, f in zip(rec["responses"], fin):
            ids = encode_response(tokenizer, rec["prompt"], resp, f, max_length)
            n = len(tokenizer(resp, add_special_tokens=False)["input_ids"]) + int(f)
            seqs.append(ids)
            n_resp.append(min(n, len(ids) - 1))  # the first token is never predicted: keep ≥ 1 prompt token
        counts.append(len(rec["responses"]))
    batch = pad_batch(seqs, tokenizer.pad_token_id)
    resp = torch.zeros_like(batch["attention_mask"])
    for i, (s, n) in enumerate(zip(seqs, n_resp)):
        resp[i, len(s) - n:len(s)] = 1
    return {**batch, "response_mask": resp}, counts


def sequence_logps(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor) -> torch.Tensor:
    """log π(response | prompt) of each row: the sum over response tokens of the log-probability the model
    gives the token at the position before it. input_ids/attention_mask/response_mask: [N, T] -> [N].

    The LM head runs only at the positions that predict a response token: the prompts (few-shot examples
    included) are most of each row, and a full-vocabulary softmax over them would cost most of the time and
    memory while contributing nothing to the sum.
    """
    h = transformer_body(lm)(input_ids=input_ids, attention_mask=attention_mask,
                             # [N, T, d]
                             position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    predicts = response_mask[:, 1:].bool()  # [N, T-1]: position t predicts response token t+1
    logits = lm.get_output_embeddings()(h[:, :-1][predicts]).float()  # [n_tokens, V]
    logp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:][predicts][:, None]).squeeze(-1)  # [n_tokens]
    rows = predicts.nonzero()[:, 0]  # the row of each response token
    return torch.zeros(input_ids.size(0), dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)


def batch_logps(lm, batch: dict, reference: bool = False) -> torch.Tensor:
    """``sequence_logps`` of an encoded batch under the policy, or (``reference=True``) under the same model with
    its LoRA adapters disabled and no gradient: the SFT model, never copied."""
    dev = next(lm.parameters()).device
    b = {k: v.to(dev) for k, v in batch.items()}
    with lm.disable_adapter() if reference else contextlib.nullcontext(), torch.no_grad() if reference \
            else contextlib.nullcontext():
        return sequence_logps(lm, b["input_ids"], b["attention_mask"], b["response_mask"])


def records_loss(lm, tokenizer, records: Sequence[dict], cfg: DPOConfig) -> tuple[torch.Tensor, dict]:
    """DPO on a batch of ranked records: each record's K responses go through the policy and the reference once,
    every (winner, loser) pair of its ranking enters ``dpo_loss``, and the per-record losses are averaged (a
    prompt counts once however large its K, as for the reward model). Returns (loss, stats over all pairs)."""
    batch, counts = encode_pairs_batch(tokenizer, records, cfg.max_length)
    pol, ref = batch_logps(lm, batch), batch_logps(lm, batch, reference=True)  # [N], [N]
    losses, stats, start = [], [], 0
    for rec, k in zip(records, counts):
        pairs = ranking_to_pairs(rec["ranking"])
        if pairs:
            w, l = (torch.tensor(x) + start for x in zip(*pairs))
            loss, s = dpo_loss(pol[w], pol[l], ref[w], ref[l], cfg.beta)
            losses.append(loss)
            stats.append(s)
        start += k
    if not losses:  # every pair of the batch tied: no preference to learn from, a zero loss that still backpropagates
        empty = pol.new_zeros(0)
        return pol.sum() * 0.0, {"chosen_rewards": empty, "rejected_rewards": empty, "margins": empty,
                                 "accuracy": pol.new_tensor(float("nan"))}
    cat = {k: torch.cat([s[k] for s in stats]) for k in ("chosen_rewards", "rejected_rewards", "margins")}
    return torch.stack(losses).mean(), {**cat, "accuracy": pair_correct(cat["margins"]).mean()}


# ---------------------------------------------------------------------------------------------
# 3. Training
# ---------------------------------------------------------------------------------------------
def build_dpo_policy(sft_model, cfg: DPOConfig, lora: LoRAConfig | None = None):
    """LoRA adapters (``lora``: the profile's, default ``LoRAConfig()``) on the SFT model, dropout off: with
    adapters on it is π, with them disabled π_ref."""
    return frozen_with_adapters(sft_model, lora, cfg.seed)


@torch.no_grad()
def evaluate_dpo(lm, tokenizer, records: Sequence[dict], cfg: DPOConfig, batch_size: int = 16) -> dict:
    """Mean DPO loss, implicit-reward accuracy on the records' ranked pairs, and mean chosen/rejected implicit
    rewards (dropout is off throughout, so no mode switch is needed)."""
    loss, n, acc, chosen, rejected = 0.0, 0, [], [], []
    for i in range(0, len(records), batch_size):
        part = records[i:i + batch_size]
        l, s = records_loss(lm, tokenizer, part, cfg)
        loss, n = loss + l.item() * len(part), n + len(part)
        acc.append(pair_correct(s["margins"]))
        chosen.append(s["chosen_rewards"]), rejected.append(s["rejected_rewards"])
    return {"loss": loss / max(n, 1), "accuracy": torch.cat(acc).mean().item(),
            "chosen_reward": torch.cat(chosen).mean().item(), "rejected_reward": torch.cat(rejected).mean().item()}


def train_dpo(lm, tokenizer, train: Sequence[dict], cfg: DPOConfig, validation: Sequence[dict] = (),
              progress: bool = True, callback=None) -> dict:
    """Train the LoRA policy ``lm`` (from :func:`build_dpo_policy`) with DPO on comparison records, in place.

    A step takes ``cfg.batch_size`` prompts with all their responses (the reward model's grouped batching).
    Logged every step: loss, implicit-reward accuracy, mean chosen and rejected implicit rewards, margin;
    every ``cfg.eval_every`` steps the same on ``validation``. ``callback(step)`` runs after each evaluation.

    Why the chosen reward often goes *down* (trl#800): the loss only sees the margin r̂_w − r̂_l. Both responses
    are samples of the SFT model, so they share most of their tokens' habits; pushing the rejected one down
    drags the chosen one with it, and probability mass moves to responses that are in neither (often shorter
    or more typical ones). A falling chosen reward with a growing margin is DPO working as designed, not a bug.
    Returns ``{"train": [...], "eval": [...], "pairs", "wall_time_s"}``.
    """
    validate_config(cfg)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    data = list(train[: cfg.n_prompts] if cfg.n_prompts else train)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = warmup_linear_schedule(opt, cfg.warmup_steps, total)
    history = {"train": [], "eval": [], "pairs": sum(len(ranking_to_pairs(r["ranking"])) for r in data)}

    def log_eval(step: int) -> None:
        if validation:
            history["eval"].append({"step": step, **evaluate_dpo(lm, tokenizer, validation, cfg)})
        if callback is not None:
            callback(step)

    log_eval(0)
    step, bar = 0, progress_bar(total=total, desc="DPO", enabled=progress)
    for _ in range(cfg.epochs):
        order = list(range(len(data)))
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            batch = [data[j] for j in order[i:i + cfg.batch_size]]
            parts = micro_batches(batch, cfg.micro_batch_size)  # one part, unless gradients are accumulated
            ranked = [sum(bool(ranking_to_pairs(r["ranking"])) for r in part) for part in parts]  # records with a pair
            what, hint = f"DPO step {step + 1}", f"Lower DPOConfig.lr (now {cfg.lr}) or beta (now {cfg.beta})."
            logged, stats = 0.0, []
            for k, part in enumerate(parts):
                loss, s = records_loss(lm, tokenizer, part, cfg)
                if len(parts) > 1:  # the loss is a mean over the batch's ranked records: weigh each part by its share
                    loss = loss * (ranked[k] / max(sum(ranked), 1))
                logged = logged + loss.item()
                stats.append(s)
                if k + 1 < len(parts):
                    backward(loss, what, hint)
            optimizer_step(loss, params, opt, sched, cfg.grad_clip, what, hint)
            s = {name: torch.cat([p[name] for p in stats])
                 for name in ("chosen_rewards", "rejected_rewards", "margins")}
            step += 1
            history["train"].append({"step": step, "loss": logged, "accuracy": pair_correct(s["margins"]).mean().item(),
                                     "chosen_reward": s["chosen_rewards"].mean().item(),
                                     "rejected_reward": s["rejected_rewards"].mean().item(),
                                     "margin": s["margins"].mean().item()})
            bar.update(1)
            bar.set_postfix(loss=f"{logged:.3f}", acc=f"{history['train'][-1]['accuracy']:.2f}")
            if step % cfg.eval_every == 0 or step == total:
                log_eval(step)
    bar.close()
    history["wall_time_s"] = time.time() - t0
    return history


# ---------------------------------------------------------------------------------------------
# 4. The implicit reward model, measured like the explicit one
# ---------------------------------------------------------------------------------------------
def implicit_reward_judge(lm, tokenizer, cfg: DPOConfig):
    """A judge for :func:`rlhf_lite.feedback.expected_agreement`: r̂ = β (log π − log π_ref) of a record's responses."""
    @torch.no_grad()
    def judge(rec: dict) -> list[float]:
        batch, _ = encode_pairs_batch(tokenizer, [rec], cfg.max_length)
        return (cfg.beta * (batch_logps(lm, batch) - batch_logps(lm, batch, reference=True))).tolist()
    return judge


def implicit_reward_accuracy(lm, tokenizer, world, records: Sequence[dict], labelers, cfg: DPOConfig) -> float:
    """Expected pairwise accuracy of the implicit reward against ``labelers`` on ``records``' distinct pairs:
    the number :func:`rlhf_lite.reward.rm_accuracy` gives for the explicit reward model."""
    return accuracy_against(world, records, implicit_reward_judge(lm, tokenizer, cfg), labelers)
