"""From rlhf_lite to TRL: each stage run by its maintained counterpart, on the same data (notebook 08).

| rlhf_lite                                 | TRL (``pip install "rlhf-lite[trl]"``)                  |
|-------------------------------------------|---------------------------------------------------------|
| ``sft.train_sft`` (label mask on prompts)  | ``SFTTrainer`` on our tokens, ``completion_only_loss=True`` |
| ``reward.train_reward_model`` (C(K,2))     | ``RewardTrainer`` on (prompt, chosen, rejected) pairs   |
| ``dpo.train_dpo``                          | ``DPOTrainer`` with a LoRA ``peft_config`` and no ``ref_model`` (adapters
off = reference) |
| ``grpo.train_grpo``                        | ``GRPOTrainer`` with our reward model as a reward function |
| ``ppo.train_ppo``                          | none: PPO left TRL's maintained trainers (1.10+); GRPO is the closest |

The functions here only translate: our records into TRL's dataset formats (pure functions, no TRL needed) and our
configs into TRL's, so that both sides train the same model on the same data with the same LoRA rank, learning
rate, batch size and number of steps. Measuring the results is left to our own tools, the same for both sides.
TRL is imported lazily: without it everything but the ``trl_*`` trainers works, and those say how to install it.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Sequence

import torch

from ..config import LoRAConfig
from ..data import render_prompt
from ..feedback import ranking_to_pairs
from ..reward import score_responses

TRL_HINT = ("TRL is not installed: `pip install \"rlhf-lite[trl]\"` (or `pip install \"trl>=1.10\"`), then restart the "
            "kernel. Everything before this point in the course runs without it.")


def trl_version() -> str | None:
    """TRL's version, or None when it is not installed."""
    try:
        import trl
    except ImportError:
        return None
    return trl.__version__


def require_trl():
    """Import TRL or stop with :data:`TRL_HINT`."""
    try:
        import trl
    except ImportError:
        raise ImportError(TRL_HINT) from None
    return trl


# ---------------------------------------------------------------------------------------------
# 1. Our data in TRL's formats
# ---------------------------------------------------------------------------------------------
def sft_rows(records: Sequence[dict], tokenizer, fmt: str = "alpaca") -> list[dict]:
    """Dolly records -> TRL's prompt/completion rows. SFTTrainer puts the loss on the completion only
    (``completion_only_loss``) and appends EOS to it: the same label mask as ``build_sft_example``."""
    return [{"prompt": render_prompt(tokenizer, r["instruction"], r.get("context", ""), fmt),
             "completion": r["response"]}
            for r in records]


def sft_token_rows(records: Sequence[dict], tokenizer, cfg) -> list[dict]:
    """Dolly records -> TRL's already-tokenized rows ``{"input_ids", "completion_mask"}``: token for token the
    examples ``train_sft`` trains on (``cfg``: our SFTConfig, for ``max_length`` and the prompt format), EOS included,
    mask 1 where our labels are kept. ``trl_sft`` trains on these rather than on :func:`sft_rows`' text: TRL tokenizes
    prompt + completion as one string, ours tokenizes the response alone, and with a tokenizer that puts a space
    before a text tokenized alone (the tiny model's does) the response's first token differs. The two sides would
    then learn, and be measured on, different tokens at the very position that starts every answer."""
    from ..sft import tokenize_records

    return [{"input_ids": list(e["input_ids"]), "completion_mask": [int(l != -100) for l in e["labels"]]}
            for e in tokenize_records(tokenizer, records, cfg)]


def preference_rows(records: Sequence[dict]) -> list[dict]:
    """Ranked comparison records -> TRL's explicit-prompt preference rows ``{"prompt", "chosen", "rejected"}``:
    one row per (winner, loser) pair of each ranking, all C(K,2) of them, best pairs first, ties skipped.
    (TRL appends EOS to every answer; our records also hold answers that never ended, which lose that mark.)"""
    return [{"prompt": r["prompt"], "chosen": r["responses"][w], "rejected": r["responses"][l]}
            for r in records for w, l in ranking_to_pairs(r["ranking"])]


