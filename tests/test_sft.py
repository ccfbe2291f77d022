import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlhf_lite.config import LoRAConfig, SFTConfig, get_profile
from rlhf_lite.data import SFTCollator, build_sft_example, format_prompt, load_instruction_dataset
from rlhf_lite.models import load_base
from rlhf_lite.sft import add_lora, count_parameters, load_quantized, sft_loss, train_sft

GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "gpt2-tokenizer"


def test_sft_loss_by_hand():
    # position 0 predicts label[1] = 1 with logits [0, ln 3]: p = 3/4; position 1 predicts label[2] = 0 with [0, 0]: p =
    # 1/2
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    assert sft_loss(logits, labels).item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
    labels = torch.tensor([[-100, -100, 0]])  # only the second prediction counts
    assert sft_loss(logits, labels).item() == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="no supervised tokens"):
        sft_loss(logits, torch.full((1, 3), -100))


def test_lora_on_gpt2_conv1d():
    model, tok = load_base("tiny")
    before = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    peft_model = add_lora(model, SFTConfig(), LoRAConfig(r=16))
    cfg = peft_model.peft_config["default"]
    assert cfg.fan_in_fan_out is True  # GPT-2's Conv1D stores weights (in, out)
    # 4 layers x r x (c_attn 192+576, attn c_proj 192+192, c_fc 192+768, mlp c_proj 768+192)
    assert count_parameters(peft_model)["trainable"] == 4 * 16 * (768 + 384 + 960 + 960)
    after = peft_model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.allclose(before, after)  # B = 0 at init: the adapter starts as the identity
    with pytest.raises(ValueError, match="set LoRAConfig.targets"):  # the one place every stage reads them from
        add_lora(load_base("tiny")[0], SFTConfig(), LoRAConfig(targets=("q_proj",)))


@pytest.fixture(scope="module")
def smoke_run():
    prof = get_profile("smoke")
    model, tok = load_base("tiny")
    data = load_instruction_dataset("tinyworld")
    peft_model = add_lora(model, prof.sft)
    history = train_sft(peft_model, tok, data, prof.sft, progress=False)
    return prof, peft_model, tok, data, history


@pytest.mark.slow
def test_smoke_sft_lowers_validation_loss_and_teaches_the_content(smoke_run, world):
    from rlhf_lite.evaluate import gold_eval

    prof, peft_model, tok, data, history = smoke_run
    losses = [e["loss"] for e in history["eval"]]
    assert losses[-1] < losses[0] - 0.5
    assert len(history["train"]) == prof.sft.max_steps and history["samples"]
    tasks = world.splits["test"][:32]
    sft = gold_eval(peft_model, tok, world, tasks, max_new_tokens=prof.max_new_tokens, seed=0)
    with peft_model.disable_adapter():  # the same weights without the adapter: the base model
        base = gold_eval(peft_model, tok, world, tasks, max_new_tokens=prof.max_new_tokens, seed=0)
    # what the demonstrations teach moves the right way: the right content, politely, to the point. (The gold
    # score as a whole need not rise after smoke's 40 steps: the panel reads, and the barely-trained model is
    # less fluent than the base; the tiny profile's gold gain is measured by the pipeline, notebook 06 asserts it.)
    s, b = sft["criteria"], base["criteria"]
    assert s["correct"] > b["correct"] + 0.05 and s["concise"] > b["concise"] + 0.05, (s, b)
    assert s["polite"] >= b["polite"], (s, b)


@pytest.mark.slow
def test_adapter_save_and_merge(smoke_run, tmp_path):
    from peft import PeftModel

    _, peft_model, tok, _, _ = smoke_run
    x = torch.tensor([[5, 6, 7, 8]])
    want = peft_model(input_ids=x).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    base, _ = load_base("tiny")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert torch.allclose(reloaded(input_ids=x).logits, want, atol=1e-5)
    merged = reloaded.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(merged(input_ids=x).logits, want, atol=1e-4)


@pytest.mark.slow
def test_full_finetuning_also_trains(world):
    model, tok = load_base("tiny")
    cfg = replace(get_profile("smoke").sft, lora=False, max_steps=3, lr=1e-4, eval_every=3, n_samples=0)
    data = load_instruction_dataset("tinyworld")
    w0 = model.lm_head.weight.detach().clone()
    h = train_sft(model, tok, data, cfg, progress=False)
    assert len(h["train"]) == 3 and not torch.equal(w0, model.lm_head.weight)


@pytest.mark.skipif(not GPT2_DIR.is_dir(), reason="../shared/gpt2-tokenizer not present")
@pytest.mark.slow
def test_gpt2_code_path_offline():
    """A 2-layer random GPT-2 with the real 50,257-token tokenizer: one SFT step, as the gpt2 profile runs it."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(GPT2_DIR)
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=512))
    peft_model = add_lora(model, SFTConfig(), LoRAConfig(r=4))
    data = {"train": [{"instruction": "Name a colour.", "context": "", "response": "Red.",
                       "category": "brainstorming"}] * 4,
            "validation": [{"instruction": "Name an animal.", "context": "", "response": "Fox.",
                            "category": "brainstorming"}]}
    cfg = replace(get_profile("gpt2-hub").sft, max_steps=1, batch_size=4, eval_every=1, n_samples=1, max_new_tokens=4,
                  lr=1e-2)
    h = train_sft(peft_model, tok, data, cfg, progress=False)
    assert len(h["train"]) == 1 and math.isfinite(h["train"][0]["loss"]) and len(h["eval"]) == 2
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the step moved the adapters off zero


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
@pytest.mark.slow
def test_qlora_loads_and_trains_or_says_why_not(bits, capsys):
    model, tok, mode = load_quantized("tiny", bits)
    out = capsys.readouterr().out
    assert mode == bits or (mode == "none" and out.count("\n") == 1 and "not available" in out)
    peft_model = add_lora(model, SFTConfig())
    ex = build_sft_example(tok, format_prompt("Hi"), "Hello.", 64)
    batch = SFTCollator(tok.pad_token_id)([ex, ex])
    loss = sft_loss(peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                    batch["labels"])
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)
    if mode != "none":
        assert model.get_memory_footprint() < load_base("tiny")[0].get_memory_footprint() / 2


def test_adapter_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    a = add_lora(load_base("tiny")[0], SFTConfig(seed=7))
    state = torch.random.get_rng_state()
    torch.rand(5)  # consume global randomness between the two
    b = add_lora(load_base("tiny")[0], SFTConfig(seed=7))
    pa = {n: p for n, p in a.named_parameters() if "lora_A" in n}
    pb = {n: p for n, p in b.named_parameters() if "lora_A" in n}
    assert pa and all(torch.equal(pa[n], pb[n]) for n in pa)
    torch.manual_seed(123)
    assert torch.equal(torch.random.get_rng_state(), state)  # add_lora did not advance the caller's RNG
