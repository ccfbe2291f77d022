"""Small helpers every notebook's first cell uses: seeding, device choice, versions, quiet logs."""
from __future__ import annotations

import contextlib
import gc
import importlib.metadata as md
import os
import random
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run can be repeated exactly."""

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


DEVICE_ENV = "RLHF_LITE_DEVICE"
PRECISION_ENV = "RLHF_LITE_PRECISION"
DEVICES = ("auto", "cpu", "cuda")  # the choices of --device ("cuda:N" is accepted too)
PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(prefer: str | None = None) -> str:
    """Where every stage runs: "cuda" (or "cuda:N") or "cpu". ``prefer`` (the commands' ``--device``), else
    ``$RLHF_LITE_DEVICE``, else "auto": the GPU when torch sees one, the CPU otherwise. Asking for a missing GPU is
    an error rather than a silent fall-back."""

    source = "--device" if prefer is not None else f"${DEVICE_ENV}"
    choice = (prefer if prefer is not None else os.environ.get(DEVICE_ENV, "")).strip() or "auto"
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice != "cpu" and not (choice == "cuda" or (choice.startswith("cuda:") and choice[5:].isdigit())):
        raise ValueError(f"unknown device {choice!r} (from {source}); use auto, cpu, cuda or cuda:N")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {choice!r} was asked for (from {source}) but torch sees no CUDA GPU; use 'cpu' or "
                         "'auto' (in Colab: Runtime > Change runtime type > GPU)")
    return choice


def pick_precision(device: str, prefer: str | None = None) -> str:
    """The arithmetic of the forward passes: "fp32", or "bf16" (autocast: matrix products in bfloat16, weights,
    gradients, optimizer state, softmaxes and losses in float32). ``prefer``, else ``$RLHF_LITE_PRECISION``, else
    "auto": bf16 on GPUs that compute it natively (compute capability ≥ 8: A100, L4, H100), fp32 on the CPU (where
    float32 is fastest and results are bit-for-bit reproducible) and on older GPUs such as Colab's T4. fp16 is not
    offered: it needs loss scaling in every training loop, which these loops keep out for readability."""

    source = "precision" if prefer is not None else f"${PRECISION_ENV}"
    choice = (prefer if prefer is not None else os.environ.get(PRECISION_ENV, "")).strip() or "auto"
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision {choice!r} (from {source}); use {', '.join(PRECISIONS)}")
    on_gpu = device.startswith("cuda")
    if choice == "bf16" and not on_gpu:
        raise ValueError("precision bf16 is for GPUs; on the CPU every stage runs in fp32")
    if choice == "auto":
        return "bf16" if on_gpu and torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
    return choice


def course_precision(device: str | None = None, precision: str | None = None):
    """The context every stage's and notebook's work runs in, the one place the course's precision is set: on a GPU,
    TF32 matrix products where the GPU has them (compute capability ≥ 8) and ``torch.autocast`` to bfloat16 for
    "bf16" (``precision``, default :func:`pick_precision`'s); on the CPU nothing, so CPU results stay bit for bit.
    Heads and losses stay float32 either way (``rlhf_lite.models.in_float32``)."""

    device = pick_device(device)
    precision = precision or pick_precision(device)
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    if torch.cuda.get_device_capability(device)[0] >= 8:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    return torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def compute_dtype(device: str) -> torch.dtype:
    """The dtype quantized (QLoRA) layers compute in on ``device``: bfloat16 on GPUs that have it natively
    (compute capability ≥ 8), float16 on older ones such as the T4, float32 on the CPU."""
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def placement(device: str | None = None) -> tuple[str, str]:
    """(device, precision) for a stage: :func:`pick_device` and :func:`pick_precision` (``$RLHF_LITE_PRECISION``,
    else bf16 on GPUs that have it)."""
    device = pick_device(device)
    return device, pick_precision(device)


def quiet() -> None:
    """Silence library noise (hub progress bars, transformers' info/warnings); our own messages stay."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported
    if "datasets" in sys.modules:  # imported already: switch its bars ("Tokenizing train dataset") off directly
        sys.modules["datasets"].disable_progress_bars()

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module=r"transformers\..*")
    warnings.filterwarnings("ignore", module=r"torch\..*", category=UserWarning)
    # peft → transformers
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)


def progress_bar(iterable=None, *, desc: str, enabled: bool = True, **kwargs):
    """A tqdm.auto bar (a widget in Jupyter, text elsewhere), off when ``enabled`` is False or when the
    environment sets ``TQDM_DISABLE=1`` (CI, and the runs that produce the committed notebooks)."""

    disable = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    return tqdm(iterable, desc=desc, disable=disable, **kwargs)


@contextlib.contextmanager
def hf_bars_off():
    """Hide transformers' own progress bars ("Loading weights", "Writing shards") inside the block."""

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def versions() -> dict[str, str]:
    """Versions of the packages the course depends on (missing ones as 'not installed')."""

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


def rounded(x, digits: int = 4):
    """``x`` with every float inside (dicts and lists too) rounded to ``digits``: metrics as they are reported."""
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v, digits) for v in x]
    return round(x, digits) if isinstance(x, float) else x


