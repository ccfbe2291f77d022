"""Nothing of a user's is overwritten or lost: every command that writes follows one output-folder rule, temporary
files have unique names, a failed write keeps nothing half-done. One probe per test, each one that failed before
the rule was shared. Fast: every command here stops before any model is trained."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rlhf_lite.__main__ import main
from rlhf_lite.data import DataFormatError, read_records
from rlhf_lite.feedback import RankingStore
from rlhf_lite.files import (
    atomic_dir,
    atomic_file,
    check_model_folder,
    check_output_dir,
    load_state,
    open_output_dir,
    save_state,
)
from rlhf_lite.models import TINY_BASE

HEADER = "instruction,context,response,category\n"


def rec(i=0, k=2):
    return {"prompt": f"Q{i}\n", "responses": [f"answer {j}" for j in range(k)], "ranking": list(range(k)),
            "finished": [True] * k}


def sft_output(folder: Path) -> Path:
    """A folder as `python -m rlhf_lite sft --out` leaves it: the user's own adapter."""
    with atomic_dir(folder, "sft") as tmp:
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "adapter_config.json").write_text('{"mine": true}')
    return folder / "adapter" / "adapter_config.json"


# ---------------------------------------------------------------------------------------------
# One output-folder rule for every command that writes
# ---------------------------------------------------------------------------------------------
def test_ppo_never_writes_into_another_commands_output(tmp_path, capsys):
    adapter = sft_output(tmp_path / "sft")
    assert main(["--profile", "smoke", "ppo", "--out", str(tmp_path / "sft")]) == 2
    assert "did not write" in capsys.readouterr().err and adapter.read_text() == '{"mine": true}'


@pytest.mark.parametrize("out", [".", "/"])
def test_ppo_refuses_the_current_folder_and_the_root(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    assert main(["--profile", "smoke", "ppo", "--out", out]) == 2
    assert "current folder (or the root)" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_an_out_that_is_a_symbolic_link_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for argv in (["ppo", "--out"], ["sft", "--out"], ["pipeline", "--out"]):
        assert main(["--profile", "smoke", *argv, str(tmp_path / "link")]) == 2
        assert "symbolic link" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"] and not list((tmp_path / "real").iterdir())


def test_pipeline_never_overwrites_your_metrics(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text('{"mine": 1}')
    (tmp_path / "samples.json").write_text("[]")
    assert main(["--profile", "smoke", "pipeline", "--out", str(tmp_path)]) == 2
    assert "metrics.json" in capsys.readouterr().err
    assert (tmp_path / "metrics.json").read_text() == '{"mine": 1}' and (tmp_path / "samples.json").read_text() == "[]"


def test_an_open_output_folder_takes_only_its_own_files(tmp_path):
    out = open_output_dir(tmp_path / "run", "ppo", ("ppo_checkpoint.safetensors", "adapter", "adapter/*"))
    (out / "adapter").mkdir()
    (out / "adapter" / "weights.safetensors").write_text("x")
    open_output_dir(out, "ppo", ("ppo_checkpoint.safetensors", "adapter", "adapter/*"))  # its own: fine again
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        open_output_dir(out, "ppo", ("ppo_checkpoint.safetensors",))
    with pytest.raises(ValueError, match="did not write"):
        check_output_dir(out, "pipeline")  # another command's folder


@pytest.mark.parametrize("argv", [["notebook-times", "--recorded", "--only", "00"], ["bench", "--smoke", "--rows",
                                                                                  "dpo"]])
def test_result_files_of_yours_are_never_replaced(tmp_path, capsys, argv):
    mine = tmp_path / "R.json"
    mine.write_text("my notes")
    (tmp_path / "R.json.tmp").write_text("also mine")  # the old fixed temporary name
    assert main([*argv, "--out", str(mine)]) == 2
    assert "not written by" in capsys.readouterr().err
    assert mine.read_text() == "my notes" and (tmp_path / "R.json.tmp").read_text() == "also mine"


def test_notebook_times_replaces_its_own_result(tmp_path):
    out = tmp_path / "t.json"
    for _ in range(2):
        assert main(["notebook-times", "--recorded", "--only", "00", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["written_by"] == "notebook-times"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]  # no temporary file left behind


def test_atomic_files_have_unique_temporary_names(tmp_path):
    target = tmp_path / "X"
    (tmp_path / "X.tmp").write_text("yours")
    with atomic_file(target) as a, atomic_file(target) as b:  # two writers of one checkpoint at once
        assert a != b and a.parent == b.parent == tmp_path
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a" and (tmp_path / "X.tmp").read_text() == "yours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "X.tmp"]


def test_save_stages_deletes_only_what_it_wrote(tmp_path, monkeypatch):
    from rlhf_lite.config import get_profile
    from rlhf_lite.course.saved import save_stages

    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path))
    monkeypatch.setenv("RLHF_LITE_RUNS", str(tmp_path / "empty-runs"))  # nothing cached: nothing to save
    stages = tmp_path / "smoke" / "stages"
    stages.mkdir(parents=True)
    keep = {"sft-notes.txt": "mine", "reward-smoke-0123456789abc.json": "mine"}
    for name, text in keep.items():
        (stages / name).write_text(text)
    (stages / "comparisons-smoke-0123456789").mkdir()  # a folder of yours that looks like a saved stage
    (stages / "comparisons-smoke-0123456789" / "mine.jsonl").write_text("x")
    save_state(stages / "sft-smoke-9876543210.safetensors", {"adapter": {}})  # a stale saved stage: ours
    assert save_stages(get_profile("smoke")) == []
    assert {p.name: p.read_text() for p in stages.iterdir() if p.is_file()} == keep
    assert (stages / "comparisons-smoke-0123456789" / "mine.jsonl").is_file()


