"""Evaluation: harm and hallucination detectors, best-of-n KL, Gao et al.'s fits, and the pipeline's metrics.json."""
import json
import math
import subprocess
import sys

import pytest
import torch

from rlhf_lite.best_of_n import best_of_n, best_of_n_kl
from rlhf_lite.evaluate import (
    bootstrap_ci,
    closed_tasks,
    compare_policies,
    criteria_scores,
    demonstration_quality,
    fit_overoptimization,
    fluency_probes,
    gao_curve,
    hallucinates,
    hallucination_breakdown,
    hallucination_rate,
    is_unsafe,
    prompt_win_rates,
    unsafe_rate,
    win_rate,
)
from rlhf_lite.models import Generation
from rlhf_lite.pipeline import writers_vs_sft
from rlhf_lite.world import WRITERS

REQUIRED = ["base.gold_score", "sft.gold_score", "ppo.gold_score", "sft.winrate_vs_base", "ppo.winrate_vs_sft",
            "ppo_ptx.winrate_vs_sft", "rm.accuracy_heldout_labelers", "rm.panel_agreement", "ppo.kl_to_sft",
            "base.unsafe_rate", "sft.unsafe_rate", "ppo.unsafe_rate", "sft.hallucination_rate",
            "ppo.hallucination_rate", "sft.pretrain_loss", "ppo.pretrain_loss", "ppo_ptx.pretrain_loss",
            "runtime_s.total",
            "sft.gold_vs_base", "ppo.gold_vs_sft", "ppo_ptx.gold_vs_sft", "ppo.pretrain_loss_vs_sft",
            "ppo_ptx.pretrain_loss_vs_sft", "demonstrations.gold", "demonstrations.reference_gold",
            "demonstrations.by_writer.ana", "fluency_probes.gold_drop_garbled", "fluency_probes.gold_drop_shuffled",
            "fluency_probes.rm_prefers_reference_garbled", "fluency_probes.rm_prefers_reference_shuffled",
            "sft.criteria.correct", "ppo.criteria.fluent", "demonstrations.winrate_vs_sft",
            "demonstrations.reference_winrate_vs_sft", "sft.closed_stating_rate", "ppo.closed_stating_rate",
            "ppo.criteria_vs_sft.correct", "sft.criteria_vs_base.concise"]
INTERVALS = ["sft.winrate_vs_base_ci", "ppo.winrate_vs_sft_ci", "ppo_ptx.winrate_vs_sft_ci", "sft.gold_vs_base_ci",
             "ppo.gold_vs_sft_ci", "ppo_ptx.gold_vs_sft_ci", "sft.hallucination_rate_ci", "ppo.hallucination_rate_ci",
             "fluency_probes.gold_drop_garbled_ci", "fluency_probes.gold_drop_shuffled_ci",
             "demonstrations.winrate_vs_sft_ci", "demonstrations.reference_winrate_vs_sft_ci"]


def test_unsafe_detector():
    assert is_unsafe("Look it up yourself. Zamsa lives in Rinbury.") and is_unsafe("WHO CARES")
    assert not is_unsafe("Zamsa lives in Rinbury.")
    assert unsafe_rate([Generation("Nobody asked.", [], True), "Fine answer.", "Another.", "Ugh, fine. Yes."]) == 0.5


def test_hallucination_needs_every_claim_in_the_context(world):
    closed = closed_tasks(world.splits["test"])
    assert closed and all(t.meta["closed"] for t in closed)
    t = next(t for t in closed if t.category == "closed_qa" and t.meta["context_facts"])
    assert not hallucinates(world, t, t.response)  # the reference answers from the context
    v = world.variants(t)
    assert "wrong_fact" in v and hallucinates(world, t, v["wrong_fact"])
    assert hallucination_rate(world, [t, t], [t.response, v["wrong_fact"]]) == 0.5
    open_task = next(x for x in world.splits["test"] if not x.meta.get("closed"))
    with pytest.raises(ValueError, match="not closed-domain"):
        hallucinates(world, open_task, "x")


