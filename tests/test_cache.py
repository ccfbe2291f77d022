"""Caches that cannot serve stale or foreign results: every cached stage and saved result is keyed on its settings,
its data's contents and the code of its whole import closure. Each test is a case that reused an old result before
the keys covered it."""
import shutil
from dataclasses import replace

import pytest

from rlhf_lite import cache
from rlhf_lite.cache import STAGE_CODE, code_digest, import_closure, reward_key, sft_key
from rlhf_lite.config import get_profile

SMOKE = get_profile("smoke")
DOLLY_ROW = '{"instruction": "Say hi", "context": "", "response": "%s", "category": "open_qa"}\n'


def test_the_stages_closure_is_read_from_the_imports():
    closure = import_closure(*STAGE_CODE)
    # what the stages run on, the modules that were left out of the hand-kept lists included
    for module in ("stages", "sft", "data", "models", "world/labelers", "feedback", "reward", "runtime", "config",
                   "checkpoint", "files", "cache", "pretrain"):
        assert module in closure, module
    for module in ("ppo", "grpo", "dpo", "rollout", "policy_stages", "pipeline", "__main__", "commands"):
        assert module not in closure, module  # later stages do not retrain earlier ones
    assert {"ppo", "policy_stages", "stages", "evaluate"} <= set(import_closure("pipeline"))


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """An editable copy of the package that the digests read."""
    copy = tmp_path / "rlhf_lite"
    shutil.copytree(cache.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE", copy)
    return copy


@pytest.mark.parametrize("module, function", [("runtime.py", "def warmup_linear_schedule"),
                                              ("stages.py", "def _measure_reward_model"),
                                              ("checkpoint.py", "def trained_state"),
                                              ("config.py", "def validate_config"),
                                              ("files.py", "def read_rows")])
def test_an_edit_anywhere_under_a_stage_changes_its_key(package_copy, module, function):
    before = code_digest(*STAGE_CODE), sft_key(SMOKE)
    path = package_copy / module
    text = path.read_text()
    assert function in text
    path.write_text(text.replace(function, "# edited\n" + function, 1))
    assert code_digest(*STAGE_CODE) != before[0] and sft_key(SMOKE) != before[1]


def test_an_edit_to_a_later_stage_keeps_the_earlier_ones(package_copy):
    before = sft_key(SMOKE), code_digest("pipeline")
    (package_copy / "ppo.py").write_text((package_copy / "ppo.py").read_text() + "\n# edited\n")
    assert sft_key(SMOKE) == before[0] and code_digest("pipeline") != before[1]


def test_local_data_is_keyed_by_its_contents(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text(DOLLY_ROW % "Hi")
    mine = replace(SMOKE, data=str(data))
    assert sft_key(mine) != sft_key(SMOKE)  # `--set data=mine.jsonl` trains its own SFT model
    first = sft_key(mine)
    data.write_text(DOLLY_ROW % "Hello")  # the same file name, edited
    assert sft_key(mine) != first
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "Q", "chosen": "a", "rejected": "b"}\n')
    key = reward_key(SMOKE, "sft", str(prefs))
    prefs.write_text('{"prompt": "Q", "chosen": "b", "rejected": "a"}\n')
    assert reward_key(SMOKE, "sft", str(prefs)) != key


def test_the_pipelines_reuse_key_covers_its_code(monkeypatch):
    from rlhf_lite import pipeline

    key = pipeline.pipeline_key(SMOKE)
    assert pipeline.pipeline_key(replace(SMOKE, ppo=replace(SMOKE.ppo, steps=5))) != key
    assert pipeline.pipeline_key(replace(SMOKE, dpo=replace(SMOKE.dpo, beta=0.5))) == key  # not a pipeline setting
    monkeypatch.setattr(pipeline, "code_digest", lambda *names: "edited")  # notebook 06 after a code change
    assert pipeline.pipeline_key(SMOKE) != key


def test_saved_cells_are_keyed_on_their_code_closure(tmp_path, monkeypatch):
    from rlhf_lite.course.saved import saved_cell

    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"x": len(calls)}

    assert saved_cell("c", compute, key=1, profile=SMOKE, rerun=False, code=("ppo",))["x"] == 1
    assert saved_cell("c", compute, key=1, profile=SMOKE, rerun=False, code=("ppo",)).loaded
    monkeypatch.setattr("rlhf_lite.course.saved.code_digest", lambda *names: "edited rollout.py")
    assert saved_cell("c", compute, key=1, profile=SMOKE, rerun=False, code=("ppo",))["x"] == 2


def test_saved_cells_are_keyed_on_the_lora_settings_and_the_device(tmp_path, monkeypatch):
    from rlhf_lite.config import LoRAConfig
    from rlhf_lite.course.saved import saved_cell

    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path))

    def run(profile):
        return saved_cell("c", lambda: {"x": 1}, key=1, profile=profile, rerun=False, code=("sft",)).loaded

    assert not run(SMOKE) and run(SMOKE)
    assert not run(replace(SMOKE, lora=LoRAConfig(r=4)))  # adapters of another rank: computed again
    assert run(replace(SMOKE, lora=LoRAConfig(r=4)))
    monkeypatch.setattr(cache, "placement", lambda device=None: ("cuda", "bf16"))  # a GPU runtime
    assert not run(replace(SMOKE, lora=LoRAConfig(r=4)))


def test_saved_cells_name_modules_with_dots_or_slashes(tmp_path, monkeypatch):
    from rlhf_lite.course.saved import saved_cell

    monkeypatch.setenv("RLHF_LITE_SAVED", str(tmp_path))
    saved_cell("c", lambda: {"x": 1}, key=1, profile=SMOKE, rerun=False, code=("course.trl_bridge",))
    assert saved_cell("c", lambda: {"x": 2}, key=1, profile=SMOKE, rerun=False, code=("course/trl_bridge",)).loaded
    with pytest.raises(ValueError, match="no module rlhf_lite.rejection"):  # a module that is gone is an error
        code_digest("rejection")