# ---------------------------------------------------------------------------------------------
# The ranking store: never emptied, never followed through a link, never half a batch
# ---------------------------------------------------------------------------------------------
def test_a_json_file_that_is_not_a_store_is_refused_not_emptied(tmp_path):
    p = tmp_path / "my_labels.json"
    p.write_text('{"my": "labels"}')  # one line, no trailing newline
    with pytest.raises(DataFormatError, match="not a JSON-lines file of records"):
        RankingStore(p)
    assert p.read_text() == '{"my": "labels"}'


def test_a_torn_tail_is_kept_aside_not_dropped(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(rec(0)) + "\n" + '{"prompt": "Q1", "resp')
    with pytest.warns(UserWarning, match="moved it to r.jsonl.torn"):
        store = RankingStore(p)
    assert len(store) == 1 and (tmp_path / "r.jsonl.torn").read_text() == '{"prompt": "Q1", "resp\n'


def test_a_store_swapped_for_a_link_is_not_followed(tmp_path):
    p, other = tmp_path / "r.jsonl", tmp_path / "other.txt"
    store = RankingStore(p)
    store.append(rec(0))
    other.write_text("someone else's file")
    p.unlink()
    p.symlink_to(other)
    with pytest.raises(ValueError, match="symbolic link"):
        store.append(rec(1))
    assert other.read_text() == "someone else's file"


def test_a_failed_write_keeps_none_of_its_batch(tmp_path):
    p = tmp_path / "r.jsonl"
    RankingStore(p).append(rec(0))
    before = p.read_bytes()
    code = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 100}, {len(before) + 100}))
        from rlhf_lite.feedback import RankingStore
        recs = [{{"prompt": "Q", "responses": ["a" * 40, "b"], "ranking": [0, 1]}} for _ in range(10)]
        try:
            RankingStore({str(p)!r}).extend(recs)
        except OSError as e:
            print("refused:", e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused" in r.stdout, r.stderr
    assert p.read_bytes() == before  # so a retry does not duplicate half of the batch
    RankingStore(p).extend([rec(1)])
    assert len(RankingStore(p)) == 2


def test_a_read_only_store_can_be_loaded(tmp_path, monkeypatch):
    import rlhf_lite.files as files

    p = tmp_path / "r.jsonl"
    RankingStore(p).append(rec(0))
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)  # as for a user without write permission

    def no_write(*a, **k):
        raise PermissionError("opened for writing")

    monkeypatch.setattr(files, "_locked", no_write)
    assert len(RankingStore(p).load()) == 1


# ---------------------------------------------------------------------------------------------
# Saved state, model folders and data files
# ---------------------------------------------------------------------------------------------
def test_flipped_bytes_in_a_saved_result_are_caught(tmp_path):
    path = tmp_path / "cell.safetensors"
    save_state(path, {"result": {"curve": torch.arange(64, dtype=torch.float32), "n": 3}})
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # inside the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        load_state(path)


def test_pickle_weights_beside_the_safetensors_are_refused(tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(TINY_BASE, folder)
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle weights"):
        check_model_folder(folder, "rebuild it")


def test_duplicate_json_keys_are_an_error(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "instruction": "b", "context": "", "response": "r", "category": "open_qa"}\n')
    with pytest.raises(DataFormatError, match=r"d.jsonl, line 1: .*'instruction' appear twice"):
        read_records(p)


def test_a_csv_row_with_too_few_cells_names_its_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(HEADER + "Say hi,,Hi,open_qa\nSay bye,,Bye\n")
    with pytest.raises(DataFormatError, match=r"d.csv, line 3: 1 cell\(s\) fewer .*'category'"):
        read_records(p)


def test_a_broken_parquet_file_is_a_data_format_error(tmp_path):
    p = tmp_path / "d.parquet"
    p.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataFormatError, match="not a readable parquet file"):
        read_records(p)


# ---------------------------------------------------------------------------------------------
# Settings checked before any work
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, message", [("n_eval_prompts=-5", "n_eval_prompts must be greater than 0"),
                                              ("ppo.temperature=1e-300", "temperature must be at least"),
                                              ("ppo.minibatch_size=64", "larger than the 8 episodes"),
                                              ("grpo.minibatch_size=9", "larger than the 8 episodes")])
def test_settings_out_of_range_stop_before_any_work(capsys, setting, message):
    assert main(["--profile", "smoke", "--set", setting, "world", "--show", "1"]) == 2
    assert message in capsys.readouterr().err


def test_diagnose_checks_its_policies_before_the_diagnosis(tmp_path, capsys):
    assert main(["--profile", "smoke", "diagnose", "--policy", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr()
    assert "--policy" in err.err and "no policy adapter" in err.err and "facts" not in err.out


def test_a_checkpoint_of_another_shape_is_a_clear_error():
    from rlhf_lite.checkpoint import load_trainable, trainable_state
    from rlhf_lite.config import LoRAConfig, PPOConfig, RewardConfig
    from rlhf_lite.models import load_base
    from rlhf_lite.ppo import build_policy
    from rlhf_lite.reward import build_reward_model

    rm = build_reward_model(load_base("tiny")[0], RewardConfig())
    small = build_policy(load_base("tiny")[0], rm, PPOConfig(), LoRAConfig(r=4))
    policy = build_policy(load_base("tiny")[0], rm, PPOConfig(), LoRAConfig(r=8))
    with pytest.raises(ValueError, match=r"another shape: .*lora_A.* \(4, .*\) \(here \(8, "):
        load_trainable(policy, trainable_state(small), "the checkpoint in X")
