"""Bad inputs and faults, one probe per test: each stops with a message that names the file, field or setting and
what to do, and nothing the user wrote is lost. Fast (no training): part of `pytest -m "not slow"`."""
import json
import math
import os
import pickle
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlhf_lite.__main__ import main
from rlhf_lite.config import DPOConfig, GRPOConfig, PPOConfig, RewardConfig, SFTConfig, validate_config
from rlhf_lite.course.student import read_notebook
from rlhf_lite.data import DataFormatError, read_records
from rlhf_lite.feedback import RankingStore, load_preference_dataset, read_comparisons, split_hh
from rlhf_lite.files import OUTPUT_MARKER, atomic_dir, check_output_dir, load_state, save_state
from rlhf_lite.models import TINY_BASE, generate, load_base
from rlhf_lite.runtime import check_finite, optimizer_step, warmup_linear_schedule

PACKAGE = Path(__file__).resolve().parent.parent / "rlhf_lite"


def rec(i=0, k=3, ranking=None):
    return {"prompt_id": f"p{i}", "user_id": "u0", "labeler": "ada", "prompt": f"Q{i}\n",
            "responses": [f"answer {j}" for j in range(k)], "ranking": ranking or list(range(k)),
            "finished": [True] * k}


# ---------------------------------------------------------------------------------------------
# 1. --out never deletes what the command did not write
# ---------------------------------------------------------------------------------------------
def test_pretrain_refuses_a_folder_with_your_files_and_keeps_them(tmp_path, capsys):
    w = tmp_path / "w"
    w.mkdir()
    (w / "thesis.txt").write_text("x")
    assert main(["--profile", "smoke", "pretrain", "--out", str(w)]) == 2
    assert "thesis.txt" in capsys.readouterr().err and (w / "thesis.txt").read_text() == "x"


def test_pretrain_refuses_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    assert main(["--profile", "smoke", "pretrain", "--out", "."]) == 2
    assert "current folder" in capsys.readouterr().err and (tmp_path / "notes.md").is_file()


@pytest.mark.parametrize("kind", ["sft", "reward"])
def test_sft_and_reward_out_refuse_foreign_files_before_training(tmp_path, capsys, kind):
    (tmp_path / "mine.txt").write_text("x")
    assert main(["--profile", "smoke", kind, "--out", str(tmp_path)]) == 2
    assert "mine.txt" in capsys.readouterr().err and (tmp_path / "mine.txt").is_file()


def test_atomic_dir_replaces_only_its_own_previous_output(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out, "sft") as tmp:
        (tmp / "a.txt").write_text("1")
    assert json.loads((out / OUTPUT_MARKER).read_text()) == {"kind": "sft", "files": ["a.txt"]}
    with atomic_dir(out, "sft") as tmp:  # a previous output of the same command: replaced
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "b.txt"]
    with pytest.raises(ValueError, match="did not write"):  # another command's output
        check_output_dir(out, "reward")
    (out / "added-by-hand.txt").write_text("keep me")
    with pytest.raises(ValueError, match="added-by-hand.txt"):
        with atomic_dir(out, "sft"):
            pass
    assert (out / "added-by-hand.txt").is_file() and not list(tmp_path.glob(".run.partial-*"))
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(out / "b.txt", "sft")


def test_the_shipped_model_folder_is_a_pretrain_output():
    check_output_dir(TINY_BASE, "pretrain")  # the rebuild hint `pretrain --out data/tiny-base` works


