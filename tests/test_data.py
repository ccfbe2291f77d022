import json
import math
import warnings
from pathlib import Path

import pytest

from rlhf_lite.data import (
    CHAT_TEMPLATES,
    IGNORE_INDEX,
    DataFormatError,
    SFTCollator,
    TruncationWarning,
    build_chat_example,
    build_sft_example,
    format_prompt,
    load_instruction_dataset,
    render_prompt,
    show_tokens,
    to_messages,
)
from rlhf_lite.models import TINY_BASE

GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "gpt2-tokenizer"
needs_gpt2 = pytest.mark.skipif(not GPT2_DIR.is_dir(), reason="../shared/gpt2-tokenizer not present")


@pytest.fixture(scope="module")
def gpt2_tok():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GPT2_DIR)
    tok.pad_token = tok.eos_token  # as load_base does: pad == eos
    return tok


@pytest.fixture(scope="module")
def tiny_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_BASE)


@pytest.fixture(scope="module")
def tiny_tok_with_pad():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_BASE)
    tok.add_special_tokens({"pad_token": "<|pad|>"})
    assert tok.pad_token_id != tok.eos_token_id
    return tok


@needs_gpt2
def test_mask_by_hand_with_gpt2_tokenizer_pad_equals_eos(gpt2_tok):
    ex = build_sft_example(gpt2_tok, format_prompt("Hi"), "Hello there.", 64)
    # "### Instruction:\nHi\n\n### Response:\n" in GPT-2 BPE, then "Hello there." and <|endoftext|>
    prompt = [21017, 46486, 25, 198, 17250, 198, 198, 21017, 18261, 25, 198]
    assert ex["input_ids"] == prompt + [15496, 612, 13, 50256]
    assert ex["labels"] == [-100] * 11 + [15496, 612, 13, 50256]  # the EOS label is kept although pad == eos
    assert ex["attention_mask"] == [1] * 15


@needs_gpt2
def test_collator_pads_right_and_keeps_the_real_eos_label(gpt2_tok):
    a = build_sft_example(gpt2_tok, format_prompt("Hi"), "Hello there.", 64)
    b = build_sft_example(gpt2_tok, format_prompt("Hi"), "Hello there, my good friend.", 64)
    batch = SFTCollator(gpt2_tok.pad_token_id)([a, b])
    n_pad = len(b["input_ids"]) - len(a["input_ids"])
    assert batch["input_ids"].shape == (2, len(b["input_ids"]))
    assert batch["input_ids"][0, -n_pad:].tolist() == [50256] * n_pad  # right padding, with the EOS id
    assert batch["attention_mask"][0].tolist() == [1] * len(a["input_ids"]) + [0] * n_pad
    assert batch["labels"][0].tolist() == a["labels"] + [IGNORE_INDEX] * n_pad
    assert batch["labels"][0, len(a["input_ids"]) - 1].item() == 50256  # the one real EOS: supervised


@needs_gpt2
def test_masking_by_pad_id_loses_the_eos_label(gpt2_tok):
    """The bug we avoid (trl#976): a collator that sets labels = -100 wherever input == pad id."""
    from transformers import DataCollatorForLanguageModeling

    ex = build_sft_example(gpt2_tok, format_prompt("Hi"), "Hello there.", 64)
    naive = DataCollatorForLanguageModeling(gpt2_tok, mlm=False)([{"input_ids": ex["input_ids"]}])
    assert naive["labels"][0, -1].item() == -100  # EOS unsupervised: the model never learns to stop


def test_mask_with_pad_different_from_eos(tiny_tok_with_pad):
    tok = tiny_tok_with_pad
    ex = build_sft_example(tok, format_prompt("Where does the fox live?"), "The fox lives in the forest.", 64)
    n_prompt = len(tok(format_prompt("Where does the fox live?"))["input_ids"])
    resp = tok("The fox lives in the forest.")["input_ids"]
    assert ex["labels"] == [-100] * n_prompt + resp + [tok.eos_token_id]
    batch = SFTCollator(tok.pad_token_id)([ex, build_sft_example(tok, format_prompt("Hi"), "Hi.", 64)])
    short = batch["input_ids"][1].tolist()
    assert short.count(tok.pad_token_id) > 0 and batch["labels"][1].tolist().count(tok.eos_token_id) == 1


