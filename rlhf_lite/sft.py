"""Step 1 of InstructGPT: supervised fine-tuning on demonstrations, with LoRA and a response-only loss.

The loop reads top to bottom: tokenize the demonstrations (``rlhf_lite.data``), then for each batch
compute next-token cross-entropy on the response tokens only, step, and every ``eval_every`` steps
measure validation loss and log a few sample generations.
"""
from __future__ import annotations

import math
import random
import time
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from peft import prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

from .config import LoRAConfig, SFTConfig, validate_config
from .data import IGNORE_INDEX, SFTCollator, TruncationWarning, length_grouped_batches, render_prompt, sft_example
from .models import add_lora_adapters, generate, load_base
from .runtime import backward, compute_dtype, micro_batches, optimizer_step, progress_bar, warmup_linear_schedule


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Response-only language-modelling loss.

    logits: [B, T, V] from the model; labels: [B, T] token ids, -100 where no loss is taken (prompt,
    padding). Position t predicts token t+1, so logits[:, :-1] are scored against labels[:, 1:]:

        L = − (1 / N) Σ_{b,t : y[b,t+1] ≠ −100} log softmax(logits[b,t])[y[b,t+1]]

    with N the number of supervised tokens (the SFT objective of Ouyang et al. 2022, §3.5, restricted
    to the demonstration's tokens). Returns a scalar. No supervised token at all is an error, not NaN.
    """
    shift_logits = logits[:, :-1, :]  # [B, T-1, V]
    shift_labels = labels[:, 1:]  # [B, T-1]
    if not (shift_labels != IGNORE_INDEX).any():
        raise ValueError("sft_loss: no supervised tokens in this batch (all labels are -100); check the label mask")
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)).float(), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def add_lora(model, cfg: SFTConfig, lora: LoRAConfig | None = None):
    """Wrap ``model`` with LoRA adapters (``lora``: the profile's ``LoRAConfig``, default ``LoRAConfig()``; see
    ``rlhf_lite.models.add_lora_adapters`` for the GPT-2 ``Conv1D`` detail); only adapters train, their
    initialisation seeded with ``cfg.seed``."""
    return add_lora_adapters(model, lora or LoRAConfig(), cfg.seed)


def count_parameters(model) -> dict[str, int]:
    """Trainable and total parameters (what LoRA saves)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def load_quantized(name: str, bits: str = "4bit", device: str = "cpu"):
    """Load a base model with bitsandbytes-quantized weights for QLoRA (Dettmers et al. 2023).

    "4bit": NF4 weights, double quantization, computing in the GPU's native half precision
    (``runtime.compute_dtype``: bfloat16 on an A100/L4/H100, float16 on a T4); "8bit": LLM.int8(). If bitsandbytes
    cannot run here, say so in one line and load full precision instead. Returns (model, tokenizer, mode).
    """
    if bits not in ("4bit", "8bit"):
        raise ValueError(f"quantization must be '4bit' or '8bit', got {bits!r}")
    qcfg = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute_dtype(device)) if bits == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True))
    warnings.filterwarnings("ignore", message=".*inputs will be cast from torch.float32.*")  # bnb says it every call
    try:
        import bitsandbytes  # noqa: F401  (optional: only QLoRA needs it)

        model, tok = load_base(name, device=device, quantization_config=qcfg,
                               device_map={"": device})
        with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5: not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return model, tok, bits
    except Exception as e:  # missing library, unsupported platform or backend
        print(f"QLoRA {bits} is not available here ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
              "loading full-precision weights instead.")
        model, tok = load_base(name, device=device)
        return model, tok, "none"


def tokenize_records(tokenizer, records: Sequence[dict], cfg: SFTConfig) -> list[dict]:
    """Dolly records → SFT examples; one summary line if any were truncated. Records that already are
    SFT examples (they have ``input_ids`` and ``labels``) are used as they are."""
    if records and "input_ids" in records[0]:
        return [{"input_ids": r["input_ids"], "attention_mask": r.get("attention_mask", [1] * len(r["input_ids"])),
                 "labels": r["labels"]} for r in records]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        examples = [sft_example(tokenizer, r, cfg.max_length, cfg.prompt_format) for r in records]
    n_trunc = sum(issubclass(w.category, TruncationWarning) for w in caught)
    if n_trunc:
        print(f"{n_trunc} of {len(examples)} examples were longer than max_length={cfg.max_length} and were truncated")
    return examples


