"""Do two pipeline runs agree? ``python -m rlhf_lite.tools.same_run RUN_A RUN_B`` compares two ``pipeline --out``
folders (``metrics.json``, ``ppo_history.json``, ``samples.json``) and prints every number that differs, leaving
out what is expected to: wall times, the settings-and-code key, and the keys listed with ``--ignore``. Exit 0 when
nothing else differs. Use it to check that a change to the code left a seeded run's results as they were."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TIMES = {"runtime_s", "time_s", "update_s", "config_key"}


def differences(a, b, ignore: set[str], path: str = "") -> list[str]:
    """Every place where the JSON values ``a`` and ``b`` differ, as "path: a != b" (keys in ``ignore`` skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in {'the first' if k in a else 'the second'}" for k in sorted(set(a) ^ set(b))
               if k not in ignore]
        for k in sorted(set(a) & set(b) - ignore):
            out += differences(a[k], b[k], ignore, f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, ignore, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlhf_lite.tools.same_run", description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--ignore", nargs="*", default=[], help="more keys whose values may differ")
    args = p.parse_args(argv)
    found = []
    for name in ("metrics.json", "ppo_history.json", "samples.json"):
        a, b = (json.loads((run / name).read_text()) for run in (args.a, args.b))
        found += [f"{name}{d}" for d in differences(a, b, TIMES | set(args.ignore))]
    print("\n".join(found) if found else "the two runs agree (wall times and the settings key aside)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
