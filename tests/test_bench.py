"""``python -m rlhf_lite bench`` and ``notebook-times``: they run, and what they write is well formed. No test
asserts a speed: rates depend on the machine and are compared only within one run."""
import json
import sys
from dataclasses import replace

import nbformat
import pytest

from rlhf_lite.course.trl_bridge import trl_version
from rlhf_lite.tools.bench import bench_config, bench_model_dir, bench_table, run_bench
from rlhf_lite.tools.gpt2_shape import GPT2_TOKENIZER
from rlhf_lite.tools.notebook_times import notebook_paths, notebook_times, recorded_seconds, times_table

ROW_NAMES = ["SFT", "reward model, K-choose-2 grouped", "reward model, shuffled pairs (ablation)", "DPO",
             "PPO iteration",
             "GRPO iteration"]


def _well_formed(side):
    assert side["min"] <= side["median"] <= side["max"] and side["min"] > 0
    assert len(side["runs"]) == 1 and side["peak_mb"] is not None


@pytest.mark.skipif(trl_version() is None, reason="TRL not installed")
@pytest.mark.slow
def test_smoke_bench_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(bench_config("tiny", smoke=True), out, progress=False)
    assert json.loads(out.read_text()) == {"written_by": "bench", **json.loads(json.dumps(result))}
    assert [r["row"] for r in result["rows"]] == ROW_NAMES
    for r in result["rows"]:
        _well_formed(r["ours"])
        _well_formed(r["trl"])
        assert r["ratio"] == pytest.approx(r["ours"]["median"] / r["trl"]["median"])
    # the reward model's two variants are compared with the same TRL measurement
    assert result["rows"][1]["trl"] == result["rows"][2]["trl"]
    mem = result["ppo_memory"]  # the reference shares the policy's weights; the critic is one linear head
    assert mem["base_mb"] < mem["policy_reference_value_mb"] < 1.25 * mem["base_mb"]
    assert mem["separate_copies_mb"] == pytest.approx(3 * mem["base_mb"], abs=0.02)
    table = bench_table(result).splitlines()
    assert table[0].startswith("bench: model tiny") and "TRL 1." in table[0]
    assert len(table) == 2 + len(ROW_NAMES) + 3  # header, column names, rows, compute line, memory line, note
    assert "of this machine's measured float32 matmul rate" in table[-3]
    for line, name in zip(table[2:], ROW_NAMES):
        assert line.startswith(name) and line.split()[-4].endswith("x")  # a ratio in every row


@pytest.mark.slow
def test_bench_without_trl_skips_its_rows_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl now fails, as when it is not installed
    result = run_bench(bench_config("tiny", smoke=True), tmp_path / "b.json", progress=False, rows_wanted=["dpo"])
    assert [r["row"] for r in result["rows"]] == ["DPO"] and result["rows"][0]["trl"] is None
    assert result["rows"][0]["ratio"] is None and result["setup"]["trl"] is None
    table = bench_table(result)
    assert "TRL rows skipped" in table and "rlhf-lite[trl]" in table and "TRL not installed" in table


def test_bench_rejects_bad_settings():
    with pytest.raises(ValueError, match="'tiny' or 'gpt2-shape'"):
        bench_config("gpt3")
    with pytest.raises(ValueError, match="unknown bench rows"):
        run_bench(bench_config(smoke=True), rows_wanted=["ppo"])
    with pytest.raises(ValueError, match="repeats >= 1"):
        run_bench(replace(bench_config(smoke=True), repeats=0))


@pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason="../shared/gpt2-tokenizer not present")
def test_gpt2_shape_is_gpt2_small_with_the_real_tokenizer(tmp_path):
    from rlhf_lite.models import load_base

    model, tok = load_base(str(bench_model_dir("gpt2-shape", tmp_path)))
    assert 124_000_000 <= model.num_parameters() <= 125_000_000  # GPT2Config(): 12 layers, 768 wide, tied embeddings
    assert len(tok) == model.config.vocab_size == 50257 and tok.eos_token_id == 50256
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "left"


def test_committed_notebooks_carry_their_execution_times():
    for path in notebook_paths():
        rec = recorded_seconds(path)
        assert rec["seconds"] and rec["seconds"] > 0, f"{path.name} has no recorded execution (commit it executed)"


@pytest.mark.slow
def test_notebook_times_executes_with_the_profile_and_names_a_failing_notebook(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nassert os.environ['RLHF_LITE_PROFILE'] "
                                                                   "== 'smoke'"),
                                         nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, tmp_path / "00_ok.ipynb")
    result = notebook_times("smoke", "execute", folder=tmp_path, out=tmp_path / "t.json")
    assert [r["notebook"] for r in result["notebooks"]] == ["00_ok.ipynb"] and result["notebooks"][0]["seconds"] > 0
    assert json.loads((tmp_path / "t.json").read_text())["total_s"] == result["total_s"]
    assert "within the smoke budget" in times_table(result)
    nb.cells[1] = nbformat.v4.new_code_cell("1 / 0")
    nbformat.write(nb, tmp_path / "01_bad.ipynb")
    with pytest.raises(RuntimeError, match="01_bad.ipynb failed on profile 'smoke'"):
        notebook_times("smoke", "execute", ["01"], folder=tmp_path)
    with pytest.raises(ValueError, match="unknown profile"):
        notebook_times("smoek", folder=tmp_path)


@pytest.mark.slow
def test_cli_bench_and_notebook_times(tmp_path, capsys):
    from rlhf_lite.__main__ import main

    assert main(["bench", "--smoke", "--rows", "dpo", "--markdown", "--out", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| DPO | pairs/s |" in out and json.loads((tmp_path / "b.json").read_text())["rows"][0]["row"] == "DPO"
    assert main(["notebook-times", "--recorded", "--profile", "tiny", "--only", "00", "--out",
                 str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "00_tour.ipynb" in out and "recorded, profile tiny" in out
    assert json.loads((tmp_path / "t.json").read_text())["notebooks"][0]["seconds"] > 0