def lora_config(lora: LoRAConfig | None = None, task_type: str = "CAUSAL_LM"):
    """peft's LoraConfig for TRL from our ``LoRAConfig`` (default ``LoRAConfig()``, the same adapters our trainers
    use), for TRL's ``peft_config=``."""
    from peft import LoraConfig

    lora = lora or LoRAConfig()
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.targets),
                      task_type=task_type,
                      fan_in_fan_out=True)  # GPT-2's Conv1D stores weights transposed


def _args(cls, out: str, *, lr: float, batch_size: int, steps: int, warmup: int, seed: int, grad_clip: float = 1.0,
          progress: bool = False, **extra):
    """A TRL config with the training-loop settings of ours: AdamW, linear warm-up and decay, float32 (TRL's configs
    default to bf16 autocast, which on a CPU without bf16 units is several times slower, and ours run in float32),
    no gradient checkpointing, no saving, no logging service, CPU unless there is a GPU."""
    return cls(output_dir=out, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, learning_rate=lr,
               lr_scheduler_type=extra.pop("lr_scheduler_type", "linear"), warmup_steps=warmup, max_steps=steps,
               max_grad_norm=grad_clip, weight_decay=0.0, optim="adamw_torch", logging_steps=max(1, steps // 20),
               report_to="none", save_strategy="no", eval_strategy="no", seed=seed, data_seed=seed,
               use_cpu=not torch.cuda.is_available(), disable_tqdm=not progress, bf16=False, fp16=False,
               gradient_checkpointing=False, **extra)


@contextlib.contextmanager
def _workdir():
    with tempfile.TemporaryDirectory(prefix="rlhf-lite-trl-") as d:
        yield d


def _train(trainer) -> dict:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # quiet: the log stays in trainer.state.log_history
    t0 = time.time()
    trainer.train()
    return {"seconds": time.time() - t0, "log": [x for x in trainer.state.log_history if "loss" in x or "reward" in x]}


# ---------------------------------------------------------------------------------------------
# 2. The four trainers, configured like ours
# ---------------------------------------------------------------------------------------------
def trl_sft(model, tokenizer, records: Sequence[dict], cfg, steps: int, progress: bool = False,
            lora: LoRAConfig | None = None):
    """SFTTrainer with completion-only loss on ``records`` (Dolly format), tokenized exactly as ours
    (:func:`sft_token_rows`), LoRA as ``cfg`` (our SFTConfig) says. Returns (the trained peft model,
    {"seconds", "log"})."""
    from datasets import Dataset

    trl = require_trl()
    with _workdir() as out:
        args = _args(trl.SFTConfig, out, lr=cfg.lr, batch_size=cfg.batch_size, steps=steps, warmup=cfg.warmup_steps,
                     seed=cfg.seed, grad_clip=cfg.grad_clip, progress=progress, max_length=cfg.max_length,
                     completion_only_loss=True, packing=False)
        trainer = trl.SFTTrainer(model=model, args=args,
                                 train_dataset=Dataset.from_list(sft_token_rows(records, tokenizer, cfg)),
                                 processing_class=tokenizer, peft_config=lora_config(lora))
        info = _train(trainer)
    return trainer.model.eval(), info


def trl_reward(model_dir: str, tokenizer, records: Sequence[dict], cfg, progress: bool = False,
               lora: LoRAConfig | None = None):
    """RewardTrainer on every ranked pair of ``records``, with as many pairs per step as our grouped batches see on
    average, and as many steps (one epoch of ``cfg.batch_size`` prompts each). Returns (model, info), the model a
    ``GPT2ForSequenceClassification`` with LoRA and a fresh one-output head."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    trl = require_trl()
    rows = preference_rows(records)
    steps = -(-len(records) // cfg.batch_size)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    with _workdir() as out:
        args = _args(trl.RewardConfig, out, lr=cfg.lr, batch_size=-(-len(rows) // steps), steps=steps,
                     warmup=cfg.warmup_steps, seed=cfg.seed, grad_clip=cfg.grad_clip, progress=progress,
                     max_length=cfg.max_length, center_rewards_coefficient=None, disable_dropout=True)
        trainer = trl.RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                    processing_class=tokenizer,
                                    peft_config=lora_config(lora, "SEQ_CLS"))
        info = _train(trainer)
    return trainer.model.eval(), {**info, "pairs": len(rows), "steps": steps}


def trl_reward_judge(model, tokenizer, batch_size: int = 32):
    """A judge for :func:`rlhf_lite.feedback.expected_agreement` from TRL's reward model: the score of prompt +
    answer + EOS, as RewardTrainer formats its pairs."""
    @torch.no_grad()
    def judge(rec: dict) -> list[float]:
        texts = [rec["prompt"] + r + tokenizer.eos_token for r in rec["responses"]]
        side, tokenizer.padding_side = tokenizer.padding_side, "right"
        try:
            enc = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
        finally:
            tokenizer.padding_side = side
        return model(**enc).logits[:, 0].float().tolist()
    return judge


def trl_dpo(model, tokenizer, records: Sequence[dict], cfg, progress: bool = False, lora: LoRAConfig | None = None):
    """DPOTrainer (sigmoid loss) on every ranked pair of ``records``, LoRA policy with no ``ref_model`` (TRL then
    disables the adapters for the reference, as we do), pairs per step and steps as in our grouped batches.
    Returns (the trained peft model, info)."""
    from datasets import Dataset

    trl = require_trl()
    rows = preference_rows(records)
    steps = -(-len(records) // cfg.batch_size) * cfg.epochs
    with _workdir() as out:
        args = _args(trl.DPOConfig, out, lr=cfg.lr, batch_size=-(-len(rows) * cfg.epochs // steps), steps=steps,
                     warmup=cfg.warmup_steps, seed=cfg.seed, grad_clip=cfg.grad_clip, progress=progress,
                     beta=cfg.beta, max_length=cfg.max_length, disable_dropout=True)
        trainer = trl.DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer,
                                 peft_config=lora_config(lora))
        info = _train(trainer)
    return trainer.model.eval(), {**info, "pairs": len(rows), "steps": steps}


def rm_reward_function(reward_model, tokenizer, no_eos_penalty: float | None = -1.0):
    """Our reward model as a GRPOTrainer reward function: the score of prompt + completion, read at its EOS, or
    ``no_eos_penalty`` when the completion never ended (TRL passes the completion's token ids, EOS included)."""
    def reward(prompts, completions, completion_ids, **_):
        finished = [bool(ids) and ids[-1] == tokenizer.eos_token_id for ids in completion_ids]
        scores = score_responses(reward_model, tokenizer, list(prompts), list(completions), finished)
        return [s if f or no_eos_penalty is None else no_eos_penalty for s, f in zip(scores, finished)]

    reward.__name__ = "reward_model"
    return reward


def trl_grpo(model, tokenizer, reward_model, prompts: Sequence[str], cfg, progress: bool = False,
             lora: LoRAConfig | None = None):
    """GRPOTrainer against our reward model with our GRPOConfig's numbers: G generations per prompt,
    ``prompts_per_step`` × G completions per generation round, reused for ``epochs`` passes in minibatches of
    ``minibatch_size`` (TRL's num_iterations and steps_per_generation), β, ε, per-answer length normalisation
    (``loss_type="grpo"``), group scaling, constant learning rate. Returns (the trained peft model, info)."""
    from datasets import Dataset

    trl = require_trl()
    per_gen = cfg.prompts_per_step * cfg.group_size // cfg.minibatch_size
    steps = cfg.steps * per_gen * cfg.epochs  # TRL counts optimizer steps
    with _workdir() as out:
        args = _args(trl.GRPOConfig, out, lr=cfg.lr, batch_size=cfg.minibatch_size, steps=steps, warmup=0,
                     seed=cfg.seed,
                     grad_clip=cfg.grad_clip, progress=progress, lr_scheduler_type="constant",
                     num_generations=cfg.group_size, steps_per_generation=per_gen, num_iterations=cfg.epochs,
                     max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, top_k=0,
                     beta=cfg.kl_coef, epsilon=cfg.clip_range, loss_type="grpo",
                     scale_rewards="group" if cfg.scale_rewards else "none", disable_dropout=True)
        trainer = trl.GRPOTrainer(model=model,
                                  reward_funcs=rm_reward_function(reward_model, tokenizer, cfg.no_eos_penalty),
                                  args=args, train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                                  processing_class=tokenizer, peft_config=lora_config(lora))
        info = _train(trainer)
    return trainer.model.eval(), {**info, "steps": steps}
