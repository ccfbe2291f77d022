"""The TRL bridge's translations (no TRL needed) and its message when TRL is missing."""
import sys

import pytest
import torch

from rlhf_lite.config import SFTConfig
from rlhf_lite.course.trl_bridge import (
    TRL_HINT,
    preference_rows,
    require_trl,
    rm_reward_function,
    sft_rows,
    sft_token_rows,
)
from rlhf_lite.data import build_sft_example
from rlhf_lite.models import load_base
from rlhf_lite.runtime import MemoryMonitor


def test_rows_in_trl_formats():
    _, tok = load_base("tiny")
    rows = sft_rows([{"instruction": "Name a river.", "context": "", "response": "The Nile."}], tok)
    assert rows == [{"prompt": "### Instruction:\nName a river.\n\n### Response:\n", "completion": "The Nile."}]
    # what trl_sft trains on: our own SFT example token for token, the mask where our labels are kept (EOS too)
    rec = {"instruction": "Name a river.", "context": "", "response": "The Nile.", "category": "open_qa"}
    (tokens,) = sft_token_rows([rec], tok, SFTConfig())
    ours = build_sft_example(tok, rows[0]["prompt"], "The Nile.", 256)
    assert tokens["input_ids"] == ours["input_ids"] and tokens["input_ids"][-1] == tok.eos_token_id
    assert tokens["completion_mask"] == [int(l != -100) for l in ours["labels"]] and tokens["completion_mask"][-1] == 1
    recs = [{"prompt": "P", "responses": ["a", "b", "c", "d"], "ranking": [3, [0, 2], 1]}]
    assert [(r["chosen"], r["rejected"]) for r in preference_rows(recs)] == \
        [("d", "a"), ("d", "c"), ("d", "b"), ("a", "b"), ("c", "b")]  # the tie (a, c) gives no row


def test_missing_trl_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ImportError
    from rlhf_lite.course.trl_bridge import trl_version

    assert trl_version() is None
    with pytest.raises(ImportError, match=r"rlhf-lite\[trl\]"):
        require_trl()
    assert "restart the kernel" in TRL_HINT


@pytest.mark.slow
def test_rm_reward_function_reads_eos_from_completion_ids(world):
    from rlhf_lite.config import get_profile
    from rlhf_lite.reward import load_reward_model, score_responses
    from rlhf_lite.stages import reward_checkpoint

    rm, tok = load_reward_model(reward_checkpoint(get_profile("smoke"), progress=False))
    fn = rm_reward_function(rm, tok, no_eos_penalty=-1.0)
    prompts, texts = ["### Instruction:\nHi\n\n### Response:\n"] * 2, ["Hello!", "Hello"]
    ids = [tok(texts[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
           tok(texts[1], add_special_tokens=False)["input_ids"]]
    got = fn(prompts=prompts, completions=texts, completion_ids=ids)
    assert got[0] == pytest.approx(score_responses(rm, tok, prompts[:1], texts[:1], [True])[0], abs=1e-5)
    assert got[1] == -1.0  # never ended: the same penalty as our PPO and GRPO


def test_memory_monitor_sees_a_large_allocation():
    with MemoryMonitor() as m:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, alive until the block ends
        x += 1
    assert m.peak_mb > 40 and m.seconds >= 0
    del x
