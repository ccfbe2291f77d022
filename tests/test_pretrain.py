import math
from dataclasses import replace

import pytest

from rlhf_lite import pretrain as pt
from rlhf_lite.config import get_profile
from rlhf_lite.models import load_base

pytestmark = pytest.mark.slow  # pretrains smoke models


def test_smoke_pretraining_learns_and_saves_a_loadable_model(tmp_path):
    cfg = replace(get_profile("smoke").pretrain, steps=24, eval_every=6, lr=1e-2)
    card = pt.pretrain(cfg, tmp_path / "base", progress=False)
    losses = [h["heldout_loss"] for h in card["history"]]
    assert losses == sorted(losses, reverse=True)  # held-out loss falls at every evaluation
    assert losses[-1] < math.log(cfg.vocab_size) - 0.5  # well below a uniform guess over the vocabulary
    model, tok = load_base(str(tmp_path / "base"))
    assert model.num_parameters() == card["parameters"] and len(tok) == model.config.vocab_size
    assert (tmp_path / "base" / "README.md").is_file() and (tmp_path / "base" / "training.json").is_file()


def test_seeded_pretraining_is_reproducible(tmp_path):
    cfg = replace(get_profile("smoke").pretrain, steps=4, eval_every=2)
    a = pt.pretrain(cfg, tmp_path / "a", progress=False)
    b = pt.pretrain(cfg, tmp_path / "b", progress=False)
    assert a["history"] == b["history"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_failure_leaves_nothing_half_written(tmp_path, monkeypatch):
    def boom(card):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pt, "model_card", boom)
    cfg = replace(get_profile("smoke").pretrain, steps=2, eval_every=2)
    with pytest.raises(RuntimeError, match="disk full"):
        pt.pretrain(cfg, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_nan_loss_stops_with_a_message(tmp_path):
    cfg = replace(get_profile("smoke").pretrain, steps=3, lr=1e30, warmup_steps=1)
    with pytest.raises(FloatingPointError, match="pretraining step [0-9]+: the loss is not finite.*Lower Pretrain"):
        pt.pretrain(cfg, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan").exists()