# ---------------------------------------------------------------------------------------------
# 2–3. The ranking store keeps every acknowledged record
# ---------------------------------------------------------------------------------------------
def test_a_valid_last_record_without_newline_is_kept_by_both_readers(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n" + json.dumps(rec(1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["prompt_id"] for r in read_comparisons(path)] == ["p0", "p1"]
        store = RankingStore(path)
        assert [r["prompt_id"] for r in store.load()] == ["p0", "p1"]
        store.append(rec(2))
        assert [r["prompt_id"] for r in store.load()] == ["p0", "p1", "p2"]


def test_append_after_a_tear_by_another_writer_never_glues(tmp_path):
    path = tmp_path / "c.jsonl"
    line = (json.dumps(rec(1)) + "\n").encode()
    for cut in range(len(line)):  # the other writer dies after every possible byte of its record
        path.write_bytes((json.dumps(rec(0)) + "\n").encode())
        early = RankingStore(path)  # opened before the tear
        with open(path, "ab") as f:
            f.write(line[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            early.append(rec(2))
            ids = [r["prompt_id"] for r in read_comparisons(path)]
        assert ids in (["p0", "p2"], ["p0", "p1", "p2"]), (cut, ids)
        assert path.read_bytes().endswith(b"\n")


def test_extend_validates_every_record_before_writing_any(tmp_path):
    store = RankingStore(tmp_path / "c.jsonl")
    with pytest.raises(DataFormatError, match="new record 2 of 2"):
        store.extend([rec(0), rec(1, ranking=[0, 0, 1])])
    assert store.load() == []


def test_a_float_ranking_is_rejected_when_stored(tmp_path):
    with pytest.raises(DataFormatError, match="whole-number"):
        RankingStore(tmp_path / "c.jsonl").append(rec(0, ranking=[2.0, 0.0, 1.0]))


def test_invalid_utf8_in_the_store_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes((json.dumps(rec(0)) + "\n").encode() + b'{"prompt": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"line 2: not valid UTF-8"):
        RankingStore(path).load()


def test_a_folder_as_ranking_store_is_a_clear_error(tmp_path):
    with pytest.raises(DataFormatError, match="is a folder"):
        RankingStore(tmp_path)


# ---------------------------------------------------------------------------------------------
# 4. Checkpoints are data, never code
# ---------------------------------------------------------------------------------------------
def test_no_pickle_is_ever_loaded():
    for f in PACKAGE.rglob("*.py"):
        src = f.read_text()
        assert "torch.load(" not in src and "pickle.load" not in src, f


def test_checkpoint_state_roundtrips_exactly(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))])
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    state = {"step": 3, "beta": 0.2, "history": [{"kl": 0.1, "ev": float("nan")}], "none": None,
             "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "order": torch.randperm(5)}
    save_state(tmp_path / "c.safetensors", state)
    back = load_state(tmp_path / "c.safetensors")
    assert back["step"] == 3 and back["none"] is None and math.isnan(back["history"][0]["ev"])
    assert torch.equal(back["rng"], state["rng"]) and torch.equal(back["order"], state["order"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples stay tuples
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "ppo_checkpoint.safetensors"
    bad.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(ValueError, match="not a readable rlhf-lite checkpoint"):
        load_state(bad)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# 5. A notebook that is not one (the grader's own tests are in test_grader.py)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["[]", "{}", '{"cells": 3}', "not json"])
def test_a_broken_notebook_is_named(tmp_path, content):
    broken = tmp_path / "broken.ipynb"
    broken.write_text(content)
    with pytest.raises(ValueError, match="broken.ipynb"):
        read_notebook(broken)


# ---------------------------------------------------------------------------------------------
# 6. A model folder is checked against its config before a model is built
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(TINY_BASE, dst)
    return dst


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, message", [
    ({"n_layer": 6}, "missing from the weights: h.4"),
    ({"n_layer": 2}, "not in the config: h.2"),
    ({"vocab_size": 4096}, "wrong shape"),
    ({"model_type": "llama"}, "disagree"),
])
def test_config_that_disagrees_with_the_weights(model_copy, changes, message):
    edit_config(model_copy, **changes)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_base(str(model_copy))


def test_missing_tokenizer_vocabulary(model_copy):
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no vocabulary"):
        load_base(str(model_copy))


# ---------------------------------------------------------------------------------------------
# 7. Numbers are checked where they come in
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, option", [
    (["ppo", "--steps", "0"], "--steps"), (["ppo", "--steps", "-1"], "--steps"), (["ppo", "--beta", "nan"], "--beta"),
    (["ppo", "--ptx", "-1"], "--ptx"), (["evaluate", "--n", "-30"], "--n"), (["evaluate", "--n", "0"], "--n"),
    (["world", "--show", "-1"], "--show"), (["sft", "--epochs", "0"], "--epochs"),
    (["reward", "--epochs", "0"], "--epochs"), (["reward", "--lr", "0"], "--lr"), (["reward", "--lr", "inf"], "--lr"),
                                          (["pretrain", "--out", "x", "--steps", "0"],
                                                                                   "--steps"),
])
def test_cli_numbers_out_of_range(capsys, argv, option):
    with pytest.raises(SystemExit) as e:
        main(["--profile", "smoke", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tiny():
    return load_base("tiny")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"prompts": ""}, TypeError, "list of strings"), ({"prompts": [""]}, ValueError, "prompt 0 is empty"),
    ({"temperature": -1.0}, ValueError, "temperature must be a number ≥"), ({"temperature": 0.0}, ValueError, "greedy"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
])
def test_generate_checks_its_arguments(tiny, kwargs, error, message):
    model, tok = tiny
    args = {"prompts": ["Hello"], "max_new_tokens": 3, **kwargs}
    with pytest.raises(error, match=message):
        generate(model, tok, **args)
    assert generate(model, tok, [], 3) == []