@torch.no_grad()
def evaluate_loss(model, examples: Sequence[dict], collate: SFTCollator, batch_size: int = 32) -> float:
    """Mean response-token loss over ``examples`` (dropout off)."""
    was_training = model.training
    model.eval()
    total, n_tok = 0.0, 0
    examples = sorted(examples, key=lambda e: len(e["input_ids"]))  # less padding; the mean is order-free
    for i in range(0, len(examples), batch_size):
        b = {k: v.to(model.device) for k, v in collate(examples[i:i + batch_size]).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        n = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += sft_loss(logits, b["labels"]).item() * n
        n_tok += n
    model.train(was_training)
    return total / max(n_tok, 1)


def train_sft(model, tokenizer, dataset, cfg: SFTConfig, progress: bool = True) -> dict:
    """Fine-tune ``model`` (a plain model, or one wrapped by :func:`add_lora`) on demonstrations.

    ``dataset``: a mapping with a "train" split (and optionally "validation") of Dolly records, e.g.
    ``load_instruction_dataset("tinyworld")``, or of ready-made SFT examples ({input_ids, labels}), to
    train on a label mask of your own. Trains the parameters that require grad, in place.
    Returns the history: ``{"train": [{step, loss, lr}], "eval": [{step, loss}], "samples": [{step, prompt,
    text, finished}], "wall_time_s", "tokens", "config"}``.
    """
    validate_config(cfg)
    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    train_records = list(dataset["train"])
    if cfg.n_train:
        train_records = train_records[: cfg.n_train]
    val_records = list(dataset["validation"])[: max(cfg.eval_examples,
                                                    cfg.n_samples)] if "validation" in dataset else []

    # 1. tokenize: prompt tokens get label -100, response tokens and EOS are supervised
    train = tokenize_records(tokenizer, train_records, cfg)
    val = tokenize_records(tokenizer, val_records[: cfg.eval_examples], cfg) if val_records else []
    collate = SFTCollator(tokenizer.pad_token_id)
    sample_prompts = [render_prompt(tokenizer, r["instruction"], r.get("context", ""), cfg.prompt_format)
                      for r in val_records[: cfg.n_samples] if "instruction" in r]

    # 2. optimizer over what is trainable (LoRA adapters only, or everything)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_sft: the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    sched = warmup_linear_schedule(opt, cfg.warmup_steps, total_steps)
    history: dict = {"train": [], "eval": [], "samples": [], "config": cfg, "tokens": 0}
    g = torch.Generator().manual_seed(cfg.seed)

    def log_eval(step: int) -> None:
        if val:
            history["eval"].append({"step": step, "loss": evaluate_loss(model, val, collate)})
        for prompt, gen in zip(sample_prompts, generate(model, tokenizer, sample_prompts, cfg.max_new_tokens,
                                                        do_sample=False) if sample_prompts else []):
            history["samples"].append({"step": step, "prompt": prompt, "text": gen.text, "finished": gen.finished})

    # 3. the loop
    model.train()
    log_eval(0)
    step, bar = 0, progress_bar(total=total_steps, desc="sft", enabled=progress)
    lengths = [len(e["input_ids"]) for e in train]
    supervised = [sum(l != IGNORE_INDEX for l in e["labels"][1:]) for e in train]  # tokens each example's loss is on
    what, hint = "SFT step {}", f"Lower SFTConfig.lr (now {cfg.lr})."
    while step < total_steps:
        for idx in length_grouped_batches(lengths, cfg.batch_size, g):
            parts = micro_batches(idx, cfg.micro_batch_size)  # one part, unless gradients are accumulated
            logged = 0.0
            for k, part in enumerate(parts):
                batch = {name: v.to(device) for name, v in collate([train[j] for j in part]).items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).logits  # [b, T, V]; no KV cache kept, nothing is generated
                loss = sft_loss(logits, batch["labels"])
                if len(parts) > 1:  # the batch's loss is a mean over its tokens: weigh each part by its share
                    loss = loss * (sum(supervised[j] for j in part) / sum(supervised[j] for j in idx))
                logged += loss.item()
                history["tokens"] += int(batch["attention_mask"].sum())
                if k + 1 < len(parts):
                    backward(loss, what.format(step + 1), hint)
            optimizer_step(loss, params, opt, sched, cfg.grad_clip, what.format(step + 1), hint)
            step += 1
            history["train"].append({"step": step, "loss": logged, "lr": sched.get_last_lr()[0]})
            bar.update(1)
            bar.set_postfix(loss=f"{logged:.3f}")
            if step % cfg.eval_every == 0 or step == total_steps:
                log_eval(step)
            if step >= total_steps:
                break
    bar.close()
    model.eval()
    history["wall_time_s"] = time.time() - t0
    return history
