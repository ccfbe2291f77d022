"""The package's layout as a test: algorithms import only downward, at the top of the file, and nothing private of
another module; caches are keyed by settings and code; the bugs found in review stay fixed."""
import ast
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlhf_lite.config import LoRAConfig, get_profile
from rlhf_lite.models import TINY_BASE, load_base

PACKAGE = Path(__file__).resolve().parent.parent / "rlhf_lite"
ALGORITHMS = ["config", "runtime", "checkpoint", "world/__init__", "world/kb", "world/corpus", "world/tasks",
              "world/labelers", "world/writers", "world/fluency", "models", "data", "pretrain", "sft", "feedback",
              "reward", "rollout", "ppo", "dpo", "grpo", "best_of_n", "evaluate"]
PLUMBING = {"cache", "stages", "policy_stages", "pipeline", "commands", "__main__", "course", "tools"}
README = Path(__file__).resolve().parent.parent / "README.md"
# the only imports an algorithm module may make inside a function: optional extras (the ranking widget, QLoRA,
# parquet files) and platform-specific fallbacks
OPTIONAL = {"ipywidgets", "bitsandbytes", "pyarrow", "resource", "ctypes"}


def tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{name}.py").read_text())


def package_imports(node: ast.AST, name: str) -> list[tuple[str, list[str]]]:
    """(module imported, names) for every import of our own package under ``node``."""
    here = name.split("/")[:-1]
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.level > 0:
            base = here[: len(here) - (n.level - 1)]
            out.append(("/".join(base + ([n.module.replace(".", "/")] if n.module else [])), [a.name for a in n.names]))
        elif isinstance(n, (ast.Import, ast.ImportFrom)) and (getattr(n, "module", None) or "").startswith("rlhf_lite"):
            out.append((n.module, [a.name for a in n.names]))
    return out


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithm_modules_import_at_the_top_and_nothing_private(name):
    for fn in ast.walk(tree(name)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = package_imports(fn, name)
            assert not inner, f"{name}.{fn.name} imports {inner} inside the function"
            lazy = [a.name for n in ast.walk(fn) if isinstance(n, ast.Import) for a in n.names]
            lazy += [n.module for n in ast.walk(fn) if isinstance(n, ast.ImportFrom) and n.level == 0]
            assert all(m.split(".")[0] in OPTIONAL for m in lazy), f"{name}.{fn.name} imports {lazy} in the function"
    for module, names in package_imports(tree(name), name):
        private = [x for x in names if x.startswith("_")]
        assert not private, f"{name} imports private {private} from {module}"
        assert module.split("/")[0] not in PLUMBING, f"algorithm module {name} imports {module} (plumbing)"


def readme_order() -> list[str]:
    """The algorithm modules in the order the README's Layout section lists them (``world/`` as one entry)."""
    text = README.read_text()
    block = text[text.index("## Layout"):].split("```")[1]
    return [line.split()[0].removeprefix("rlhf_lite/").removesuffix(".py").rstrip("/")
            for line in block.splitlines() if line.startswith("rlhf_lite/")]


def test_algorithms_import_only_what_the_readme_lists_above_them():
    order = readme_order()
    assert {n.split("/")[0] for n in ALGORITHMS} | {"files"} == set(order)  # every algorithm module is listed
    for name in ALGORITHMS:
        here = order.index(name.split("/")[0])
        for module, _ in package_imports(tree(name), name):
            top = module.rstrip("/").split("/")[0]
            if top != name.split("/")[0]:  # within world/, its modules import each other
                assert order.index(top) < here, f"{name} imports {module}, listed below it in the README"


FILE_CALLS = {"rename", "replace", "unlink", "rmdir", "rmtree", "remove", "fsync", "flock", "lockf", "ftruncate",
              "move", "chmod"}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithms_leave_locks_renames_deletes_and_fsyncs_to_files_py(name):
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FILE_CALLS:
            receiver = ast.unparse(node.func.value)
            if node.func.attr in ("replace", "remove", "move") and receiver not in ("os", "shutil"):
                continue  # str.replace, list.remove and the like
            raise AssertionError(f"{name}: {ast.unparse(node)[:80]} (file handling belongs in rlhf_lite/files.py)")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not {"fcntl", "shutil", "tempfile"} & set(names), f"{name} imports {names}"


def test_the_import_graph_has_no_cycle():
    files = {str(p.relative_to(PACKAGE).with_suffix("")): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name in files:
        deps = set()
        top = ast.Module(body=[n for n in tree(name).body if isinstance(n, (ast.Import, ast.ImportFrom))],
                         type_ignores=[])
        for module, _ in package_imports(top, name):  # what runs at import time (not `if TYPE_CHECKING:`)
            module = module.rstrip("/")
            deps.add(module if module in files else f"{module}/__init__")
        graph[name] = deps & set(files)
    state: dict[str, int] = {}

    def visit(n, path):
        if state.get(n) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [n])}")
        if state.get(n) == 2:
            return
        state[n] = 1
        for d in graph[n]:
            visit(d, path + [n])
        state[n] = 2

    for n in graph:
        visit(n, [])


def test_ppo_reads_in_one_screenful_of_stages():
    assert len((PACKAGE / "ppo.py").read_text().splitlines()) <= 310


def test_lora_targets_are_written_once():
    hits = [p for p in PACKAGE.rglob("*.py") if '"c_attn", "c_proj", "c_fc"' in p.read_text()]
    assert [p.name for p in hits] == ["config.py"]


