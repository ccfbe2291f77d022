"""Rejection-sampling fine-tuning: which sample is kept, and the command end to end on smoke."""
import json

import pytest
import torch

from rlhf_lite.best_of_n import best_of_n_records, pick_best
from rlhf_lite.data import render_prompt
from rlhf_lite.models import generate, load_base
from rlhf_lite.reward import score_responses


def test_pick_best_by_hand():
    rewards = [[0.1, 0.9, 0.5], [0.3, 0.2], [1.0, 2.0], [0.4, 0.4]]
    finished = [[True, False, True], [False, False], [True, True], [True, True]]
    # the 0.9 did not finish; nothing finished; the higher one; a tie keeps the first
    assert pick_best(rewards, finished) == [2, None, 1, 0]


def test_best_of_n_records_keep_each_prompts_best_finished_sample(world):
    from rlhf_lite.config import RewardConfig
    from rlhf_lite.reward import build_reward_model

    model, tok = load_base("tiny")
    rm = build_reward_model(load_base("tiny")[0], RewardConfig())
    tasks = world.splits["train"][:6]
    records = best_of_n_records(model, tok, rm, tasks, n=3, max_new_tokens=12, seed=5, progress=False)
    # by hand: the same three seeded samples, scored one by one
    prompts = [render_prompt(tok, t.instruction, t.context) for t in tasks]
    samples = [generate(model, tok, prompts, 12, seed=5 + s, batch_size=64) for s in range(3)]
    scores = [score_responses(rm, tok, prompts, [g.text for g in gs], [g.finished for g in gs]) for gs in samples]
    expected = {}
    for i, t in enumerate(tasks):
        done = [s for s in range(3) if samples[s][i].finished]
        if done:
            best = max(done, key=lambda s: scores[s][i])
            expected[t.prompt_id] = (samples[best][i].text, scores[best][i])
    assert expected, "no sample finished in 12 tokens: the check would be empty"
    assert {r["prompt_id"]: r["response"] for r in records} == {k: text for k, (text, _) in expected.items()}
    assert [r["reward"] for r in records] == pytest.approx([expected[r["prompt_id"]][1] for r in records])
    assert all(r["instruction"] == t.instruction for r in records for t in tasks if t.prompt_id == r["prompt_id"])
    with pytest.raises(ValueError, match="n must be at least 1"):
        best_of_n_records(model, tok, rm, tasks, n=0)


@pytest.mark.slow
def test_rejection_sampling_command_learns_its_kept_answers(tmp_path, capsys):
    from rlhf_lite.__main__ import main
    from rlhf_lite.config import get_profile
    from rlhf_lite.policy_stages import load_policy
    from rlhf_lite.reward import load_reward_model
    from rlhf_lite.stages import reward_checkpoint, sft_checkpoint
    from rlhf_lite.world import world_from_config

    out = tmp_path / "rs"
    assert main(["--profile", "smoke", "rejection-sampling", "--n", "2", "--n-prompts", "16", "--epochs", "40",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and "40 epochs" in printed
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert 0 < len(records) <= 16
    # the fine-tuned policy's answers to those prompts now score higher than the SFT model's (same seed)
    prof = get_profile("smoke")
    world = world_from_config(prof.world)
    kept = {r["prompt_id"] for r in records}
    tasks = [t for t in world.splits["train"][:16] if t.prompt_id in kept]
    rm, rm_tok = load_reward_model(reward_checkpoint(prof))
    policy, tok = load_policy(prof, out)
    prompts = [render_prompt(tok, t.instruction, t.context, prof.sft.prompt_format) for t in tasks]
    sft, _ = load_base(str(sft_checkpoint(prof)))

    def mean_reward(model):
        gens = generate(model, tok, prompts, prof.max_new_tokens, seed=0, batch_size=64)
        return sum(score_responses(rm, rm_tok, prompts, [g.text for g in gens], [g.finished for g in gens])) / len(gens)
    assert mean_reward(policy) > mean_reward(sft)

    # Llama 2's order: PPO from the rejection-sampling policy, which is also its KL reference
    assert main(["--profile", "smoke", "ppo", "--steps", "1", "--init", str(out), "--out", str(tmp_path / "ppo")]) == 0
    assert "starting from the policy in" in capsys.readouterr().out
    ppo, _ = load_policy(prof, tmp_path / "ppo")  # reads start.json: the RS adapter merged, PPO's adapter on top
    ids = tok(prompts[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        with ppo.disable_adapter():
            reference = ppo(**ids).logits
        assert torch.allclose(reference, policy(**ids).logits, atol=1e-4)  # the RS policy
        assert not torch.allclose(reference, sft(**ids).logits, atol=1e-2)  # not the SFT model
        assert not torch.allclose(ppo(**ids).logits, reference, atol=1e-4)  # one PPO step moved it

    # Llama 2's next round: sample from the rejection-sampling policy, new adapters on top of it
    assert main(["--profile", "smoke", "rejection-sampling", "--n", "2", "--n-prompts", "8", "--epochs", "1",
                 "--init", str(out), "--out", str(tmp_path / "rs2")]) == 0
    assert f"samples of the policy in {out.resolve()}" in capsys.readouterr().out
    again, _ = load_policy(prof, tmp_path / "rs2")
    with torch.no_grad(), again.disable_adapter():
        assert torch.allclose(again(**ids).logits, policy(**ids).logits, atol=1e-4)
    assert main(["--profile", "smoke", "rejection-sampling", "--n", "1", "--init", str(out), "--out", str(out)]) == 2
    assert "both name" in capsys.readouterr().err  # it would replace the policy it samples from
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["--profile", "smoke", "rejection-sampling", "--n", "1", "--out", str(tmp_path / "mine")]) == 2
    assert "did not write" in capsys.readouterr().err
