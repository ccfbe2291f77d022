"""Instruction data: prompt formats, chat templates, the SFT label mask, collation, and loaders.

Step 1 of InstructGPT trains on (prompt, demonstration) pairs. Three things decide whether that
works, and this module makes each visible:

* **the prompt format**: Alpaca/Dolly-style ``### Instruction`` sections, or a chat template applied
  with ``tokenizer.apply_chat_template`` (we ship a ChatML-like and a Llama-2-like one);
* **the label mask**: loss only on response tokens (``-100`` elsewhere);
* **the end**: the response is followed by EOS and *its label is kept*. GPT-2 has no pad token, so
  pad == EOS, and masking labels by ``input_ids == pad_token_id`` silently drops the EOS label: the
  model never learns to stop (trl#976, fixed by PRs #988 and #992).
"""
from __future__ import annotations

import difflib
import html
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from datasets import Dataset, DatasetDict, load_dataset

from .config import get_profile
from .files import DataFormatError, read_rows
from .models import encode_prompt
from .world import world_from_config
from .world.tasks import CATEGORIES

IGNORE_INDEX = -100  # label value that cross-entropy skips
DOLLY_FIELDS = ("instruction", "context", "response", "category")

# ---------------------------------------------------------------------------------------------
# Prompt formats
# ---------------------------------------------------------------------------------------------
ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_TEMPLATE_WITH_CONTEXT = "### Instruction:\n{instruction}\n\n### Context:\n{context}\n\n### Response:\n"