# ---------------------------------------------------------------------------------------------
# Caches that cannot go stale
# ---------------------------------------------------------------------------------------------
def test_cache_keys_cover_settings_and_code(monkeypatch):
    from rlhf_lite import cache as stages

    prof = get_profile("smoke")
    sft = stages.sft_key(prof)
    assert stages.sft_key(replace(prof, lora=LoRAConfig(r=4))) != sft
    cmp = stages.comparisons_key(prof, sft)
    longer = replace(prof, reward=replace(prof.reward, max_new_tokens=prof.reward.max_new_tokens + 8))
    assert stages.comparisons_key(longer, sft) != cmp  # the comparisons (and so the reward model) depend on it
    assert stages.reward_key(prof, sft, cmp) != stages.reward_key(prof, sft, stages.comparisons_key(longer, sft))
    monkeypatch.setattr(stages, "code_digest", lambda *names: "edited")
    assert stages.sft_key(prof) != sft and stages.comparisons_key(prof, sft) != cmp


def test_code_digest_follows_the_source():
    from rlhf_lite.cache import code_digest

    assert code_digest("sft") == code_digest("sft") != code_digest("reward")
    assert code_digest("world") != code_digest("world/tasks")
    with pytest.raises(ValueError, match="no module"):
        code_digest("nonexistent")


def test_tests_use_their_own_cache():
    from rlhf_lite.runtime import runs_dir

    assert "rlhf-lite-test-runs-" in str(runs_dir())


# ---------------------------------------------------------------------------------------------
# Bugs found in review
# ---------------------------------------------------------------------------------------------
def test_dpo_batch_whose_pairs_are_all_ties():
    from rlhf_lite.config import DPOConfig
    from rlhf_lite.dpo import build_dpo_policy, records_loss

    lm, tok = load_base("tiny")
    lm = build_dpo_policy(lm, DPOConfig())
    rec = {"prompt": "Hi\n", "responses": ["a", "b"], "ranking": [[0, 1]], "finished": [True, True]}
    loss, stats = records_loss(lm, tok, [rec], DPOConfig())
    assert loss.item() == 0.0 and loss.requires_grad and stats["margins"].numel() == 0


def test_one_prompt_encoding_even_for_a_tokenizer_that_adds_bos():
    from transformers import AutoTokenizer

    from rlhf_lite.data import build_sft_example, encode_response
    from rlhf_lite.models import Generation, encode_prompt, pad_batch
    from rlhf_lite.rollout import rollout_tensors

    tok = AutoTokenizer.from_pretrained(str(TINY_BASE), add_bos_token=True)
    tok.pad_token = tok.eos_token
    prompt = "### Instruction:\nSay hi\n\n### Response:\n"
    ids = encode_prompt(tok, prompt)
    assert ids[0] == tok.bos_token_id
    gen = Generation("hi", tok("hi", add_special_tokens=False)["input_ids"], True)
    b = rollout_tensors(tok, [prompt], [gen])
    assert b["input_ids"][0, : b["prompt_len"]].tolist() == ids  # what generate fed the model
    assert pad_batch([ids], tok.pad_token_id, side="left")["input_ids"][0].tolist() == ids
    assert encode_response(tok, prompt, "hi", True, 256)[: len(ids)] == ids
    assert build_sft_example(tok, prompt, "hi", 256)["input_ids"][: len(ids)] == ids


def test_clipfrac_means_the_same_in_ppo_and_grpo():
    from rlhf_lite.grpo import grpo_loss
    from rlhf_lite.ppo import ppo_policy_loss

    # ratio 1.5 with a negative advantage: outside 1 ± ε, yet the clip removes no gradient (the unclipped term is
    # the larger loss); ratio 1.5 with a positive advantage is clipped
    logp = torch.log(torch.tensor([[1.5, 1.5], [1.5, 1.0]]))
    old, mask = torch.zeros(2, 2), torch.ones(2, 2)
    adv = torch.tensor([-1.0, 1.0])
    _, ppo = ppo_policy_loss(logp, old, adv[:, None].expand(2, 2), mask, 0.2)
    _, grpo = grpo_loss(logp, old, old, adv, mask, 0.2, 0.0)
    assert ppo["clipfrac"] == grpo["clipfrac"] == pytest.approx(0.25)


def test_cli_shows_a_traceback_for_errors_it_did_not_write(monkeypatch):
    import rlhf_lite.__main__ as cli

    def broken(**kwargs):
        return json.loads("{")  # a library's ValueError: a bug to see in full, not a one-line user error

    import rlhf_lite.commands

    monkeypatch.setattr(rlhf_lite.commands, "world", broken)
    with pytest.raises(json.JSONDecodeError):
        cli.main(["world"])
    try:
        get_profile("tinny")
    except ValueError as e:
        assert cli.raised_by_us(e)


def test_ppo_resume_refuses_a_checkpoint_for_another_policy(tmp_path):
    from dataclasses import asdict

    from rlhf_lite.checkpoint import CHECKPOINT
    from rlhf_lite.config import PPOConfig, RewardConfig
    from rlhf_lite.files import save_state
    from rlhf_lite.ppo import build_policy, train_ppo
    from rlhf_lite.reward import build_reward_model

    cfg = PPOConfig(steps=1)
    rm = build_reward_model(load_base("tiny")[0], RewardConfig())
    lm, tok = load_base("tiny")
    policy = build_policy(lm, rm, cfg)
    save_state(tmp_path / CHECKPOINT, {"config": asdict(cfg), "trainable": {"nothing.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match="does not fit this policy"):
        train_ppo(policy, rm, tok, [], cfg, out_dir=tmp_path, resume=True, progress=False)