@pytest.mark.parametrize("cfg, message", [
    (PPOConfig(init_kl_coef=float("nan")), "PPOConfig.init_kl_coef must be a finite"), (PPOConfig(steps=0), "steps"),
    (PPOConfig(lam=1.5), "between 0 and 1"), (SFTConfig(lr=-1e-3), "SFTConfig.lr"),
                                          (RewardConfig(batch_size=0), "batch_size"),
    (DPOConfig(beta=0), "DPOConfig.beta"), (GRPOConfig(temperature=float("inf")), "temperature"),
])
def test_stage_configs_are_validated(cfg, message):
    with pytest.raises(ValueError, match=message):
        validate_config(cfg)
    validate_config(replace(cfg.__class__()))  # the defaults are valid


# ---------------------------------------------------------------------------------------------
# 8. An unusable output location fails before any work
# ---------------------------------------------------------------------------------------------
def test_ppo_out_unwritable_or_a_file_fails_before_training(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["--profile", "smoke", "ppo", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(OSError, match="/proc/x"):
        check_output_dir("/proc/x", "ppo")


def test_ppo_out_with_an_earlier_checkpoint_needs_resume(tmp_path, capsys):
    from rlhf_lite.files import open_output_dir
    from rlhf_lite.policy_stages import PPO_FILES

    open_output_dir(tmp_path / "run", "ppo", PPO_FILES)  # an earlier PPO run's folder, with its checkpoint
    (tmp_path / "run" / "ppo_checkpoint.safetensors").write_bytes(b"")
    assert main(["--profile", "smoke", "ppo", "--out", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 9. Data files
# ---------------------------------------------------------------------------------------------
HEADER = "instruction,context,response,category\n"


def test_csv_row_with_extra_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(HEADER + "Say hi,,Hi,open_qa\nSay bye,,Bye,open_qa,oops\n")
    with pytest.raises(DataFormatError, match=r"d.csv, line 3: 1 more cell"):
        read_records(p)


def test_csv_with_a_byte_order_mark(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes("\ufeff".encode() + (HEADER + "Say hi,,Hi,open_qa\n").encode())
    assert read_records(p)[0]["instruction"] == "Say hi"


@pytest.mark.parametrize("sep", ["\u2028", "\u0085", "\r"])
def test_jsonl_with_unicode_line_separators_inside_strings(tmp_path, sep):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"instruction": f"a{sep}b", "context": "", "response": "c", "category": "open_qa"},
                            ensure_ascii=False) + "\n", encoding="utf-8", newline="")
    assert read_records(p)[0]["instruction"] == f"a{sep}b"


def test_a_folder_passed_as_data_file(tmp_path):
    with pytest.raises(DataFormatError, match="is a folder"):
        read_records(tmp_path)


def test_hh_pair_that_diverges_before_the_last_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao"
    rejected = "\n\nHuman: hi\n\nAssistant: go away\n\nHuman: bye\n\nAssistant: ciao"
    with pytest.raises(DataFormatError, match="differ before their last Assistant turn"):
        split_hh(chosen, rejected)


def test_chosen_equal_to_rejected_is_dropped_and_counted(tmp_path):
    p = tmp_path / "p.jsonl"
    rows = [{"prompt": "Q", "chosen": "a", "rejected": "a"}, {"prompt": "Q", "chosen": "a", "rejected": "b"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match="dropped 1 of 2 rows"):
        assert len(load_preference_dataset(str(p))) == 1


# ---------------------------------------------------------------------------------------------
# 10. A NaN stops at the step that produced it, showing the bad values
# ---------------------------------------------------------------------------------------------
def test_check_finite_shows_the_values_that_are_not_finite():
    with pytest.raises(FloatingPointError, match=r"2 of 4 values: nan at \(1,\), inf at \(3,\)"):
        check_finite(torch.tensor([1.0, float("nan"), 2.0, float("inf")]), "PPO step 3: reward", "hint")


def test_a_non_finite_gradient_stops_before_the_update():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = warmup_linear_schedule(opt, 0, 10)
    loss = torch.sqrt(w).sum()  # finite loss (0), infinite gradient at 0
    with pytest.raises(FloatingPointError, match="SFT step 5: the gradient is not finite"):
        optimizer_step(loss, [w], opt, sched, 1.0, "SFT step 5")
    assert torch.equal(w.detach(), torch.zeros(2))  # the update was not applied


def test_student_notebooks_never_overwrite_a_students_own_notebook(tmp_path):
    from rlhf_lite.course.student import write_student_notebooks

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "00_a.ipynb").write_text((PACKAGE.parent / "notebooks" / "00_tour.ipynb").read_text())
    write_student_notebooks(out, src)
    write_student_notebooks(out, src)  # its own earlier output: replaced
    (out / "00_a.ipynb").unlink()
    (out / ".rlhf-lite-student-notebooks.json").unlink()
    (out / "00_a.ipynb").write_text("my work")
    with pytest.raises(ValueError, match="00_a.ipynb, not written by student-notebooks"):
        write_student_notebooks(out, src)
    assert (out / "00_a.ipynb").read_text() == "my work"