def format_prompt(instruction: str, context: str = "") -> str:
    """The Alpaca/Dolly-style prompt; the response is generated right after ``### Response:\\n``."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("format_prompt: instruction must be a non-empty string")
    if context and context.strip():
        return ALPACA_TEMPLATE_WITH_CONTEXT.format(instruction=instruction.strip(), context=context.strip())
    return ALPACA_TEMPLATE.format(instruction=instruction.strip())


# Chat templates (Jinja, as tokenizer.chat_template). The assistant's reply is wrapped in
# {% generation %} … {% endgeneration %}, so apply_chat_template(..., return_assistant_tokens_mask=True)
# marks exactly the tokens the model must learn to produce. Each assistant turn ends with the
# tokenizer's EOS: that is the token generation stops at, for the tiny model and for GPT-2 alike.
# Neither template adds a BOS token: GPT-2's BOS is the same token as its EOS.
CHAT_TEMPLATES = {
    # ChatML-like: <|im_start|>role\n … <|im_end|>\n (the markers are plain text to our tokenizers)
    "chatml": (
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['role'] == 'assistant' %}"
        "{%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}{{- '\\n' }}"
        "{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    ),
    # Llama-2-like: [INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant</s>
    "llama2": (
        "{%- if messages[0]['role'] == 'system' %}"
        "{%- set system = messages[0]['content'] %}{%- set turns = messages[1:] %}"
        "{%- else %}{%- set system = '' %}{%- set turns = messages %}{%- endif %}"
        "{%- for message in turns %}"
        "{%- if message['role'] == 'user' %}"
        "{{- '[INST] ' }}{%- if loop.first and system %}{{- '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{%- endif %}"
        "{{- message['content'] + ' [/INST]' }}"
        "{%- elif message['role'] == 'assistant' %}"
        "{%- generation %}{{- ' ' + message['content'] + eos_token }}{%- endgeneration %}"
        "{%- endif %}"
        "{%- endfor %}"
    ),
}
DEFAULT_SYSTEM = "You are a helpful, honest and polite assistant."


def to_messages(instruction: str, context: str = "", response: str | None = None,
                system: str | None = DEFAULT_SYSTEM) -> list[dict]:
    """A Dolly record as chat messages: system (optional), user (instruction + context), assistant."""
    user = instruction.strip() + (f"\n\n{context.strip()}" if context and context.strip() else "")
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return msgs + ([{"role": "assistant", "content": response}] if response is not None else [])


def render_prompt(tokenizer, instruction: str, context: str = "", fmt: str = "alpaca") -> str:
    """The prompt text in format ``fmt``: "alpaca", or a chat template name from :data:`CHAT_TEMPLATES`."""
    if fmt == "alpaca":
        return format_prompt(instruction, context)
    if fmt not in CHAT_TEMPLATES:
        raise ValueError(f"unknown prompt format {fmt!r}; choose 'alpaca' or one of {sorted(CHAT_TEMPLATES)}")
    return tokenizer.apply_chat_template(to_messages(instruction, context), chat_template=CHAT_TEMPLATES[fmt],
                                         tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------
# The SFT example: where the loss goes
# ---------------------------------------------------------------------------------------------
class TruncationWarning(UserWarning):
    """An SFT example was longer than max_length and lost tokens."""


def build_sft_example(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]]:
    """Tokenize one (prompt, response) pair for supervised fine-tuning.

    Returns ``{input_ids, attention_mask, labels}`` (lists, unpadded): ``input_ids`` = prompt tokens,
    response tokens, EOS; ``labels`` = -100 on the prompt, the token ids on the response **and on EOS**
    (kept even when pad == eos: it is what teaches the model to stop).

    If the example is longer than ``max_length``, the response start is kept: prompt tokens are
    dropped from the left (the end of the prompt, which says "answer now", is kept), and only if the
    response alone does not fit is its tail cut (then there is no EOS to learn). A
    :class:`TruncationWarning` says how many tokens went.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before building SFT examples")
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    drop_prompt = drop_response = 0
    if len(prompt_ids) + len(response_ids) > max_length:
        keep_prompt = max(min(len(prompt_ids), max_length // 2), max_length - len(response_ids))
        drop_prompt = len(prompt_ids) - keep_prompt
        prompt_ids = prompt_ids[drop_prompt:]
        drop_response = max(0, len(prompt_ids) + len(response_ids) - max_length)
        response_ids = response_ids[: len(response_ids) - drop_response]
        warnings.warn(f"SFT example of {len(prompt_ids) + drop_prompt + len(response_ids) + drop_response} tokens > "
                      f"max_length={max_length}: dropped {drop_prompt} prompt tokens from the start"
                      + (f" and {drop_response} response tokens from the end (EOS included)" if drop_response else ""),
                      TruncationWarning, stacklevel=2)
    return {"input_ids": prompt_ids + response_ids, "attention_mask": [1] * (len(prompt_ids) + len(response_ids)),
            "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids}


def build_chat_example(tokenizer, messages: list[dict], max_length: int, template: str = "chatml") -> dict[str,
                                                                                                           list[int]]:
    """Like :func:`build_sft_example`, but the mask comes from the chat template's generation markers."""
    enc = tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATES[template], tokenize=True,
                                        return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    if len(ids) > max_length:
        warnings.warn(f"chat example of {len(ids)} tokens > max_length={max_length}: dropped {len(ids) - max_length} "
                      "tokens from the start", TruncationWarning, stacklevel=2)
        ids, mask = ids[-max_length:], mask[-max_length:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]}


def sft_example(tokenizer, record: dict, max_length: int, fmt: str = "alpaca") -> dict[str, list[int]]:
    """One Dolly record → SFT example, in prompt format ``fmt`` ("alpaca", "chatml" or "llama2")."""
    if fmt == "alpaca":
        return build_sft_example(tokenizer, format_prompt(record["instruction"], record.get("context", "")),
                                 record["response"], max_length)
    if fmt not in CHAT_TEMPLATES:
        raise ValueError(f"unknown prompt format {fmt!r}; choose 'alpaca' or one of {sorted(CHAT_TEMPLATES)}")
    return build_chat_example(tokenizer,
                              to_messages(record["instruction"], record.get("context", ""), record["response"]),
                              max_length, fmt)


@dataclass
class SFTCollator:
    """Pads a list of SFT examples to one batch, on the **right** (training: positions stay aligned
    with the unpadded sequence; the loss ignores the padding). Labels are padded with -100, so a
    pad token that happens to be EOS is never confused with the real, supervised EOS."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("SFTCollator needs a pad token id, and this tokenizer has none: set "
                             "tokenizer.pad_token = tokenizer.eos_token (load_base does this) and pass "
                             "tokenizer.pad_token_id")

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        n = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            n = -(-n // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for e in examples:
            pad = n - len(e["input_ids"])
            batch["input_ids"].append(list(e["input_ids"]) + [self.pad_token_id] * pad)
            batch["attention_mask"].append(list(e["attention_mask"]) + [0] * pad)
            batch["labels"].append(list(e["labels"]) + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}  # each [B, T]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                           window: int = 32) -> list[list[int]]:
    """One epoch of batches: shuffle, sort each window of ``window`` batches by length, shuffle the batches.
    Similar lengths share a batch, so little compute goes to padding, and the order stays random."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = batch_size * window
    batches = []
    for i in range(0, len(order), span):
        chunk = sorted(order[i:i + span], key=lengths.__getitem__)
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]


# ---------------------------------------------------------------------------------------------
# Scoring inputs: prompt + response (+ EOS) for the reward model and DPO
# ---------------------------------------------------------------------------------------------
def encode_response(tokenizer, prompt: str, response: str, finished: bool, max_length: int) -> list[int]:
    """Token ids of prompt + response (+ EOS if the response ended): the reward is read at that EOS.
    Too long: prompt tokens go from the left, the response stays."""
    p = encode_prompt(tokenizer, prompt)
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if finished else [])
    return (p + r)[-max_length:]


