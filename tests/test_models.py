import shutil
from pathlib import Path

import pytest
import torch

from rlhf_lite.config import LoRAConfig
from rlhf_lite.data import format_prompt
from rlhf_lite.models import TINY_BASE, add_lora_adapters, generate, load_base, sample_tokens

GPT2_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "gpt2-tokenizer"


@pytest.fixture(scope="module")
def base():
    return load_base("tiny")


def test_shipped_checkpoint_loads_with_from_pretrained():
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    model = AutoModelForCausalLM.from_pretrained(TINY_BASE)
    tok = AutoTokenizer.from_pretrained(TINY_BASE)
    assert isinstance(model, GPT2LMHeadModel)
    assert 1_000_000 <= model.num_parameters() <= 5_000_000
    assert model.config.n_positions >= 256
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == model.config.eos_token_id
    weights = list(TINY_BASE.glob("*.safetensors"))
    assert len(weights) == 1 and weights[0].stat().st_size <= 25 * 2**20
    assert (TINY_BASE / "README.md").read_text().count("held-out loss") >= 1


def test_tokenizer_round_trip(base, world):
    _, tok = base
    texts = [t for t, _ in world.corpus(50)] + ["naïve café — 😀 ümlaut", "  spaces\n\nand\ttabs  ", ""]
    for text in texts:  # the tokenizer marks the first word with a space (add_prefix_space), nothing else changes
        marked = text if not text or text.startswith(" ") else " " + text
        assert tok.decode(tok(text)["input_ids"]) == marked
    ids = tok("Hello" + tok.eos_token)["input_ids"]
    assert ids[-1] == tok.eos_token_id  # the special token is one token, not spelled out


def test_a_word_is_one_token_at_the_start_of_an_answer_too(base):
    """"Sure" opens an answer as the same well-trained token as inside a sentence, not spelled out in pieces."""
    _, tok = base
    assert tok.add_prefix_space
    for word in ("Sure", "Dear", "Happy"):
        first = tok(f"{word}! Yes.")["input_ids"][0]
        inside = tok(f"Yes. {word}!")["input_ids"]
        assert first in inside and len(tok.convert_ids_to_tokens([first])[0]) == len(word) + 1  # "Ġ" + the word


def test_generated_text_round_trips_to_its_tokens(base):
    """generate drops the first word's marker space; encoding the text again gives the sampled tokens back (the
    reward model and PPO score the same tokens the policy chose)."""
    model, tok = base
    prompts = ["Notes about the fox.\nThe fox lives in the", "The owl eats", "Some facts about the frog.\nThe frog"]
    gens = generate(model, tok, prompts * 4, max_new_tokens=12, seed=0)  # mid-sentence: the next word is "Ġ…"
    marked = [g for g in gens if tok.convert_ids_to_tokens(g.token_ids[:1])[0].startswith("Ġ")]
    assert len(marked) >= 6
    for g in marked:
        assert not g.text.startswith(" ")
        assert tok(g.text)["input_ids"] == g.token_ids, g.text


def test_load_base_sets_pad_side_dtype_and_eval(base):
    model, tok = base
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "left"
    assert model.config.pad_token_id == tok.pad_token_id
    assert next(model.parameters()).dtype == torch.float32 and not model.training


