import pytest
import torch
import torch.nn.functional as F

from rlhf_lite.data import build_sft_example
from rlhf_lite.exercises import ExerciseError, check_build_sft_example, check_sft_loss
from rlhf_lite.models import load_base
from rlhf_lite.sft import sft_loss


def test_reference_passes(capsys):
    check_sft_loss(sft_loss)
    check_build_sft_example(build_sft_example, load_base("tiny")[1])
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("wrong,message", [
    (lambda lg, lb: F.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=-100), "next"),
    (lambda lg, lb: F.cross_entropy(lg[:, :-1].reshape(-1, lg.size(-1)), lb[:, 1:].reshape(-1), ignore_index=-100,
                                    reduction="sum"), "summed"),
    (lambda lg, lb: F.cross_entropy(lg[:, :-1].reshape(-1, lg.size(-1)), lb[:, 1:].clamp(min=0).reshape(-1)), "ignore_index"),
    (lambda lg, lb: torch.tensor([1.0]), "scalar"),
])
def test_sft_loss_mistakes_are_explained(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        check_sft_loss(wrong)


def test_build_sft_example_mistakes_are_explained():
    _, tok = load_base("tiny")

    def no_eos(tok, prompt, response, max_length):
        ex = build_sft_example(tok, prompt, response, max_length)
        return {k: v[:-1] for k, v in ex.items()}

    def eos_masked(tok, prompt, response, max_length):  # the pad == eos bug
        ex = build_sft_example(tok, prompt, response, max_length)
        ex["labels"] = [l if l != tok.pad_token_id else -100 for l in ex["labels"]]
        return ex

    def prompt_supervised(tok, prompt, response, max_length):
        ex = build_sft_example(tok, prompt, response, max_length)
        ex["labels"] = list(ex["input_ids"])
        return ex

    for fn, message in [(no_eos, "followed by the EOS"), (eos_masked, "EOS label is -100"),
                        (prompt_supervised, "prompt positions must have label -100")]:
        with pytest.raises(ExerciseError, match=message):
            check_build_sft_example(fn, tok)
