"""How much does the main job's result move with the seed? ``python -m rlhf_lite.tools.seed_spread RUN ...``
reads the ``metrics.json`` of several ``pipeline --seed N --out RUN`` folders, each run from an empty cache (so
every stage was trained again with its seed), and prints each run's headline numbers with their evaluation
intervals, then their mean and range over the runs. The interval of one run covers the evaluation's sampling
of prompts; the range over seeds adds the training's own noise, and a headline should be read against both."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

COLUMNS = [  # (header, model, metric): win rates with their interval, then plain numbers
    ("SFT vs base", "sft", "winrate_vs_base"),
    ("PPO vs SFT", "ppo", "winrate_vs_sft"),
    ("PPO-ptx vs SFT", "ppo_ptx", "winrate_vs_sft"),
    ("RM accuracy", "rm", "accuracy_heldout_labelers"),
    ("SFT halluc.", "sft", "hallucination_rate"),
    ("PPO halluc.", "ppo", "hallucination_rate"),
]


def spread(runs: list[dict]) -> dict:
    """Per column: the value of each run, their mean, min and max."""
    out = {}
    for header, model, metric in COLUMNS:
        values = [m[model][metric] for m in runs]
        out[header] = {"values": values, "mean": mean(values), "min": min(values), "max": max(values)}
    return out


def table(runs: list[dict], names: list[str]) -> str:
    """A markdown table: one row per run (win rates with their 95 % interval), then the mean and the range."""
    rows = ["| run | seed | " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, m in zip(names, runs):
        cells = []
        for _, model, metric in COLUMNS:
            v, ci = m[model][metric], m[model].get(f"{metric}_ci")
            cells.append(f"{v:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]" if ci and "winrate" in metric
                         else f"{v:.1%}" if "rate" in metric else f"{v:.3f}")
        rows.append(f"| {name} | {m['setup']['seed']} | " + " | ".join(cells) + " |")
    s = spread(runs)
    fmt = {h: ("{:.1%}" if "rate" in metric else "{:.3f}") for h, _, metric in COLUMNS}
    rows.append("| mean | | " + " | ".join(fmt[h].format(s[h]["mean"]) for h in s) + " |")
    rows.append("| range | | " + " | ".join(f"{fmt[h].format(s[h]['min'])} to {fmt[h].format(s[h]['max'])}"
                                             for h in s) + " |")
    return "\n".join(rows).replace("%", " %")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlhf_lite.tools.seed_spread", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="pipeline --out folders")
    args = p.parse_args(argv)
    runs = []
    for run in args.runs:
        path = run / "metrics.json"
        if not path.is_file():
            print(f"{path}: no such file; pass the --out folders of finished pipeline runs", file=sys.stderr)
            return 2
        m = json.loads(path.read_text())
        if "ppo_ptx" not in m:
            print(f"{path}: not a TinyWorld run (no gold judge, no PPO-ptx); compare TinyWorld runs", file=sys.stderr)
            return 2
        runs.append(m)
    profiles = {m["setup"]["profile"] for m in runs}
    if len(profiles) > 1:
        print(f"these runs are of different profiles ({', '.join(sorted(profiles))}); compare one profile's runs",
              file=sys.stderr)
        return 2
    print(table(runs, [r.name for r in args.runs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