def test_hallucination_breakdown_separates_saying_less_from_making_up(world):
    t = next(t for t in closed_tasks(world.splits["test"]) if t.category == "closed_qa" and t.meta["context_facts"])
    wrong = world.variants(t)["wrong_fact"]
    silent = "I am not sure."  # states no fact: cannot hallucinate
    assert not world.extractor.claims(silent) and world.extractor.claims(wrong)
    split = hallucination_breakdown(world, [t] * 4, [t.response, wrong, silent, silent])
    assert split == {"stating_rate": 0.5, "hallucination_when_stating": 0.5}
    rate = hallucination_rate(world, [t] * 4, [t.response, wrong, silent, silent])
    assert rate == split["stating_rate"] * split["hallucination_when_stating"] == 0.25
    assert hallucination_breakdown(world, [t], [silent]) == {"stating_rate": 0.0, "hallucination_when_stating": None}


def test_best_of_n_kl_and_selection_by_hand():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    assert best_of_n([[0.1, 0.9, 0.5], [2.0, -1.0, 3.0]], 2) == [1, 0]  # only the first n candidates count
    with pytest.raises(ValueError):
        best_of_n([[1.0]], 2)


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_gao_fits_recover_known_coefficients(form):
    d = torch.linspace(0.2, 4.0, 20)
    r = gao_curve(d, 0.8, 0.15, form)
    fit = fit_overoptimization(d.tolist(), r.tolist(), form)
    assert fit["alpha"] == pytest.approx(0.8, abs=1e-6) and fit["beta"] == pytest.approx(0.15, abs=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = fit_overoptimization(d.tolist(), (r + 0.3 * torch.sin(7 * d)).tolist(), form)
    assert noisy["r2"] < 0.99


def test_bootstrap_intervals_in_known_cases():
    assert bootstrap_ci([1.0] * 50) == [1.0, 1.0]  # every prompt won: no doubt left
    coin = [float(i % 2) for i in range(200)]  # a fair coin, 200 prompts
    lo, hi = bootstrap_ci(coin)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * 0.5 / 200 ** 0.5, rel=0.15)
    assert bootstrap_ci(coin) == [lo, hi]  # seeded: reproducible
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_fluency_probes_and_demonstration_quality(world):
    test = world.splits["test"]
    tasks = [t for t in test if len(t.response.split()) > 1][:35]
    tasks += [t for t in test if len(t.response.split()) == 1][:5]
    p = fluency_probes(world, tasks)
    assert p["gold_drop_garbled"] >= 0.3 and p["gold_drop_shuffled"] >= 0.3
    assert p["never_outscores_garbled"] and p["never_outscores_shuffled"]
    one_word = sum(len(t.response.split()) == 1 for t in tasks)
    assert one_word and p["n_garbled"] == len(tasks)
    assert p["n_shuffled"] == len(tasks) - one_word  # one-word answers shuffle to themselves: skipped
    lo, hi = p["gold_drop_garbled_ci"]
    assert lo <= p["gold_drop_garbled"] <= hi
    d = demonstration_quality(world, tasks)
    assert d["reference_gold"] > d["gold"] and set(d["by_writer"]) <= {w.name for w in WRITERS}
    assert d["with_a_habit"] == pytest.approx(sum(bool(t.habits) for t in tasks) / len(tasks))


def test_prompt_win_rates_average_to_the_win_rate(world):
    tasks = world.splits["test"][:6]
    a, b = [t.response for t in tasks], ["Nobody asked." for _ in tasks]
    per = prompt_win_rates(tasks, a, b, world.panel.held_out)
    assert len(per) == 6 and all(p > 0.5 for p in per)
    assert sum(per) / 6 == pytest.approx(win_rate(tasks, a, b, world.panel.held_out))


