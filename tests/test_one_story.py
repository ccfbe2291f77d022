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


PROTOCOL_LINES = [  # (notebook, model, baseline, its win-rate line, its gold line)
    ("02_sft_lora.ipynb", "sft", "base", "prefer SFT over base {w} of the time [95 %: {lo}, {hi}]",
     "base {a:.3f} -> SFT {b:.3f}"),
    ("05_ppo.ipynb", "ppo", "sft", "win rate {w} [{lo}, {hi}]", "gold: SFT {a:.3f}, PPO {b:.3f}"),
]


@pytest.mark.parametrize("notebook,model,other,win_line,gold_line", PROTOCOL_LINES, ids=["02", "05"])
def test_notebooks_02_and_05_measure_the_main_jobs_models(metrics, notebook, model, other, win_line, gold_line):
    """02 trains the stages' SFT model (the same adapters) and 05 the main job's PPO (the same settings and seed);
    each compares it with its baseline by the same protocol on the same answers: the main job's numbers."""
    r = metrics[model]
    lo, hi = r[f"winrate_vs_{other}_ci"]
    out = outputs(notebook)
    assert win_line.format(w=f"{r[f'winrate_vs_{other}']:.1%}", lo=f"{lo:.1%}", hi=f"{hi:.1%}") in out
    assert gold_line.format(a=metrics[other]["gold_score"], b=r["gold_score"]) in out


def test_notebook_06_and_the_readme_quote_the_main_job(metrics):
    out = outputs("06_evaluation.ipynb")
    readme = (ROOT / "README.md").read_text()
    for name, other, label in (("sft", "base", "base"), ("ppo", "sft", "SFT"), ("ppo_ptx", "sft", "SFT")):
        r = metrics[name]
        w, (lo, hi) = r[f"winrate_vs_{other}"], r[f"winrate_vs_{other}_ci"]
        assert f"{w:.1%} [{lo:.1%}, {hi:.1%}] vs {label}" in out, name  # the results table
        row = f"{w * 100:.1f} % [{lo * 100:.1f}, {hi * 100:.1f}] vs {label}"
        assert re.search(rf"\| {r['gold_score']:.3f} \| {re.escape(row)} \|", readme), (name, row)


def test_notebook_07_puts_the_main_jobs_runs_on_its_scale(metrics):
    """07 retrains the main job's PPO and PPO-ptx (the same settings and seeds, measured along the way without
    touching training's random state) and compares every method with SFT's protocol answers: the main job's table."""
    out = outputs("07_beyond_ppo.ipynb")
    assert f"gold {metrics['sft']['gold_score']:.3f}" in next(line for line in out.splitlines()
                                                               if line.startswith("SFT on "))
    for name, label in (("ppo", "PPO"), ("ppo_ptx", "PPO-ptx")):
        r = metrics[name]
        lo, hi = r["winrate_vs_sft_ci"]
        row = next(line for line in out.splitlines() if line.startswith(label + " ") and "[" in line)  # the table's
        assert row.split()[1] == f"{r['gold_score']:.3f}", row
        assert f"{r['winrate_vs_sft']:.1%} [{lo:.1%}, {hi:.1%}]" in row, row
