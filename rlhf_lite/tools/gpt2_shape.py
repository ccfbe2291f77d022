"""A GPT-2-shaped model with random weights and the real GPT-2 tokenizer (``python -m rlhf_lite gpt2-shape``): the
offline stand-in for the hub's ``gpt2`` that the benchmarks and the ``gpt2-smoke`` tests run on."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from ..files import atomic_dir, check_output_dir
from ..models import REPO_ROOT
from ..runtime import hf_bars_off

GPT2_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"
"""The real GPT-2 tokenizer files, in the course's shared folder beside the repository (never copied into it)."""

# The few small layers of ``write_gpt2_shape(small=True)``: GPT-2's vocabulary and context, a fraction of its width
SMALL_GPT2 = {"n_layer": 2, "n_embd": 64, "n_head": 2}


def write_gpt2_shape(out: str | Path, small: bool = False, tokenizer_dir: str | Path = GPT2_TOKENIZER) -> Path:
    """Write a GPT-2-shaped model folder with random weights (seed 0) and the real 50,257-token GPT-2 tokenizer:
    ``GPT2Config()`` itself (124 M parameters, the benchmarks' shape), or with ``small`` 2 layers of width 64 (the
    offline stand-in for GPT-2 that ``pipeline --profile gpt2-smoke --base-model PATH`` runs in seconds). It loads
    with ``from_pretrained`` like the hub's ``gpt2``. Returns ``out``."""
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file() and not (tokenizer_dir / "vocab.json").is_file():
        raise FileNotFoundError(f"a GPT-2-shaped model needs the GPT-2 tokenizer files in {tokenizer_dir} (the "
                                "course's shared folder, next to the repository); copy them there, or use --model tiny")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    cfg = GPT2Config(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                     **(SMALL_GPT2 if small else {}))
    with atomic_dir(out, "gpt2-shape") as tmp, hf_bars_off():
        GPT2LMHeadModel(cfg).save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return Path(out)




def gpt2_shape_command(out: str, small: bool = False) -> dict:
    """``gpt2-shape``: write the model folder (:func:`write_gpt2_shape`)."""
    check_output_dir(out, "gpt2-shape")
    path = write_gpt2_shape(out, small=small)
    print(f"wrote a GPT-2-shaped model with random weights{' (2 layers, width 64)' if small else ''} and GPT-2's "
          f"tokenizer to {path}; use it with --base-model {path}")
    return {"out": str(path)}
