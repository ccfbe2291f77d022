"""Loading the base model, and generation shared by every stage.

``load_base("tiny")`` loads the TinyWorld GPT-2 shipped in ``data/tiny-base``; any other name goes
to ``from_pretrained``, so ``load_base("gpt2")`` is the same code on the real model in Colab.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.pytorch_utils import Conv1D

from .config import MIN_TEMPERATURE, LoRAConfig
from .files import check_model_folder
from .runtime import hf_bars_off, progress_bar

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_BASE = REPO_ROOT / "data" / "tiny-base"
REBUILD_HINT = "rebuild it with `python -m rlhf_lite pretrain --out data/tiny-base` (about 20 min on 2 CPU cores)"


# ---------------------------------------------------------------------------------------------
# Heads in float32
# ---------------------------------------------------------------------------------------------
class Float32Linear(torch.nn.Linear):
    """A linear layer that computes in float32 with autocast off, whatever the precision around it: x [*, d] ->
    [*, out]. Under bf16 autocast a logit near 10 is only resolved to about 0.06, which puts noise into per-token
    log-probabilities, KL, PPO's ratio and the reward model's score; these outputs are small, so float32 costs
    little (verl and OpenRLHF keep them in float32 too). Without autocast (the CPU) it is ``nn.Linear`` exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())


def in_float32(layer: torch.nn.Module) -> torch.nn.Module:
    """``layer`` (an ``nn.Linear``: an LM head, a reward or value head) turned into a :class:`Float32Linear`, in
    place: the same parameters (a tied LM head stays tied), the same state dict. Anything else is returned as is."""
    if type(layer) is torch.nn.Linear:
        layer.__class__ = Float32Linear
    return layer


def load_base(name: str = "tiny", device: str = "cpu", dtype: torch.dtype | None = None, **kwargs):
    """Load a causal LM and its tokenizer, set up the same way for every stage. Returns (model, tokenizer).

    * ``name``: "tiny" (the shipped TinyWorld model), a local folder, or a hub name such as "gpt2".
    * pad token: GPT-2 has none, so pad = EOS. Padding masks must then never hide the real EOS label
      (see ``rlhf_lite.data``), or the model never learns to stop.
    * padding side: left. Decoder-only models generate after the last position, so a batch of prompts
      must end flush right; training collators pad right themselves.
    * dtype: float32 unless asked. CPUs run float32 fastest and these models are small; on a GPU, pass
      ``torch.bfloat16``/``torch.float16`` or use autocast (``rlhf_lite.runtime.course_precision``).
    * the LM head computes in float32 under autocast too (:func:`in_float32`): log-probabilities, KL and
      PPO's ratios are read from it.
    The model is returned in eval mode (dropout off); training loops switch it on themselves.
    Extra keyword arguments go to ``from_pretrained`` (e.g. ``quantization_config``).
    """
    local = TINY_BASE if name == "tiny" else Path(name)
    if name == "tiny" and not local.is_dir():
        raise FileNotFoundError(f"the shipped TinyWorld model is not at {local}. Install from a clone of the "
                                f"repository (`pip install -e .`), or {REBUILD_HINT} and pass that folder")
    if local.is_dir():
        check_model_folder(local, REBUILD_HINT)
        source = str(local)
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub id ("gpt2", "org/name")
        raise FileNotFoundError(f"model folder {name!r} does not exist; use 'tiny', a folder written by "
                                "save_pretrained, "
                                "or a hub name such as 'gpt2'")
    else:
        source = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        with hf_bars_off():
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32, **kwargs)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise OSError(f"could not load model {name!r} from the Hugging Face "
                      f"Hub{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}: "
                      f"{str(e).splitlines()[0]}\nWithout network, use the offline TinyWorld model: "
                      "RLHF_LITE_PROFILE=tiny, or load_base('tiny').") from None
    vocab = getattr(model.config, "vocab_size", None)
    if len(tokenizer) == 0 or tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {name!r} is empty or has no end-of-text token; its tokenizer files are "
                         f"incomplete. {REBUILD_HINT}")
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer of {name!r} has {len(tokenizer):,} tokens but the model's embedding only "
                         f"{vocab:,}: they do not belong together (a tokenizer from another model?)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    in_float32(model.get_output_embeddings())
    if "quantization_config" not in kwargs:  # quantized weights are placed by from_pretrained itself
        model = model.to(device)
    return model.eval(), tokenizer


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad token-id lists to [N, T]; the mask marks real tokens (a pad id equal to EOS stays unmasked
    where it is a real EOS, because the mask comes from lengths, not from token values)."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(t - len(s), t) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = torch.tensor(list(s), dtype=torch.long), 1
    return {"input_ids": ids, "attention_mask": mask}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counting real tokens only: [B, T] mask -> [B, T] positions (0 on pads).

    GPT-2 numbers positions 0..T-1 regardless of padding unless told otherwise, so a left-padded
    sequence would start at position 3 instead of 0 and get different hidden states than the same
    sequence right-padded. ``generate`` passes these positions itself; any forward pass over a padded
    batch (reward model, value head, PPO log-probs) must pass them too.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row: [B, T] mask -> [B]. Works for left and right padding:
    right-padded ``[1 1 1 0]`` -> 2, left-padded ``[0 1 1 1]`` -> 3."""
    t = attention_mask.size(-1)
    return t - 1 - attention_mask.long().flip(-1).argmax(-1)


def trim_padding(ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Drop the columns that are padding in every row: [b, T] -> [b, T'], and how many left columns went."""
    cols = attn.any(0).nonzero().squeeze(1)
    lo, hi = cols[0].item(), cols[-1].item() + 1
    return ids[:, lo:hi], attn[:, lo:hi], lo


