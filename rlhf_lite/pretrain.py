"""Pretraining: a byte-level BPE tokenizer and a tiny GPT-2 trained on the TinyWorld corpus only.

The corpus is plain prose (never instruction-formatted), so the result behaves like a raw web LM:
asked an instruction, it continues text. ``python -m rlhf_lite pretrain --out DIR`` runs this; the
checkpoint shipped in ``data/tiny-base`` is its output at the default seed. :func:`continue_pretraining` runs the
same loop on a pretrained model (real GPT-2 for the ``gpt2`` profile): it learns TinyWorld's names and facts in its
own tokenizer before SFT, as a domain-adapted model would.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from .config import PretrainConfig, validate_config
from .files import atomic_dir, check_output_dir
from .models import load_base
from .runtime import check_finite, hf_bars_off, progress_bar
from .world import build_world

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int, n_positions: int):
    """Byte-level BPE (as GPT-2's) with <|endoftext|> as BOS/EOS/UNK, as a transformers fast tokenizer.

    Unlike GPT-2's, it adds a space before the first word of every text it encodes (``add_prefix_space``), so a
    word is the same token at the start of a response as inside a sentence ("Sure" is "ĠSure" both times).
    Without it, the first word of every answer is a rare, un-merged form spelled out in pieces ("S", "ure"),
    and a small model samples garbage exactly there; ``generate`` drops that one leading space again."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                             model_max_length=n_positions, add_prefix_space=True)


def _blocks(docs: list[tuple[str, bool]], tokenizer, block: int) -> torch.Tensor:
    """Concatenate documents (EOS after each finished one) and cut into [N, block] rows."""
    ids: list[int] = []
    # long docs are fine here
    enc = tokenizer([t for t, _ in docs], add_special_tokens=False, verbose=False)["input_ids"]
    for toks, (_, ended) in zip(enc, docs):
        ids.extend(toks + ([tokenizer.eos_token_id] if ended else []))
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


@torch.no_grad()
def lm_loss(model, data: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token loss of ``model`` on packed rows ``data`` [N, T] (no padding), in eval mode; the
    model's train/eval mode is restored afterwards. On the held-out corpus this is the "alignment tax"
    measure: how much of its pretraining a fine-tuned model forgot."""
    was = model.training
    model.eval()
    data = data.to(model.device)
    losses = [model(input_ids=data[i:i + batch_size], attention_mask=torch.ones_like(data[i:i + batch_size]),
                    labels=data[i:i + batch_size]).loss.item()
              for i in range(0, len(data), batch_size)]
    model.train(was)
    return sum(losses) / len(losses)


def corpus_split(cfg: PretrainConfig) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """The corpus ``cfg`` describes, split once for every user: (train documents, held-out documents), the last
    ``heldout_frac`` of them held out."""
    docs = build_world(cfg.seed).corpus(cfg.n_docs)
    n_held = max(1, int(len(docs) * cfg.heldout_frac))
    return docs[:-n_held], docs[-n_held:]


def corpus_blocks(tokenizer, split: str = "heldout", cfg: PretrainConfig | None = None, max_docs: int | None = None,
                  block: int | None = None) -> torch.Tensor:
    """The pretraining corpus as packed rows [N, block], split exactly as ``pretrain`` split it: "train"
    (what the base model learned from; PPO-ptx mixes it in) or "heldout" (never trained on; the
    alignment-tax measure). ``max_docs`` keeps only the first documents of the split."""
    cfg = cfg or PretrainConfig()
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    train, held = corpus_split(cfg)
    return _blocks((train if split == "train" else held)[:max_docs], tokenizer, block or cfg.n_positions)


def train_lm(model, train: torch.Tensor, held: torch.Tensor, cfg: PretrainConfig, progress: bool = True,
             desc: str = "pretrain") -> list[dict]:
    """Next-token training of ``model`` on packed rows ``train`` [N, T] with ``cfg``'s steps, batch and schedule
    (AdamW, linear warm-up, cosine decay to 10 %); held-out loss on ``held`` every ``cfg.eval_every`` steps.
    Batches go to the model's device. Returns the log: step, train loss (EMA), held-out loss."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 % of the peak
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train), generator=g)
    history: list[dict] = []
    pos, loss_ema = 0, None
    bar = progress_bar(range(cfg.steps), desc=desc, enabled=progress)
    model.train()
    for step in bar:
        if pos + cfg.batch_size > len(order):  # next epoch
            order, pos = torch.randperm(len(train), generator=g), 0
        batch = train[order[pos:pos + cfg.batch_size]].to(model.device)  # [B, T]
        pos += cfg.batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss  # packed: no padding
        hint = f"Lower PretrainConfig.lr (now {cfg.lr}) and run again."
        check_finite(loss, f"pretraining step {step + 1}: the loss", hint)
        loss.backward()
        check_finite(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0),
                     f"pretraining step {step + 1}: the gradient norm",
                     hint)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "train_loss": round(loss_ema, 4),
                            "heldout_loss": round(lm_loss(model, held, cfg.batch_size), 4)})
    return history