def test_truncation_keeps_response_start_and_says_what_it_dropped(tiny_tok):
    tok = tiny_tok
    prompt, response = format_prompt("fox " * 60), "The fox lives in the forest."
    n_resp = len(tok(response)["input_ids"]) + 1
    with pytest.warns(TruncationWarning, match=r"dropped \d+ prompt tokens from the start"):
        ex = build_sft_example(tok, prompt, response, 40)
    assert len(ex["input_ids"]) == 40
    assert [l for l in ex["labels"] if l != -100] == tok(response)["input_ids"] + [tok.eos_token_id]
    # the response is encoded on its own, its first word marked with a space like every other word
    assert tok.decode(ex["input_ids"]).endswith("### Response:\n " + response + tok.eos_token)
    with pytest.warns(TruncationWarning, match=r"response tokens from the end \(EOS included\)"):
        ex = build_sft_example(tok, format_prompt("Hi"), "The fox lives in the forest. " * 10, 30)
    assert len(ex["input_ids"]) == 30 and ex["labels"][-1] != tok.eos_token_id
    assert sum(l != -100 for l in ex["labels"]) >= 15  # the response start is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_sft_example(tok, format_prompt("Hi"), "Hi.", 40 + n_resp)  # fits: no warning


@pytest.mark.parametrize("template", sorted(CHAT_TEMPLATES))
@pytest.mark.parametrize("which", ["tiny", pytest.param("gpt2", marks=needs_gpt2)])
def test_chat_template_mask_is_the_response_span(template, which, tiny_tok, request):
    tok = tiny_tok if which == "tiny" else request.getfixturevalue("gpt2_tok")
    response = "The fox lives in the forest."
    msgs = to_messages("Where does the fox live?", "Some context.", response)
    ex = build_chat_example(tok, msgs, 512, template)
    supervised = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    lead = " " if template == "llama2" else ""
    assert tok.decode(supervised) == lead + response + tok.eos_token
    # round trip: the rendered text tokenizes to the same ids
    text = tok.apply_chat_template(msgs, chat_template=CHAT_TEMPLATES[template], tokenize=False)
    assert tok(text, add_special_tokens=False)["input_ids"] == ex["input_ids"]
    # the generation prompt is exactly what precedes the response in training
    prompt = render_prompt(tok, "Where does the fox live?", "Some context.", template)
    assert text.startswith(prompt) and text[len(prompt):].startswith(lead + response)
    assert "Some context." in prompt and "Where does the fox live?" in prompt


def test_token_view(tiny_tok):
    ex = build_sft_example(tiny_tok, format_prompt("Hi"), "Hello.", 64)
    with pytest.raises(ValueError, match="tokenizer.pad_token = tokenizer.eos_token"):
        SFTCollator(tiny_tok.pad_token_id)  # the raw tokenizer has no pad token
    batch = SFTCollator(tiny_tok.eos_token_id)([ex,
                                                build_sft_example(tiny_tok, format_prompt("Hi"), "Hello there, friend.",
                                                                  64)])
    view = show_tokens(tiny_tok, {k: v[0] for k, v in batch.items()})
    counts = view.counts()
    assert counts["eos"] == 1 and counts["pad"] > 0
    assert counts["prompt"] == sum(l == -100 for l in ex["labels"])
    assert "<|endoftext|>" in str(view) and "#7cc96a" in view._repr_html_()


# ---------------------------------------------------------------------------------------------- loaders
@pytest.fixture(scope="module")
def tinyworld():
    return load_instruction_dataset("tinyworld")