def transformer_body(model):
    """The transformer without its LM head (``GPT2Model`` inside ``GPT2LMHeadModel``), looking through a
    peft wrapper; injected LoRA layers stay active inside it."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix, model)


def add_lora_adapters(model, lora: LoRAConfig, seed: int = 0, task_type: str | None = "CAUSAL_LM"):
    """Wrap ``model`` with LoRA adapters (peft) as ``lora`` says (rank, α, dropout, target modules); only adapters
    train.

    GPT-2 implements its projections with ``transformers.Conv1D``, whose weight is stored (in, out),
    transposed relative to ``nn.Linear``. peft must know, or the adapter is applied the wrong way
    round: ``fan_in_fan_out=True``. We detect it from the target modules, so other models work too.
    The adapters' random initialisation is seeded with ``seed``: the same config gives the same run.
    ``task_type=None`` for models whose LM head is never run (reward model).
    """
    found = [m for n, m in model.named_modules() if n.split(".")[-1] in lora.targets]
    if not found:
        raise ValueError(f"no module named {list(lora.targets)} in this model; set LoRAConfig.targets (the profile's "
                         "`lora`) to the names of its attention/MLP projections (e.g. q_proj, v_proj for Llama)")
    lcfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.targets),
                      fan_in_fan_out=isinstance(found[0], Conv1D), bias="none", task_type=task_type)
    with torch.random.fork_rng(devices=[]):  # A's random init depends on the seed only, not on what ran before
        torch.manual_seed(seed)
        return get_peft_model(model, lcfg)


def dropout_off(model) -> None:
    """Set every dropout probability to 0 (Huang et al. 2024: with dropout, policy log-probs, values and
    rewards change from pass to pass, so PPO's ratio is not 1 on its first minibatch)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def frozen_with_adapters(model, lora: LoRAConfig | None = None, seed: int = 0, task_type: str | None = "CAUSAL_LM"):
    """``model`` with its dropout off (:func:`dropout_off`) and LoRA adapters on (:func:`add_lora_adapters`;
    ``lora``: the profile's, default ``LoRAConfig()``): what every policy (PPO, GRPO, DPO) and the reward model
    train. With the adapters disabled it is still the SFT model: the reference."""
    dropout_off(model)
    return add_lora_adapters(model, lora or LoRAConfig(), seed, task_type)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The one way a prompt becomes token ids, everywhere (sampling, SFT examples, rollouts, reward-model inputs):
    with the tokenizer's special tokens (a BOS, for tokenizers that add one; none for GPT-2), so the ids the policy
    sampled after are exactly the ids its log-probs are later computed on."""
    return tokenizer(prompt)["input_ids"]


@dataclass
class Generation:
    """One generated response: ``text`` (without EOS), its token ids, and whether EOS ended it."""

    text: str
    token_ids: list[int]
    finished: bool


def _cache_of(layers_kv):
    """A DynamicCache holding, per layer, the (keys, values) [B, H, T, D] assembled by :func:`prefill`."""
    cache = DynamicCache()
    for i, (k, v) in enumerate(layers_kv):
        cache.update(k, v, i)
    return cache


@torch.inference_mode()
def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, group: int = 16):
    """Run left-padded prompts [B, T] through ``model`` once: returns (logits at the last position [B, V], the
    KV cache of every prompt token, left-padded to T).

    A batch of prompts is padded to its longest one, and every layer computes the padding too: 64 TinyWorld
    prompts are 175 columns wide with 60 real tokens on average, so two thirds of one batched pass would be
    wasted. Rows are therefore run in groups of similar length, each cut to its own longest prompt, and the
    groups' caches are put back into one left-padded cache (zeros under the padding, which the attention
    mask hides). Models whose cache is not a plain ``DynamicCache`` get the one batched pass.
    """
    B, T = input_ids.shape
    positions = position_ids_from_mask(attention_mask)
    logits, kv = None, None
    for rows in torch.argsort(attention_mask.sum(1), stable=True).split(group):  # similar lengths together
        ids_g, a, lo = trim_padding(input_ids[rows], attention_mask[rows])  # without the group's all-padding columns
        out = model(input_ids=ids_g, attention_mask=a, position_ids=position_ids_from_mask(a), use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
        if type(cache) is not DynamicCache or not all(hasattr(layer, "keys") for layer in cache.layers):
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1)
            return out.logits[:, -1], out.past_key_values
        if kv is None:
            logits = out.logits.new_zeros(B, out.logits.size(-1))
            kv = [(layer.keys.new_zeros(B, layer.keys.size(1), T, layer.keys.size(3)),
                   layer.values.new_zeros(B, layer.values.size(1), T, layer.values.size(3))) for layer in cache.layers]
        logits[rows] = out.logits[:, -1]
        for (k, v), layer in zip(kv, cache.layers):  # [B, H, T, D] <- [b, H, T - lo, D]
            k[rows, :, lo:], v[rows, :, lo:] = layer.keys, layer.values
    return logits, _cache_of(kv)


@torch.inference_mode()
def sample_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos_token_id: int,
                  do_sample: bool = True, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Sample up to ``max_new_tokens`` after left-padded prompts [B, T] with a KV cache: returns [B, max_new_tokens]
    token ids, EOS after a row has finished. The same tokens as ``model.generate`` with the same seed (tested),
    in less time, for two reasons:

    * the prompts are prefilled in groups of similar length (:func:`prefill`), not padded to the longest;
    * a row that has emitted EOS leaves the batch (its cache rows are dropped), where ``generate`` keeps
      computing every row until the last one ends. The random draw still covers the whole batch:
      ``torch.multinomial`` draws one exponential per entry of the [B, V] probability matrix, so each row's
      sample is the same whichever other rows are still running.

    Sampling: softmax(logits / temperature), optionally restricted to the ``top_k`` largest logits (0: all);
    ``do_sample=False``: greedy.
    """
    B = input_ids.size(0)
    out = torch.full((B, max_new_tokens), eos_token_id, dtype=torch.long, device=input_ids.device)  # [B, N]
    active = torch.arange(B, device=input_ids.device)  # rows still generating
    pos = position_ids_from_mask(attention_mask)[:, -1:]  # [b, 1] position of each row's last token
    logits, cache = prefill(model, input_ids, attention_mask)  # [B, V]
    scores = None
    for t in range(max_new_tokens):
        logits = logits.float()
        if do_sample:
            if temperature != 1.0:
                logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            scores = logits.new_zeros(B, logits.size(-1)) if scores is None else scores.zero_()  # [B, V]
            scores[active] = logits  # finished rows: a uniform row, drawn from and thrown away
            token = torch.multinomial(torch.softmax(scores, -1), 1).squeeze(1)[active]  # [b]
        else:
            token = logits.argmax(-1)
        out[active, t] = token
        going = token != eos_token_id
        if not going.all():
            if not going.any():
                break
            active, token, pos, attention_mask = active[going], token[going], pos[going], attention_mask[going]
            cache.batch_select_indices(going.nonzero().squeeze(1))
        if t + 1 == max_new_tokens:
            break
        pos = pos + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], 1)
        logits = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=pos, past_key_values=cache,
                       use_cache=True).logits[:, -1]
    return out


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, temperature: float = 1.0,
             top_k: int = 0, do_sample: bool = True, batch_size: int = 32, seed: int | None = None,
             progress: bool = False) -> list[Generation]:
    """Sample a response for each prompt: left-padded batches, at most ``max_new_tokens``, stopping at EOS.

    ``temperature``/``top_k`` are applied as given (top_k=0: no truncation, the pure policy that RLHF
    log-probs must match). ``seed`` makes sampling repeatable.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("generate: prompts must be a list of strings (wrap a single prompt in a list)")
    if not prompts:
        return []
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"generate: prompt {empty[0]} is empty; a model needs at least one token to continue "
                         "(render it with rlhf_lite.data.render_prompt)")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be at least 1, got {max_new_tokens}")
    if do_sample and not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE):
        raise ValueError(f"generate: temperature must be a number ≥ {MIN_TEMPERATURE}, got {temperature}; for the "
                         "most likely token at every step use do_sample=False (greedy) instead of temperature 0")
    if top_k < 0 or batch_size < 1:
        raise ValueError(f"generate: top_k must be ≥ 0 (0: no truncation) and batch_size ≥ 1, got {top_k}, "
                         f"{batch_size}")
    if seed is not None:
        torch.manual_seed(seed)
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    eos, out = tokenizer.eos_token_id, []
    prefix_space = getattr(tokenizer, "add_prefix_space", False)  # TinyWorld's tokenizer: see pretrain.train_tokenizer
    try:
        limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        for i in progress_bar(range(0, len(prompts), batch_size), desc="generate", enabled=progress):
            batch = pad_batch([encode_prompt(tokenizer, p) for p in prompts[i:i + batch_size]], tokenizer.pad_token_id,
                              side="left")
            enc = {k: v.to(model.device) for k, v in batch.items()}
            if limit and enc["input_ids"].shape[1] + max_new_tokens > limit:
                lengths = enc["attention_mask"].sum(1).tolist()
                j = max(range(len(lengths)), key=lengths.__getitem__)
                raise ValueError(f"prompt {i + j} is {lengths[j]} tokens; with max_new_tokens={max_new_tokens} it does "
                                 f"not fit the model's context of {limit} tokens. Shorten the prompt or lower "
                                 "max_new_tokens: "
                                 f"{prompts[i + j][:80]!r}…")
            new = sample_tokens(model, enc["input_ids"], enc["attention_mask"], max_new_tokens, eos, do_sample,
                                temperature, top_k)
            for row in new.tolist():  # [B, max_new_tokens] response tokens, EOS-filled after the end
                finished = eos in row
                ids = row[: row.index(eos)] if finished else row
                text = tokenizer.decode(ids, skip_special_tokens=True)
                if prefix_space and text.startswith(" "):  # the marker of the first word, not part of the answer
                    text = text[1:]
                out.append(Generation(text, ids, finished))
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    return out
