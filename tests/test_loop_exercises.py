"""The loop exercises of notebooks 02, 04 and 05: the notebooks' own solutions pass their checkers, and plausible wrong
loops, each made by a one-line edit of that solution, are rejected with an explanation that names the mistake."""
import json
from pathlib import Path

import pytest
import torch

from rlhf_lite.course.exercises import ExerciseError
from rlhf_lite.course.loop_exercises import check_ppo_iteration, check_reward_batch_loss, check_sft_step
from rlhf_lite.course.student import CODE_STUB, clear_solution, is_solution

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def solution(notebook: str, cell_id: str) -> str:
    cell = next(c for c in json.loads((NOTEBOOKS / notebook).read_text())["cells"] if c.get("id") == cell_id)
    assert is_solution(cell)
    return "".join(cell["source"])


def define(source: str, name: str, edits=()):
    """The function ``name`` from a solution cell, after replacing each (old, new) of ``edits`` (each must occur)."""
    for old, new in edits:
        assert old in source, f"the solution no longer contains {old!r}: update this test's mutation"
        source = source.replace(old, new)
    ns: dict = {}
    exec(source, ns)
    return ns[name]


SFT = ("02_sft_lora.ipynb", "sft-step-solution", "my_sft_step")
RM = ("04_reward_model.ipynb", "rm-batch-solution", "my_reward_batch_loss")
PPO = ("05_ppo.ipynb", "ppo-iteration-solution", "my_ppo_iteration")


def wrong(spec, *edits):
    return define(solution(*spec[:2]), spec[2], edits)


def test_the_stubs_keep_the_numbered_stages():
    for spec, stages in [(SFT, 5), (RM, 4), (PPO, 5)]:
        stub = clear_solution(solution(*spec[:2]), CODE_STUB)
        assert sum(line.strip().startswith(("# 1", "# 2", "# 3", "# 4", "# 5", "# 6", "# 7"))
                   for line in stub.splitlines()) >= stages, stub
        body = stub.split('"""')[-1].splitlines()
        assert "raise NotImplementedError" in stub and not any(line.strip().startswith("return") for line in body)


def test_sft_step_solution_passes(capsys):
    check_sft_step(wrong(SFT))
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("edits,message", [
    ([('("labels", -100)', '("labels", tokenizer.pad_token_id)')], "padding positions are supervised"),
    ([("    # 3. Forward pass", "    batch['labels'] = batch['input_ids'].masked_fill(batch['input_ids'] == "
       "tokenizer.pad_token_id, -100)\n    # 3. Forward pass")], "EOS that ends each response has label -100"),
    ([("    # 3. Forward pass", "    batch['labels'] = batch['input_ids'].clone()\n    # 3. Forward pass")],
     "prompt tokens are supervised"),
    ([("    # 3. Forward pass", "    batch['attention_mask'] = (batch['input_ids'] != tokenizer.pad_token_id).long()\n"
       "    # 3. Forward pass")], "attention_mask is 0 on the real EOS"),
    ([("e[key] + [fill] * (T - len(e[key]))", "[fill] * (T - len(e[key])) + e[key]")], "padded on the left"),
    ([('loss = sft_loss(logits, batch["labels"])', 'loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), '
       'batch["labels"].flatten())')], "shift"),
    ([("    optimizer.zero_grad()\n", "")], "still there when the second"),
    ([("    optimizer.step()\n", "")], "did not change"),
])
def test_sft_step_mistakes_are_rejected_and_named(edits, message):
    with pytest.raises(ExerciseError, match=message):
        check_sft_step(wrong(SFT, *edits))


def test_reward_batch_solution_passes(capsys):
    check_reward_batch_loss(wrong(RM))
    assert "✓" in capsys.readouterr().out


def per_pair_forwarding(rm, tokenizer, records, max_length=256):
    """The ablation's way, as a loop: every pair forwards both of its answers."""
    from rlhf_lite.data import encode_response
    from rlhf_lite.feedback import ranking_to_pairs
    from rlhf_lite.models import pad_batch
    from rlhf_lite.reward import pairwise_loss

    losses = []
    for r in records:
        for w, l in ranking_to_pairs(r["ranking"]):
            seqs = [encode_response(tokenizer, r["prompt"], r["responses"][i], r["finished"][i], max_length)
                    for i in (w, l)]
            rw, rl = rm(**pad_batch(seqs, tokenizer.pad_token_id))
            losses.append(pairwise_loss(rw[None], rl[None]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("edits,message", [
    ([("torch.stack(losses).mean()", "torch.stack(losses).sum()")], "summed over the prompts"),
    ([('r["ranking"]))', 'r["ranking"][::-1]))')], "wrong way round"),
    ([("answer, finished, max_length)", "answer, False, max_length)")], "lack their EOS"),
    ([("        start += k\n", "")], "slice"),
    ([("rewards = rm(**pad_batch(seqs, tokenizer.pad_token_id))",
       "rewards = rm(**pad_batch(seqs, tokenizer.pad_token_id)).detach()")], "no gradient"),
])
def test_reward_batch_mistakes_are_rejected_and_named(edits, message):
    with pytest.raises(ExerciseError, match=message):
        check_reward_batch_loss(wrong(RM, *edits))


def test_reward_batch_per_pair_forwarding_is_rejected():
    with pytest.raises(ExerciseError, match="two per pair"):
        check_reward_batch_loss(per_pair_forwarding)


def test_reward_batch_pooled_mean_is_rejected():
    pooled = wrong(RM, ("losses.append(ranking_loss(rewards[start:start + k], r[\"ranking\"]))",
                        "losses.append(ranking_loss(rewards[start:start + k], r[\"ranking\"]).repeat("
                        "len(__import__('rlhf_lite.feedback').feedback.ranking_to_pairs(r['ranking']))))"),
                   ("torch.stack(losses).mean()", "torch.cat(losses).mean()"))
    with pytest.raises(ExerciseError, match="all pairs of the batch at once"):
        check_reward_batch_loss(pooled)


def test_ppo_iteration_solution_passes(capsys):
    check_ppo_iteration(wrong(PPO))
    out = capsys.readouterr().out
    assert "✓" in out and "ratio 1 and KL 0" in out


@pytest.mark.parametrize("edits,message", [
    ([("ro.logprobs[mb], advantages[mb]", "ro.ref_logprobs[mb], advantages[mb]")], "must be exactly 1 and 0"),
    ([("for epoch in range(cfg.ppo_epochs):", "for epoch in range(1):")], "optimizer steps"),
    ([("loss = pg_loss + cfg.vf_coef * vf_loss", "loss = pg_loss")], "critic never changed"),
    ([("loss = pg_loss + cfg.vf_coef * vf_loss", "loss = -pg_loss + cfg.vf_coef * vf_loss")], "points away"),
    ([("            optimizer.zero_grad()\n", "")], "differ from ppo_step"),
    ([("        advantages = masked_whiten(advantages, mask)\n", "")], "differ from ppo_step"),
])
def test_ppo_iteration_mistakes_are_rejected_and_named(edits, message):
    with pytest.raises(ExerciseError, match=message):
        check_ppo_iteration(wrong(PPO, *edits))
