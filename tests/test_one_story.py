"""One story, told once: PPO's and SFT's figures are the main job's wherever the course quotes them. The main
job's metrics are the ones notebook 06 saved (``run_pipeline`` on the saved stages, the same run as
``python -m rlhf_lite pipeline`` from an empty cache); notebook 05 measures its own PPO run with the same protocol
on the same answers, and the README's table quotes them."""
import json
import re
from pathlib import Path

import pytest

from rlhf_lite.files import load_state

ROOT = Path(__file__).resolve().parent.parent
SAVED = ROOT / "notebooks" / "saved" / "tiny"


def outputs(name: str) -> str:
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    return "\n".join("".join(o.get("text", [])) for c in cells for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def metrics() -> dict:
    return load_state(SAVED / "06-pipeline.safetensors")["result"]["metrics"]


def test_notebook_05_measures_the_main_jobs_ppo(metrics):
    """05 trains PPO with the main job's settings and seed and compares it with SFT by the same protocol: the
    same win rate, interval and gold scores as the main job."""
    ppo = metrics["ppo"]
    lo, hi = ppo["winrate_vs_sft_ci"]
    out = outputs("05_ppo.ipynb")
    assert f"win rate {ppo['winrate_vs_sft']:.1%} [{lo:.1%}, {hi:.1%}]" in out
    assert f"gold: SFT {metrics['sft']['gold_score']:.3f}, PPO {ppo['gold_score']:.3f}" in out


def test_notebook_02_measures_the_main_jobs_sft(metrics):
    """02 trains the SFT model the stages train (the same adapters) and compares it with the base model by the
    same protocol: the main job's win rate and gold scores."""
    sft = metrics["sft"]
    lo, hi = sft["winrate_vs_base_ci"]
    out = outputs("02_sft_lora.ipynb")
    assert f"prefer SFT over base {sft['winrate_vs_base']:.1%} of the time [95 %: {lo:.1%}, {hi:.1%}]" in out
    assert f"base {metrics['base']['gold_score']:.3f} -> SFT {sft['gold_score']:.3f}" in out


def test_notebook_06_and_the_readme_quote_the_main_job(metrics):
    out = outputs("06_evaluation.ipynb")
    readme = (ROOT / "README.md").read_text()
    for name, other, label in (("sft", "base", "base"), ("ppo", "sft", "SFT"), ("ppo_ptx", "sft", "SFT")):
        r = metrics[name]
        w, (lo, hi) = r[f"winrate_vs_{other}"], r[f"winrate_vs_{other}_ci"]
        assert f"{w:.1%} [{lo:.1%}, {hi:.1%}] vs {label}" in out, name  # the results table
        row = f"{w * 100:.1f} % [{lo * 100:.1f}, {hi * 100:.1f}] vs {label}"
        assert re.search(rf"\| {r['gold_score']:.3f} \| {re.escape(row)} \|", readme), (name, row)
