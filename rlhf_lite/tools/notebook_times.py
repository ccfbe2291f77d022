"""The course's runtime budget: how long each notebook takes (``python -m rlhf_lite notebook-times``).

Two ways to measure, both from the notebooks themselves:

* ``execute``: run every notebook top to bottom in a fresh kernel with ``RLHF_LITE_PROFILE`` set (the notebooks on
  disk are not changed) and time it. This is what CI does on ``smoke`` with ``pytest --nbval-lax``.
* ``recorded``: read the time stamps Jupyter stored in each executed cell (``metadata.execution``) of the committed
  notebooks: the wall time of the execution whose outputs readers see (``tiny``), without running it again.

Goal: all notebooks on ``smoke`` within 15 minutes together on 2 cores, so that CI stays within 20.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

from ..config import get_profile
from ..course.student import read_notebook
from ..files import WRITTEN_BY, check_output_file, write_text
from ..models import REPO_ROOT
from ..runtime import runs_dir

NOTEBOOKS = REPO_ROOT / "notebooks"
SMOKE_BUDGET_S = 15 * 60


def notebook_paths(folder: str | Path = NOTEBOOKS, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in ``folder`` (``only``: those whose name starts with one of these prefixes, e.g.
    "05")."""
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {folder}"
                                + (f" matching {only}" if only else ""))
    return paths


def _cell_span(cell) -> tuple[datetime, datetime] | None:
    """(start, end) of an executed code cell, from the stamps Jupyter stores in ``metadata.execution``."""
    stamps = cell.get("metadata", {}).get("execution", {})
    if "iopub.execute_input" not in stamps or "shell.execute_reply" not in stamps:
        return None
    return tuple(datetime.fromisoformat(stamps[k].replace("Z", "+00:00")) for k in ("iopub.execute_input",
                                                                                    "shell.execute_reply"))


def recorded_seconds(path: str | Path) -> dict:
    """Wall time of the execution stored in a notebook: first cell start to last cell end (``None`` if it has no
    time stamps)."""
    spans = [sp for c in read_notebook(path)["cells"] if c["cell_type"] == "code" and (sp := _cell_span(c))]
    if not spans:
        return {"notebook": Path(path).name, "seconds": None, "executed_at": None}
    start, end = min(a for a, _ in spans), max(b for _, b in spans)
    return {"notebook": Path(path).name, "seconds": round((end - start).total_seconds(), 1),
            "executed_at": start.isoformat(timespec="seconds")}


def execute_seconds(path: str | Path, profile: str, timeout: int = 3600) -> dict:
    """Run one notebook in a fresh kernel (working directory: its folder) with ``RLHF_LITE_PROFILE=profile`` and
    progress bars off; return its wall time and the slowest cell. The file on disk is left as it is."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(str(path), as_version=4)
    env = {"RLHF_LITE_PROFILE": profile, "TQDM_DISABLE": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    t0 = time.time()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(Path(path).parent)}},
                       extra_arguments=["--IPKernelApp.log_level=ERROR"]).execute()  # no "running over TCP" warning
    except CellExecutionError as e:
        raise RuntimeError(f"{Path(path).name} failed on profile {profile!r}: {str(e).splitlines()[0][:300]}") from None
    finally:
        for k, v in old.items():  # put the caller's environment back
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    seconds = time.time() - t0
    cells = [((sp[1] - sp[0]).total_seconds(), i) for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (sp := _cell_span(c))]
    slowest = max(cells) if cells else (0.0, None)
    return {"notebook": Path(path).name, "seconds": round(seconds, 1), "slowest_cell": slowest[1],
            "slowest_cell_seconds": round(slowest[0], 1)}


def notebook_times(profile: str = "smoke", mode: str = "execute", only: list[str] | None = None,
                   folder: str | Path = NOTEBOOKS, out: str | Path | None = None) -> dict:
    """Every notebook's wall time: executed now on ``profile``, or read from the committed outputs (``recorded``).
    Writes JSON to ``out`` when given; returns ``{"profile", "mode", "notebooks": [...], "total_s"}``."""
    if mode not in ("execute", "recorded"):
        raise ValueError(f"mode must be 'execute' or 'recorded', got {mode!r}")
    get_profile(profile)  # a typo'd profile stops here, with the list of valid ones
    if out:
        check_output_file(out, "notebook-times")  # before the work: an existing file of yours is never replaced
    rows = []
    for path in notebook_paths(folder, only):
        rows.append(execute_seconds(path, profile) if mode == "execute" else recorded_seconds(path))
        if mode == "execute":
            print(f"timed {rows[-1]['notebook']}: {rows[-1]['seconds']} s", flush=True)
    total = sum(r["seconds"] or 0 for r in rows)
    result = {"profile": profile, "mode": mode, "notebooks": rows, "total_s": round(total, 1)}
    if out:
        write_text(out, json.dumps({WRITTEN_BY: "notebook-times", **result}, indent=1) + "\n")
    return result


def times_table(result: dict) -> str:
    """The measured times as a table, with the total against the smoke budget."""
    lines = [f"{'notebook':<28} {'seconds':>8}   ({result['mode']}, profile {result['profile']})"]
    lines += [f"{r['notebook']:<28} {r['seconds'] if r['seconds'] is not None else '—':>8}"
              for r in result["notebooks"]]
    total = result["total_s"]
    lines.append(f"{'total':<28} {total:>8.0f}   = {total / 60:.1f} min")
    if result["profile"] == "smoke":
        ok = "within" if total <= SMOKE_BUDGET_S else "OVER"
        lines.append(f"{ok} the smoke budget of {SMOKE_BUDGET_S // 60} min (CI runs these under pytest --nbval-lax)")
    return "\n".join(lines)


def notebook_times_command(notebook_profile: str = "smoke", recorded: bool = False, only: list[str] | None = None,
                           out: str | None = None) -> dict:
    """``notebook-times``: time the notebooks (or read the recorded times), print the table, write the JSON."""
    mode = "recorded" if recorded else "execute"
    out = out or runs_dir() / f"notebook-times-{notebook_profile}-{mode}.json"
    result = notebook_times(notebook_profile, mode, only, out=out)
    print(times_table(result))
    print(f"written to {out}")
    return result