# ---------------------------------------------------------------------------------------------
# Seeing the mask
# ---------------------------------------------------------------------------------------------
_COLOURS = {"prompt": "#d9d9d9", "response": "#b7e4a8", "eos": "#7cc96a", "pad": "#f7f7f7"}


class TokenView:
    """A tokenized example shown token by token: grey = prompt (no loss), green = response (loss),
    dark green = the supervised EOS, pale = padding. HTML in Jupyter, plain text elsewhere."""

    def __init__(self, tokenizer, example: dict):
        ids = [int(i) for i in example["input_ids"]]
        labels = [int(l) for l in example["labels"]]
        attn = [int(a) for a in example.get("attention_mask", [1] * len(ids))]
        self.rows = []
        for i, (t, l, a) in enumerate(zip(ids, labels, attn)):
            kind = "pad" if not a else ("eos" if l == tokenizer.eos_token_id and l != IGNORE_INDEX else
                                        "response" if l != IGNORE_INDEX else "prompt")
            self.rows.append((i, t, tokenizer.decode([t]), l, kind))

    def __str__(self) -> str:
        lines = [f"{'pos':>4} {'id':>6}  {'token':<18} {'label':>6}  kind"]
        lines += [f"{i:>4} {t:>6}  {text!r:<18} {l:>6}  {kind}" for i, t, text, l, kind in self.rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        spans = "".join(
            f'<span title="pos {i} · id {t} · label {l}" style="background:{_COLOURS[kind]};padding:1px 2px;margin:1px;'
            f'border-radius:3px;font-family:monospace;white-space:pre">{html.escape(text) or "&nbsp;"}</span>'
            + ("<br>" if "\n" in text else "")
            for i, t, text, l, kind in self.rows)
        legend = " ".join(f'<span style="background:{c};padding:1px 4px;font-family:monospace">{k}</span>'
                          for k, c in _COLOURS.items())
        return (f'<div style="line-height:1.9">{spans}</div>'
                f'<div style="margin-top:4px">{legend} · hover a token for its label</div>')

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(_COLOURS, 0)
        for *_, kind in self.rows:
            out[kind] += 1
        return out


def show_tokens(tokenizer, example: dict) -> TokenView:
    """Render an SFT example (or one row of a collated batch) token by token."""
    return TokenView(tokenizer, example)


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------
def _check_columns(columns: Sequence[str], source: str) -> None:
    missing = [f for f in DOLLY_FIELDS if f not in columns]
    if not missing:
        return
    hints = []
    for f in missing:
        close = difflib.get_close_matches(f, [c for c in columns if c not in DOLLY_FIELDS], n=1, cutoff=0.6)
        hints.append(f"'{f}'" + (f" (found '{close[0]}': a misspelling?)" if close else ""))
    raise DataFormatError(f"{source}: missing column(s) {', '.join(hints)}. Instruction data needs the columns "
                          f"{list(DOLLY_FIELDS)} (Dolly-15k's schema); found {list(columns)}")


def validate_record(rec: dict, where: str) -> dict:
    """Check one record; return it with string fields (context may be empty)."""
    for f in DOLLY_FIELDS:
        v = rec.get(f)
        if v is None and f == "context":
            v = ""
        if not isinstance(v, str):
            raise DataFormatError(f"{where}: field '{f}' must be text, got {type(v).__name__} ({v!r:.40})")
        rec[f] = v
    for f in ("instruction", "response"):
        if not rec[f].strip():
            raise DataFormatError(f"{where}: field '{f}' is empty; every record needs a non-empty {f}")
    if rec["category"] not in CATEGORIES:
        close = difflib.get_close_matches(rec["category"], CATEGORIES, n=1)
        raise DataFormatError(f"{where}: unknown category {rec['category']!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "") + f"; valid: {CATEGORIES}")
    return rec


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a local .json / .jsonl / .csv / .parquet file in Dolly's schema, validated."""
    rows = read_rows(path, "instruction data file", _check_columns)
    _check_columns(list(rows[0][1]), rows[0][0])
    out = []
    for where, rec in rows:
        _check_columns(list(rec), where)
        out.append(validate_record(rec, where))
    return out


VALIDATION_FRACTION = 0.05


def hold_out(records: Dataset, fraction: float = VALIDATION_FRACTION, seed: int = 0) -> DatasetDict:
    """"train" and "validation" splits of one list of records: ``fraction`` of them (at least one) held out at
    random with ``seed``. A single record stays "train" only."""
    if len(records) < 2:
        return DatasetDict({"train": records})
    split = records.train_test_split(test_size=fraction, seed=seed)
    return DatasetDict({"train": split["train"], "validation": split["test"]})


def load_instruction_dataset(source: str = "tinyworld", world_config=None):
    """Instruction data as a ``datasets.DatasetDict`` with Dolly's columns.

    * ``"tinyworld"``: the generated world (``world_config``, default: the current profile's); train/validation/
      test split by user. ``response`` is the demonstration a writer gave (``world.writers``); columns also carry
      ``prompt_id``, ``user_id``, ``task_type``, ``writer`` and ``reference`` (the perfect answer).
    * ``"dolly"``: ``databricks/databricks-dolly-15k`` from the Hugging Face Hub;
    * a path to a local ``.json``/``.jsonl``/``.csv``/``.parquet`` file in the same schema.

    Dolly and local files come as one list of records: :func:`hold_out` keeps 5 % of them as the "validation"
    split, the same rows for the SFT stage, notebook 02 and the RL prompts (which come from "train").
    """
    if source == "tinyworld":
        world = world_from_config(world_config or get_profile().world)
        return DatasetDict({s: Dataset.from_list([{**t.to_dolly(), "prompt_id": t.prompt_id, "user_id": t.user_id,
                                                   "task_type": t.task_type, "writer": t.writer,
                                                   "reference": t.response} for t in tasks])
                            for s, tasks in world.splits.items()})
    if source == "dolly":
        name = "databricks/databricks-dolly-15k"
        try:
            ds = load_dataset(name, split="train")
        except Exception as e:  # offline, DNS, 404, hub outage: the same advice
            raise ConnectionError(f"could not load {name} from the Hugging Face Hub ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}). Without network use the offline world: "
                                  "RLHF_LITE_PROFILE=tiny, or load_instruction_dataset('tinyworld')") from None
        _check_columns(ds.column_names, name)
        for n, rec in enumerate(ds):
            validate_record(dict(rec), f"{name}, row {n}")
        return hold_out(ds)
    if Path(source).suffix or os.sep in source or Path(source).exists():
        return hold_out(Dataset.from_list(read_records(source)))
    raise ValueError(f"unknown instruction data source {source!r}: use 'tinyworld', 'dolly', or a path to a "
                     ".json/.jsonl/.csv/.parquet file")
