"""Saved results (``rlhf_lite.course.saved``): loading a heavy cell's result gives what running it gives."""
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lite.checkpoint import load_trainable, trainable_state
from rlhf_lite.config import get_profile
from rlhf_lite.course.saved import missing_stages, reruns, restore_stages, save_stages, saved_cell, stage_names
from rlhf_lite.files import load_state, save_state
from rlhf_lite.models import generate, load_base
from rlhf_lite.ppo import build_policy, train_ppo
from rlhf_lite.reward import load_reward_model, score_responses
from rlhf_lite.stages import comparison_data, comparisons_dir, reward_checkpoint, sft_checkpoint
from rlhf_lite.world import world_from_config

SMOKE = get_profile("smoke")


def test_saved_cell_computes_once_then_loads_under_the_same_key_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"history": [{"step": 0, "reward": 0.25}], "ci": (0.1, 0.2), "weights": {"w": torch.arange(3.0)}}

    first = saved_cell("demo", compute, key=("settings", 1), profile=SMOKE, rerun=False)
    assert calls == [1] and not first.loaded and (tmp_path / "smoke" / "demo.safetensors").is_file()
    again = saved_cell("demo", compute, key=("settings", 1), profile=SMOKE, rerun=False)
    assert calls == [1] and again.loaded and again.seconds == first.seconds
    assert "RERUN = {'demo'}" in capsys.readouterr().out  # how to compute this cell alone
    # the computed result is handed on as loading gives it, so both ways match
    assert first["ci"] == again["ci"] == (0.1, 0.2) and first["history"] == again["history"]
    assert torch.equal(first["weights"]["w"], again["weights"]["w"])
    saved_cell("demo", compute, key=("settings", 2), profile=SMOKE, rerun=False)  # other settings: computed again
    assert calls == [1, 1] and "other settings" in capsys.readouterr().out
    saved_cell("demo", compute, key=("settings", 2), profile=SMOKE, rerun=True)  # RERUN: always computed
    assert calls == [1, 1, 1]
    saved_cell("demo", compute, key=("settings", 2), profile=SMOKE, rerun={"other"})  # another cell named: loads
    assert calls == [1, 1, 1]
    saved_cell("demo", compute, key=("settings", 2), profile=SMOKE, rerun={"other", "demo"})  # this one: computes
    assert calls == [1, 1, 1, 1]
    # work reused from an earlier run (the pipeline's) reports how long that work took, not the reuse
    reused = saved_cell("reused", lambda: {"runtime_s": 645.0}, key=(), profile=SMOKE, rerun=False,
                        took=lambda r: r["runtime_s"])
    assert reused.seconds == 645.0
    assert saved_cell("reused", compute, key=(), profile=SMOKE, rerun=False).seconds == 645.0


def test_rerun_names_cells_and_says_where_a_result_came_from(tmp_path, monkeypatch, capsys):
    assert reruns("a", True) and not reruns("a", False) and reruns("a", {"a"}) and not reruns("a", ["b"])
    with pytest.raises(TypeError, match="RERUN = {'a'}"):  # a bare string would match by its letters
        reruns("a", "a")
    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path))
    saved_cell("demo", lambda: {"x": 1}, key=(), profile=SMOKE, rerun=False)
    path = tmp_path / "smoke" / "demo.safetensors"
    s = load_state(path)  # saved with the device it was computed on
    assert s["device"] == [] and s["seconds"] >= 0  # [] is the CPU
    save_state(path, {**s, "key": "other", "device": ["cuda-bf16"]})  # as if computed on a GPU
    capsys.readouterr()
    saved_cell("demo", lambda: {"x": 1}, key=(), profile=SMOKE, rerun=False)
    assert "was computed on cuda-bf16, this is cpu" in capsys.readouterr().out


def test_restore_stages_names_the_stages_it_will_train_before_training(tmp_path, monkeypatch, capsys):
    """RERUN = True (or nothing saved): the notebook says which shared stages train first, before any work."""
    monkeypatch.setenv("RLHF_LITE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path / "saved"))
    assert restore_stages(SMOKE, True) == []
    out = capsys.readouterr().out
    assert out.startswith("RERUN = True: the notebook first trains the SFT model (no saved copy to time it by)")
    assert "the comparisons" in out and "the reward model" in out
    assert len(missing_stages(SMOKE)) == 3


@pytest.mark.slow
def test_a_saved_ppo_run_loads_into_the_same_policy(tmp_path, monkeypatch):
    """A cell that trains a policy saves its history and LoRA + value-head weights; loading them into a fresh
    policy gives the trained policy: the same weights, the same samples."""
    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path))
    rm, _ = load_reward_model(reward_checkpoint(SMOKE, progress=False))
    world = world_from_config(SMOKE.world)
    cfg = replace(SMOKE.ppo, steps=2)
    sft_dir = sft_checkpoint(SMOKE, progress=False)

    def fresh():
        sft, tok = load_base(str(sft_dir))
        return build_policy(sft, rm, cfg), tok

    trained, tok = fresh()

    def run():
        history = train_ppo(trained, rm, tok, world.splits["train"], cfg, world=world, progress=False)
        return {"history": history, "weights": trainable_state(trained)}

    ran = saved_cell("ppo", run, key=(sft_dir.name, cfg), profile=SMOKE, rerun=True)
    loaded = saved_cell("ppo", run, key=(sft_dir.name, cfg), profile=SMOKE, rerun=False)
    assert loaded.loaded and loaded["history"] == ran["history"] and len(ran["history"]) == 2
    policy, _ = fresh()
    load_trainable(policy, loaded["weights"])
    for k, v in trainable_state(trained).items():
        assert torch.equal(policy.state_dict()[k], v), k
    prompts = [t.instruction for t in world.splits["test"][:4]]
    a = generate(trained.lm, tok, prompts, 16, seed=3)
    b = generate(policy.lm, tok, prompts, 16, seed=3)
    assert [g.text for g in a] == [g.text for g in b]
    with pytest.raises(ValueError, match="does not fit this policy"):
        load_trainable(policy, {k: v for k, v in loaded["weights"].items() if "value_head" not in k})