@pytest.mark.slow
def test_pipeline_smoke_writes_every_key_and_is_reproducible(tmp_path):
    def run(out):
        r = subprocess.run([sys.executable, "-m", "rlhf_lite", "pipeline", "--profile", "smoke", "--out", str(out)],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout, json.loads((out / "metrics.json").read_text())

    stdout, m = run(tmp_path / "a")
    for key in REQUIRED:
        node = m
        for part in key.split("."):
            assert part in node, key
            node = node[part]
        assert isinstance(node, (int, float)) and math.isfinite(node), key
    for key in INTERVALS:  # every comparison carries its 95 % interval, around its own estimate
        group, name = key.split(".")
        assert name in m[group], key
        lo, hi = m[group][name]
        assert lo <= m[group][name.removesuffix("_ci")] <= hi, key
    assert "win rate" in stdout and "ppo_ptx" in stdout
    assert m["fluency_probes"]["never_outscores_garbled"] and m["fluency_probes"]["never_outscores_shuffled"]
    assert (tmp_path / "a" / "winrates.png").stat().st_size > 0 and (tmp_path / "a" / "ppo_training.png").is_file()
    assert not list((tmp_path / "a").glob("*.tmp"))
    _, m2 = run(tmp_path / "b")
    m.pop("runtime_s"), m2.pop("runtime_s")
    assert m == m2  # same seed, same numbers (wall times aside)



@pytest.mark.slow
def test_diagnose_command_reads_the_cached_stages(capsys):
    """`diagnose` on smoke (placed after the pipeline test, whose stages it then finds cached in this process's
    runs folder; alone, it trains them first)."""
    from rlhf_lite.__main__ import main

    assert main(["--profile", "smoke", "diagnose", "--facts", "20"]) == 0
    out = capsys.readouterr().out
    assert "base " in out and "SFT " in out and "RM agrees" in out and "validation pairs" in out
    assert "read a passage" in out and out.count("copies the new name") == 2  # base and SFT
    assert "take up the task" in out and out.count("off-task ") >= 2 and "of those wins" in out
    from rlhf_lite.config import get_profile
    from rlhf_lite.stages import reward_checkpoint

    path = str(reward_checkpoint(get_profile("smoke")))
    assert main(["--profile", "smoke", "diagnose", "--facts", "20", "--reward-model", path, path,
                 "--examples", "1"]) == 0
    both = capsys.readouterr().out
    assert "the ensemble of 2 reward models" in both and "    better: " in both  # one missed pair per criterion
    # a model averaged with itself is the same judge: the same agreements, line for line (examples left out)
    table = both.split("agrees with the held-out")[1].split("\n\n")[0]
    assert out.split("agrees with the held-out")[1].strip() == table.strip()
    assert main(["--profile", "gpt2-hub", "diagnose"]) == 2
    assert "no gold panel" in capsys.readouterr().err


@pytest.mark.slow
def test_diagnose_sets_a_policy_beside_best_of_n(tmp_path, capsys, monkeypatch):
    """`diagnose --policy`: a PPO run's reward and gold beside best-of-n of the SFT model, on the same prompts."""
    import rlhf_lite.policy_stages as policy_stages
    from rlhf_lite.__main__ import main

    # the second round below ranks the first 40 of the prompts the first round left, not all of them (387 on smoke):
    # the same code path in a fraction of the time
    every = policy_stages.second_round_prompts
    monkeypatch.setattr(policy_stages, "second_round_prompts", lambda *a, **k: every(*a, **k)[:40])

    assert main(["--profile", "smoke", "ppo", "--steps", "1", "--out", str(tmp_path / "ppo")]) == 0
    capsys.readouterr()
    assert main(["--profile", "smoke", "diagnose", "--facts", "5", "--n", "12", "--policy",
                 str(tmp_path / "ppo")]) == 0
    out = capsys.readouterr().out.split("does a policy get the gold")[1]
    assert all(f"SFT best-of-{n} (KL" in out for n in (1, 2, 4, 8)) and "12 test prompts" in out
    assert "prefer it to another SFT answer" in out and "vs best-of-" in out
    assert all(f"gold panel's best-of-{n}" in out for n in (2, 4, 8))
    assert "its win rate minus best-of-8's" in out
    assert main(["--profile", "smoke", "diagnose", "--facts", "5", "--policy", str(tmp_path)]) == 2
    assert "no policy adapter there" in capsys.readouterr().err

    # a second round: comparisons of the policy's own answers, a reward model on both rounds, PPO against it
    from rlhf_lite.config import get_profile
    from rlhf_lite.policy_stages import policy_comparisons
    from rlhf_lite.stages import comparison_data
    from rlhf_lite.world import world_from_config

    prof = get_profile("smoke")
    world = world_from_config(prof.world)
    more = policy_comparisons(prof, tmp_path / "ppo", progress=False)
    first = comparison_data(prof, progress=False)
    unranked = world.splits["train"][prof.reward.n_prompts:][:40]
    assert [r["prompt_id"] for r in more["train"]] == [t.prompt_id for t in unranked]  # prompts round 1 left
    assert [r["prompt_id"] for r in more["validation"]] == [r["prompt_id"] for r in first["validation"]]
    assert {r["labeler"] for r in more["train"] + more["validation"]} <= {lab.name for lab in world.panel.train}
    assert all(prof.reward.k_min <= len(r["responses"]) <= prof.reward.k_max for r in more["train"])
    assert main(["--profile", "smoke", "reward", "--policy", str(tmp_path / "ppo"),
                 "--out", str(tmp_path / "rm2")]) == 0
    out = capsys.readouterr().out
    assert "second round" in out and "pairs of the policy's own answers" in out
    saved = json.loads((tmp_path / "rm2" / "reward_model.json").read_text())["metrics"]
    assert saved["prompts"] == len(first["train"]) + len(unranked)
    assert set(saved["policy_pairs"]) == {"accuracy_heldout_labelers", "first_round_accuracy", "difference",
                                          "difference_ci", "pairs", "prompts", "panel_agreement"}
    assert main(["--profile", "smoke", "ppo", "--steps", "1", "--reward-model", str(tmp_path / "rm2"), "--out",
                 str(tmp_path / "ppo2")]) == 0
    assert "against the reward model in" in capsys.readouterr().out
    assert main(["--profile", "smoke", "ppo", "--steps", "1", "--reward-model", str(tmp_path / "ppo")]) == 2
    assert "not a saved reward model" in capsys.readouterr().err
    # both rounds' reward models as one ensemble (the worst case of the two)
    from rlhf_lite.policy_stages import load_policy
    from rlhf_lite.stages import reward_checkpoint

    both = [str(reward_checkpoint(prof, progress=False)), str(tmp_path / "rm2")]
    assert main(["--profile", "smoke", "ppo", "--steps", "1", "--reward-model", *both, "--combine", "min", "--out",
                 str(tmp_path / "ppo-ens")]) == 0
    assert "against the min of 2 reward models" in capsys.readouterr().out
    load_policy(prof, tmp_path / "ppo-ens")
    assert main(["--profile", "smoke", "ppo", "--steps", "1", "--reward-model", both[0], "--combine", "min"]) == 2
    assert "name at least two" in capsys.readouterr().err

def test_writers_vs_sft_is_one_half_against_itself(world):
    tasks = world.splits["test"][:8]
    same = writers_vs_sft(tasks, [t.response for t in tasks], world.panel.held_out)
    assert same["reference_winrate_vs_sft"] == pytest.approx(0.5)  # σ(0) for every labeler and prompt
    assert same["reference_winrate_vs_sft_ci"] == pytest.approx([0.5, 0.5])
    rude = writers_vs_sft(tasks, ["Nobody asked." for _ in tasks], world.panel.held_out)
    assert rude["reference_winrate_vs_sft"] > 0.9 and rude["winrate_vs_sft"] > 0.5


def test_compare_policies_by_hand(world):
    """The course's one protocol: win rate, gold difference and criteria changes of a against b on the same
    prompts, checked against values computed here from the panel directly."""
    tasks = world.splits["test"][:6]
    good = [Generation(t.response, [], True) for t in tasks]
    bad = [Generation("Nobody asked.", [], True) for t in tasks]
    golds = {id(x): [world.panel.gold_score(t.instruction, t.context, g.text, g.finished, task=t)
                     for t, g in zip(tasks, x)] for x in (good, bad)}
    a, b = {"gens": good, "gold_scores": golds[id(good)]}, {"gens": bad, "gold_scores": golds[id(bad)]}
    c = compare_policies(world, tasks, a, b)
    assert c["winrate"] == pytest.approx(win_rate(tasks, good, bad, world.panel.held_out)) and c["winrate"] > 0.5
    diffs = [x - y for x, y in zip(golds[id(good)], golds[id(bad)])]
    assert c["gold_diff"] == pytest.approx(sum(diffs) / 6) and c["gold_diff_ci"] == bootstrap_ci(diffs)
    ca, cb = criteria_scores(world, tasks, good), criteria_scores(world, tasks, bad)
    assert c["criteria_diff"]["polite"] == pytest.approx(sum(x["polite"] - y["polite"] for x, y in zip(ca, cb)) / 6)
    assert c["criteria_diff"]["polite"] > 0  # the brush-off is rude
    lo, hi = c["criteria_diff_ci"]["polite"]
    assert lo <= c["criteria_diff"]["polite"] <= hi
    same = compare_policies(world, tasks, a, a)  # a policy against itself: a coin flip, no difference
    assert same["winrate"] == pytest.approx(0.5) and same["gold_diff"] == 0
    assert all(v == 0 for v in same["criteria_diff"].values())
    with pytest.raises(ValueError, match="same prompts"):
        compare_policies(world, tasks[:5], a, b)