def pretrain(cfg: PretrainConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Build the tokenizer and model from scratch and save both to ``out_dir``. Returns the card."""
    validate_config(cfg)
    out_dir = check_output_dir(out_dir, "pretrain")  # before the work, not after it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_docs, held_docs = corpus_split(cfg)
    tokenizer = train_tokenizer([t for t, _ in train_docs], cfg.vocab_size, cfg.n_positions)
    train, held = _blocks(train_docs, tokenizer, cfg.n_positions), _blocks(held_docs, tokenizer, cfg.n_positions)

    mcfg = GPT2Config(loss_type="ForCausalLM", vocab_size=len(tokenizer), n_positions=cfg.n_positions,
                      n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(mcfg)
    history = train_lm(model, train, held, cfg, progress)
    elapsed = time.time() - t0

    card = {"config": asdict(cfg), "parameters": sum(p.numel() for p in model.parameters()),
            "train_tokens": int(train.numel()), "heldout_tokens": int(held.numel()),
            "tokens_seen": cfg.steps * cfg.batch_size * cfg.n_positions,
            "epochs": round(cfg.steps * cfg.batch_size / len(train), 2),
            "final_train_loss": history[-1]["train_loss"], "final_heldout_loss": history[-1]["heldout_loss"],
            "wall_time_s": round(elapsed, 1), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "corpus_digest": corpus_digest(train_docs + held_docs), "history": history}
    # write everything to a temporary folder first: an interrupted run leaves nothing half-written
    with atomic_dir(out_dir, "pretrain") as tmp:
        model.generation_config = GenerationConfig(bos_token_id=tokenizer.eos_token_id,
                                                   eos_token_id=tokenizer.eos_token_id,
                                                   pad_token_id=tokenizer.eos_token_id)
        with hf_bars_off():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(card, indent=1) + "\n")
        (tmp / "README.md").write_text(model_card(card))
    return card


def continue_pretraining(base: str, cfg: PretrainConfig, out_dir: str | os.PathLike, device: str = "cpu",
                         progress: bool = True) -> dict:
    """Continued pretraining: a pretrained causal LM (``base``: a hub name such as "gpt2", or a model folder) trained
    further on the TinyWorld corpus in its own tokenizer, with ``cfg``'s steps, batch, block length and learning
    rate (its width, depth and vocabulary are its own), then saved with its tokenizer to ``out_dir`` (atomically).
    The corpus is split exactly as :func:`pretrain` splits it, so PPO-ptx and the alignment-tax measure read the
    same rows. Returns the card (held-out loss before and after)."""
    validate_config(cfg)
    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_base(base, device=device)
    context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 0)
    if context and cfg.n_positions > context:
        raise ValueError(f"PretrainConfig.n_positions = {cfg.n_positions} is longer than {base!r}'s context of "
                         f"{context} tokens; use at most {context}")
    train_docs, held_docs = corpus_split(cfg)  # as pretrain split it
    train, held = _blocks(train_docs, tokenizer, cfg.n_positions), _blocks(held_docs, tokenizer, cfg.n_positions)
    before = lm_loss(model, held, cfg.batch_size)
    history = train_lm(model, train, held, cfg, progress, desc="continued pretraining")
    model.eval()
    card = {"config": asdict(cfg), "base": base, "parameters": sum(p.numel() for p in model.parameters()),
            "train_tokens": int(train.numel()), "heldout_tokens": int(held.numel()),
            "tokens_seen": cfg.steps * cfg.batch_size * cfg.n_positions, "heldout_loss_before": round(before, 4),
            "final_heldout_loss": history[-1]["heldout_loss"], "wall_time_s": round(time.time() - t0, 1),
            "device": str(model.device), "torch": torch.__version__, "history": history}
    with atomic_dir(out_dir, "continued-pretraining") as tmp:
        with hf_bars_off():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def corpus_digest(docs: list[tuple[str, bool]]) -> str:
    """SHA-256 of the corpus (texts and end markers): the same digest means the same training data."""
    return hashlib.sha256(json.dumps(docs).encode()).hexdigest()


def model_card(card: dict) -> str:
    c = card["config"]
    rows = "\n".join(f"| {h['step']} | {h['train_loss']:.3f} | {h['heldout_loss']:.3f} |" for h in card["history"])
    return f"""# TinyWorld base model

A `GPT2LMHeadModel` pretrained from scratch on the TinyWorld corpus (plain prose generated from the
world's knowledge base: fact notes, stories, lists, places and forum threads, including rude,
rambling, wrong and never-ending replies). It has never seen instruction-formatted text, so it
behaves like a raw pretrained LM. Rebuild with `python -m rlhf_lite pretrain --out DIR`.

| | |
|---|---|
| parameters | {card['parameters']:,} |
| layers / heads / width / context | {c['n_layer']} / {c['n_head']} / {c['n_embd']} / {c['n_positions']} |
| vocabulary | {c['vocab_size']} (byte-level BPE, a space before the first word, `<|endoftext|>` = EOS) |
| seed | {c['seed']} |
| steps x batch | {c['steps']} x {c['batch_size']} blocks of {c['n_positions']} tokens |
| tokens seen | {card['tokens_seen']:,} ({card['epochs']} epochs of {card['train_tokens']:,} training tokens) |
| final train loss (EMA) | {card['final_train_loss']:.3f} |
| final held-out loss | {card['final_heldout_loss']:.3f} (on {card['heldout_tokens']:,} tokens of unseen documents) |
| wall time | {card['wall_time_s']:.0f} s on {card['threads']} CPU threads, torch {card['torch']} |

| step | train loss | held-out loss |
|---|---|---|
{rows}

Full numbers: `training.json`. Loading: `AutoModelForCausalLM.from_pretrained(path)` and
`AutoTokenizer.from_pretrained(path)`, or `rlhf_lite.models.load_base("tiny")`.
"""
