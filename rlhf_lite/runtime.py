"""Small helpers every notebook's first cell uses: seeding, device choice, versions, quiet logs."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run can be repeated exactly."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(prefer: str | None = None) -> str:
    """"cuda" if a GPU is there (or was asked for), else "cpu". ``prefer`` overrides; asking for a
    missing GPU is an error rather than a silent fall-back."""
    import torch

    if prefer is not None:
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was asked for but torch sees no CUDA GPU; use 'cpu' "
                               "(in Colab: Runtime > Change runtime type > GPU)")
        return prefer
    return "cuda" if torch.cuda.is_available() else "cpu"


def quiet() -> None:
    """Silence library noise (hub progress bars, transformers' info/warnings); our own messages stay."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported
    if "datasets" in sys.modules:  # imported already: switch its bars ("Tokenizing train dataset") off directly
        sys.modules["datasets"].disable_progress_bars()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module=r"transformers\..*")
    warnings.filterwarnings("ignore", module=r"torch\..*", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)  # peft → transformers


def progress_bar(iterable=None, *, desc: str, enabled: bool = True, **kwargs):
    """A tqdm.auto bar (a widget in Jupyter, text elsewhere), off when ``enabled`` is False or when the
    environment sets ``TQDM_DISABLE=1`` (CI, and the runs that produce the committed notebooks)."""
    from tqdm.auto import tqdm

    disable = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    return tqdm(iterable, desc=desc, disable=disable, **kwargs)


@contextlib.contextmanager
def hf_bars_off():
    """Hide transformers' own progress bars ("Loading weights", "Writing shards") inside the block."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike):
    """Yield a fresh temporary folder beside ``out``. If the block succeeds, the folder replaces ``out``;
    if it fails or is interrupted, the folder is removed: nothing half-written is ever left at ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)  # mkdtemp makes it private; an output folder is for everyone
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; when the block finishes, it replaces ``path`` in one step.
    A crash while writing leaves the old file (or none), never half of a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def versions() -> dict[str, str]:
    """Versions of the packages the course depends on (missing ones as 'not installed')."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ["torch", "transformers", "tokenizers", "peft", "datasets", "bitsandbytes", "ipywidgets", "rlhf-lite"]:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def runs_dir() -> Path:
    """Where runs and cached stage outputs go: ``$RLHF_LITE_RUNS``, else ``runs/`` in the repository
    (a clone or an editable install), else ``runs/`` in the current folder."""
    if os.environ.get("RLHF_LITE_RUNS"):
        return Path(os.environ["RLHF_LITE_RUNS"])
    repo = Path(__file__).resolve().parent.parent
    return repo / "runs" if (repo / "pyproject.toml").is_file() else Path.cwd() / "runs"


def config_key(*configs) -> str:
    """A short hash of dataclass configs: cached stage outputs are reused only for identical settings."""
    import dataclasses
    import hashlib
    import json

    blob = json.dumps([dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c for c in configs], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def warmup_linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Learning rate: linear warm-up over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    import torch

    def factor(step: int) -> float:
        return min((step + 1) / max(warmup_steps, 1), max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(loss, params, optimizer, scheduler, grad_clip: float) -> None:
    """One update: backpropagate ``loss``, clip the gradients' global norm, step, advance the schedule,
    clear the gradients."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def current_rss_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; elsewhere the peak so far from ``resource``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class MemoryMonitor:
    """``with MemoryMonitor() as m: ...`` then ``m.seconds`` and ``m.peak_mb``: wall time, and the peak memory the
    block added on top of what was in use when it started: CPU resident memory sampled every 20 ms by a thread
    (after handing freed heap memory back to the OS, so that an earlier block's leftovers do not hide this
    one's), or on CUDA ``torch.cuda.max_memory_allocated`` (exact)."""

    def __init__(self, device: str = "cpu", interval: float = 0.02):
        self.device, self.interval = str(device), interval

    def __enter__(self):
        import threading
        import time

        import torch

        self.cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**20
        else:
            import ctypes
            import gc

            gc.collect()
            with contextlib.suppress(OSError, AttributeError):  # hand freed heap back to the OS (glibc), so the
                ctypes.CDLL("libc.so.6").malloc_trim(0)        # baseline is what is live, not what was once used
            self.start = current_rss_mb()
        self.peak, self._stop = self.start, threading.Event()

        def sample():
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, current_rss_mb())

        if not self.cuda:
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        self.t0 = time.time()
        return self

    def __exit__(self, *exc):
        import time

        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss_mb())
        self.seconds = time.time() - self.t0
        self.peak_mb = self.peak - self.start
        return False