@pytest.mark.slow
def test_saved_stages_restore_what_was_trained(tmp_path, monkeypatch):
    """SFT model (from its adapters), comparisons and reward model: saved small, restored into an empty runs
    folder, equal to what training built, and the stage functions then find them instead of training."""
    sft_dir = sft_checkpoint(SMOKE, progress=False)
    comp_dir, rm_dir = comparisons_dir(SMOKE, progress=False), reward_checkpoint(SMOKE, progress=False)
    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path / "saved"))
    assert save_stages(SMOKE) == [sft_dir.name, comp_dir.name, rm_dir.name]
    saved = tmp_path / "saved" / "smoke" / "stages"
    assert (saved / f"{sft_dir.name}.safetensors").stat().st_size < 1_000_000  # the adapters, not the model
    assert (saved / rm_dir.name / "head.safetensors").is_file()

    monkeypatch.setenv("RLHF_LITE_RUNS", str(tmp_path / "runs"))
    assert restore_stages(SMOKE) == [sft_dir.name, comp_dir.name, rm_dir.name]
    assert restore_stages(SMOKE) == []  # already there: nothing to do
    new_sft = sft_checkpoint(SMOKE, progress=False)
    assert new_sft == tmp_path / "runs" / "cache" / sft_dir.name
    a, b = load_file(str(sft_dir / "model.safetensors")), load_file(str(new_sft / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same merge: bit for bit
    assert (new_sft / "config.json").read_text() == (sft_dir / "config.json").read_text()
    assert comparisons_dir(SMOKE, progress=False) == tmp_path / "runs" / "cache" / comp_dir.name
    for split in ("train", "validation"):
        assert (comp_dir / f"{split}.jsonl").read_bytes() == (tmp_path / "runs" / "cache" / comp_dir.name /
                                                             f"{split}.jsonl").read_bytes()
    assert len(comparison_data(SMOKE, progress=False)["train"]) > 0
    new_rm = reward_checkpoint(SMOKE, progress=False)
    assert new_rm == tmp_path / "runs" / "cache" / rm_dir.name
    (rm_a, tok), (rm_b, _) = load_reward_model(rm_dir), load_reward_model(new_rm)
    prompts, answers = ["Name a colour."] * 2, ["Red.", "The sky is green"]
    assert score_responses(rm_a, tok, prompts, answers, [True, False]) == \
        score_responses(rm_b, tok, prompts, answers, [True, False])


NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _code(nb: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("nb", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem[:2])
def test_a_notebook_with_saved_cells_has_the_switch_on_top_and_its_tiny_results_committed(nb):
    cells = _code(nb)
    # saved results are named "NN-what" after their notebook, the first argument of saved_cell (or of a helper
    # that calls it)
    names = [n for src in cells for n in re.findall(r'\(\s*"(\d\d-[a-z0-9-]+)"', src)]
    if not any("saved_cell(" in src for src in cells):
        assert not any("RERUN" in src for src in cells), "RERUN without a saved cell switches nothing"
        return
    assert cells[1].startswith("RERUN = False"), "the switch is the first line after the setup cell"
    assert all(n.startswith(nb.stem[:2] + "-") for n in names), "a saved result is named after its notebook"
    for name in names:
        saved = NOTEBOOKS / "saved" / "tiny" / f"{name}.safetensors"
        assert saved.is_file(), f"{saved} is missing: execute {nb.name} on tiny and commit what it saved"
        assert saved.stat().st_size < 1_000_000, f"{saved} is over 1 MB"


def test_the_committed_stages_are_those_of_the_current_code():
    """The SFT model, comparisons and reward model saved for tiny are the ones the current code and settings
    build (their names hash both); otherwise every notebook would train them from scratch."""
    stages = NOTEBOOKS / "saved" / "tiny" / "stages"
    sft, comparisons, reward = stage_names(get_profile("tiny"))
    hint = "train them (the pipeline or the notebooks on tiny), then run python -m rlhf_lite save-stages"
    assert (stages / f"{sft}.safetensors").is_file(), f"no saved {sft}: {hint}"
    assert (stages / comparisons / "train.jsonl.gz").is_file(), f"no saved {comparisons}: {hint}"
    assert (stages / reward / "reward_model.json").is_file(), f"no saved {reward}: {hint}"
