"""The seed-spread table behind the README's headline: each run's numbers, their mean and range over seeds."""
import json

import pytest

from rlhf_lite.tools.seed_spread import main, spread


def fake_run(seed: int, ppo: float) -> dict:
    ci = [ppo - 0.02, ppo + 0.02]
    return {"setup": {"seed": seed, "profile": "tiny"},
            "sft": {"winrate_vs_base": 0.77, "winrate_vs_base_ci": [0.75, 0.79], "hallucination_rate": 0.3},
            "ppo": {"winrate_vs_sft": ppo, "winrate_vs_sft_ci": ci, "hallucination_rate": 0.2},
            "ppo_ptx": {"winrate_vs_sft": ppo + 0.01, "winrate_vs_sft_ci": ci},
            "rm": {"accuracy_heldout_labelers": 0.68}}


def test_spread_by_hand_and_the_table(tmp_path, capsys):
    runs = [fake_run(0, 0.54), fake_run(1, 0.60), fake_run(2, 0.57)]
    s = spread(runs)
    assert s["PPO vs SFT"]["mean"] == pytest.approx(0.57)
    assert (s["PPO vs SFT"]["min"], s["PPO vs SFT"]["max"]) == (0.54, 0.60)
    for i, m in enumerate(runs):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "metrics.json").write_text(json.dumps(m))
    assert main([str(tmp_path / f"s{i}") for i in range(3)]) == 0
    out = capsys.readouterr().out
    assert "| s1 | 1 |" in out and "60.0 % [58.0 %, 62.0 %]" in out
    assert "| mean | | 77.0 % | 57.0 % |" in out and "54.0 % to 60.0 %" in out


def test_spread_refuses_what_it_cannot_compare(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such file" in capsys.readouterr().err
    real = fake_run(0, 0.5)
    del real["ppo_ptx"]
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "metrics.json").write_text(json.dumps(real))
    assert main([str(tmp_path / "hub")]) == 2
    assert "not a TinyWorld run" in capsys.readouterr().err