def test_generate_left_pads_and_stops_at_eos(base):
    model, tok = base
    prompts = [format_prompt("Where does the fox live?"), format_prompt("Hi")]
    a = generate(model, tok, prompts, max_new_tokens=12, seed=3)
    b = generate(model, tok, prompts, max_new_tokens=12, seed=3)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]  # seeded: repeatable
    for g in a:
        assert tok.eos_token_id not in g.token_ids and len(g.token_ids) <= 12
        assert g.finished or len(g.token_ids) == 12
    # left padding must not change what a prompt generates: alone or next to a longer one, greedy is the same
    alone = generate(model, tok, prompts[1:], max_new_tokens=8, do_sample=False)
    batched = generate(model, tok, prompts, max_new_tokens=8, do_sample=False)
    assert alone[0].token_ids == batched[1].token_ids
    assert tok.padding_side == "left"


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.7}, {"top_k": 20}, {"do_sample": False}])
def test_sample_tokens_matches_hf_generate(base, world, kwargs):
    """Our decoding loop (grouped prefill, finished rows leaving the batch) samples exactly the tokens
    ``model.generate`` samples with the same seed, on the base model and on a LoRA policy."""
    model, tok = base
    prompts = [format_prompt(t.instruction, t.context) for t in world.splits["train"][:24]]
    enc = tok(prompts, return_tensors="pt", padding=True)
    lengths = enc["attention_mask"].sum(1)
    assert lengths.max() - lengths.min() > 10  # ragged prompts: the grouped prefill has padding to remove
    policy = add_lora_adapters(load_base("tiny")[0], LoRAConfig(r=4, alpha=8, targets=("c_attn",)), seed=1)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for name, p in policy.named_parameters():  # non-zero B: the adapters change the outputs
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=g)
    for m in (model, policy.eval()):
        torch.manual_seed(5)
        ours = sample_tokens(m, enc["input_ids"], enc["attention_mask"], 40, tok.eos_token_id, **kwargs)
        torch.manual_seed(5)
        do_sample = kwargs.get("do_sample", True)
        ref = m.generate(**enc, max_new_tokens=40, do_sample=do_sample,
                         temperature=kwargs.get("temperature") if do_sample else None,
                         top_k=kwargs.get("top_k") if do_sample else None, top_p=None, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)[:, enc["input_ids"].size(1):]
        assert torch.equal(ours[:, :ref.size(1)], ref)
        assert (ours[:, ref.size(1):] == tok.eos_token_id).all()  # generate stopped once every row had ended
        ends = torch.where((ref == tok.eos_token_id).any(1), (ref == tok.eos_token_id).int().argmax(1), ref.size(1))
        assert len(set(ends.tolist())) > 3  # rows left the batch at different steps


def test_corrupt_or_incomplete_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "ckpt"
    shutil.copytree(TINY_BASE, bad)
    w = next(bad.glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_base(str(bad))
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_base(str(bad))
    (bad / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_base(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_base(str(tmp_path / "nowhere"))


def test_unknown_hub_model_offline_suggests_tiny(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="load_base\\('tiny'\\)"):
        load_base("no-such-org/no-such-model")


@pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason="../shared/gpt2-tokenizer not present")
def test_real_gpt2_tokenizer_path():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    assert len(tok) == 50257 and tok.eos_token_id == 50256 and tok("Hello world").input_ids == [15496, 995]
    prompt = format_prompt("Name three animals.")
    assert tok.decode(tok(prompt).input_ids) == prompt


def test_base_model_is_raw_not_aligned(base, world):
    """The base continues text instead of answering: its gold score is far below the references'."""
    from rlhf_lite.evaluate import gold_eval

    model, tok = base
    r = gold_eval(model, tok, world, world.splits["test"][:48], max_new_tokens=48, seed=0)
    assert r["reference_gold"] > 0.95
    assert r["gold"] < r["reference_gold"] - 0.25, r["gold"]


def test_every_world_prompt_fits_the_context_with_room_to_answer(base):
    """Prompt + max_new_tokens must fit n_positions, or generation cannot run on that prompt."""
    from rlhf_lite.config import get_profile
    from rlhf_lite.world import build_world

    model, tok = base
    prof, wc = get_profile("tiny"), get_profile("tiny").world
    world = build_world(wc.seed, wc.n_prompts, wc.mix)
    longest = max(len(tok(format_prompt(t.instruction, t.context)).input_ids) for t in world.tasks)
    assert longest + prof.max_new_tokens <= model.config.n_positions, longest


def test_too_long_prompt_is_a_clear_error(base):
    model, tok = base
    with pytest.raises(ValueError, match="does not fit the model's context of 256 tokens"):
        generate(model, tok, ["fox " * 250], max_new_tokens=16)