def warmup_linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Learning rate: linear warm-up over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        return min((step + 1) / max(warmup_steps, 1),
                   max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def micro_batches(items: list, size: int) -> list[list]:
    """Gradient accumulation's parts of one batch: ``items`` in consecutive pieces of ``size`` (0, or a size at
    least the batch's: the whole batch in one piece). Each piece's loss is weighted by its share of the batch and
    backpropagated on its own (:func:`backward`), so one optimizer step sees the gradient of the whole batch while
    only one piece's activations are in memory at a time."""
    if size <= 0 or size >= len(items):
        return [list(items)]
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def backward(loss, what: str, hint: str) -> None:
    """``loss.backward()`` after checking the loss is finite (see :func:`check_finite`): the first micro-batches of
    an accumulated step; the last goes through :func:`optimizer_step`."""
    check_finite(loss, f"{what}: the loss", hint)
    loss.backward()


def check_finite(x, what: str, hint: str) -> None:
    """Stop with a FloatingPointError if ``x`` (a tensor) has a NaN or an infinity. The message names ``what``
    (e.g. "PPO step 7: reward"), how many entries are not finite, the first of them with their positions, and
    ``hint`` (what to change)."""

    finite = torch.isfinite(x.detach())
    if finite.all():
        return
    bad = (~finite).nonzero()[:3]
    shown = ", ".join(f"{x.detach()[tuple(i)].item()} at {tuple(i.tolist())}" if x.dim() else str(x.item())
                      for i in bad)
    raise FloatingPointError(f"{what} is not finite ({int((~finite).sum())} of {x.numel()} values: {shown}). {hint}")


def optimizer_step(loss, params, optimizer, scheduler, grad_clip: float, what: str = "training",
                   hint: str = "Lower the learning rate.") -> None:
    """One update: backpropagate ``loss``, clip the gradients' global norm, step, advance the schedule,
    clear the gradients. A NaN or infinite loss or gradient stops *before* the update (the error names ``what``,
    e.g. "SFT step 12"), so the weights stay finite and the step named is the one that produced it."""

    backward(loss, what, hint)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"{what}: the gradient is not finite (global norm {norm.item()}) although the loss "
                                 f"was {loss.item():.4g}; the update was not applied. {hint}")
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

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class MemoryMonitor:
    """``with MemoryMonitor(model) as m: ...`` then ``m.seconds`` and ``m.peak_mb``: wall time, and the peak memory
    the block added on top of what was in use when it started, on the device the work runs on: ``device`` is a
    device name, or a model (the device its parameters are on), or None (:func:`pick_device`'s). CPU: resident
    memory sampled every 20 ms by a thread (after handing freed heap memory back to the OS, so that an earlier
    block's leftovers do not hide this one's); CUDA: ``torch.cuda.max_memory_allocated`` (exact)."""

    def __init__(self, device: "str | torch.device | torch.nn.Module | None" = None, interval: float = 0.02):
        if isinstance(device, torch.nn.Module):
            device = next(device.parameters()).device
        self.device, self.interval = str(device) if device is not None else pick_device(), interval

    def __enter__(self):


        self.cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            import ctypes

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


        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss_mb())
        self.seconds = time.time() - self.t0
        self.peak_mb = self.peak - self.start
        return False