def test_tinyworld_loader_has_splits_and_dolly_columns(tinyworld):
    assert set(tinyworld) == {"train", "validation", "test"}
    for split in tinyworld.values():
        assert {"instruction", "context", "response", "category"} <= set(split.column_names)
    users = [set(tinyworld[s]["user_id"]) for s in tinyworld]
    assert not users[0] & users[1] and not users[0] & users[2]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_file_loads_identically_to_generated_data(tinyworld, tmp_path, suffix):
    rows = [dict(r) for r in tinyworld["train"]]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        import pandas as pd
        df = pd.DataFrame(rows)
        df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    loaded = load_instruction_dataset(str(path))
    got = loaded["train"].to_list() + loaded["validation"].to_list()
    assert sorted(got, key=lambda r: r["prompt_id"]) == sorted(rows, key=lambda r: r["prompt_id"])
    assert len(loaded["validation"]) == math.ceil(0.05 * len(rows))  # 5 % held out, as notebook 02 holds out


def test_a_one_list_source_gets_the_same_validation_split_every_time(tmp_path):
    """Dolly and local files come as one list: the same 5 % is held out for the SFT stage and notebook 02, and the
    RL prompts (the "train" split) never include it."""
    rows = [{"instruction": f"Name colour {i}.", "context": "", "response": "Red.", "category": "brainstorming"}
            for i in range(40)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_instruction_dataset(str(path)), load_instruction_dataset(str(path))
    assert a["validation"].to_list() == b["validation"].to_list() and len(a["validation"]) == 2
    assert not {r["instruction"] for r in a["validation"]} & {r["instruction"] for r in a["train"]}
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(rows[0]) + "\n")
    assert list(load_instruction_dataset(str(one))) == ["train"]  # one record: nothing to hold out


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(p)


GOOD = {"instruction": "Name a fox.", "context": "", "response": "Red.", "category": "brainstorming"}


@pytest.mark.parametrize("name,content,pattern", [
    ("a.jsonl", json.dumps({**{k: v for k, v in GOOD.items() if k != "instruction"}, "instrucion": "x"}),
     r"a\.jsonl, line 1: missing column\(s\) 'instruction' \(found 'instrucion': a misspelling\?\)"),
    ("b.jsonl", json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "response": "  "}),
     r"b\.jsonl, line 2: field 'response' is empty"),
    ("c.jsonl", json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "instruction": ""}),
     r"c\.jsonl, line 2: field 'instruction' is empty"),
    ("d.jsonl", json.dumps({**GOOD, "category": "brainstorm"}),
     r"d\.jsonl, line 1: unknown category 'brainstorm' \(did you mean 'brainstorming'\?\)"),
    ("e.jsonl", (json.dumps(GOOD) + "\n").encode() + b'{"instruction": "caf\xe9"}\n',
     r"e\.jsonl, line 2: not valid UTF-8"),
    ("f.jsonl", json.dumps(GOOD) + "\n" + json.dumps([1, 2]),
     r"f\.jsonl, line 2: expected a JSON object per line, got a JSON list"),
    ("g.jsonl", json.dumps(GOOD) + "\n{oops", r"g\.jsonl, line 2: invalid JSON"),
    ("h.json", json.dumps({"data": [GOOD]}), r"h\.json: expected a JSON list of records"),
    ("i.csv", "instruction,context,reponse,category\nx,,y,open_qa\n",
     r"i\.csv: missing column\(s\) 'response' \(found 'reponse'"),
    ("j.csv", "instruction,context,response,category\nx,,y,open_qa\nx,,,open_qa\n",
     r"j\.csv, line 3: field 'response' is empty"),
    ("k.txt", "hello", r"unsupported file type '\.txt'"),
    ("l.jsonl", json.dumps({**GOOD, "response": 3}), r"l\.jsonl, line 1: field 'response' must be text"),
])
def test_bad_input_names_file_line_and_field(tmp_path, name, content, pattern):
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError, match=pattern):
        load_instruction_dataset(path)


def test_missing_file_and_unknown_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_instruction_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="'tinyworld', 'dolly'"):
        load_instruction_dataset("dollly")


def test_offline_hub_suggests_the_tiny_profile(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="RLHF_LITE_PROFILE=tiny"):
        load_instruction_dataset("dolly")
