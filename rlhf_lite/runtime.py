"""Small helpers every notebook's first cell uses: seeding, device choice, versions, quiet logs."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib.metadata as md
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
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


def autocast(device: str, precision: str = "fp32"):
    """The context every stage's work runs in on ``device``: ``torch.autocast`` to bfloat16 for "bf16", nothing
    for "fp32" (so CPU runs are unchanged, bit for bit)."""

    if precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_tag(device: str, precision: str = "fp32") -> list[str]:
    """What a cache key adds for where a stage ran: nothing on the CPU (the keys of CPU-trained stages stay what
    they are), ``["cuda-bf16"]`` and the like on a GPU, whose floating-point results differ from the CPU's."""

    return [] if device == "cpu" else [f"{device.split(':')[0]}-{precision}"]


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


OUTPUT_MARKER = ".rlhf-lite-output.json"
"""Written into every folder an ``atomic_dir`` produces: which command wrote it and the files it wrote. A folder
is replaced only when it holds nothing but what that command wrote there before."""


def check_output_dir(out: str | os.PathLike, kind: str) -> Path:
    """Check, before any work, that ``out`` can become the output folder of ``kind`` (e.g. "pretrain"): it does
    not exist, is an empty folder, or is a previous output of the same command holding only the files that command
    wrote. Anything else (a file, a folder of your own, the current folder) is refused with a message naming it, so
    no file the course did not write is ever deleted. Also checks that the parent folder is writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; pass a new folder name")
    if out.is_dir():
        if out.resolve() == Path.cwd().resolve() or out.resolve() == Path(out.resolve().anchor):
            raise ValueError(f"--out {out} is the current folder (or the root): it would be replaced; pass a new "
                             "folder name, e.g. --out runs/my-run")
        foreign = _foreign_files(out, kind)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ValueError(f"--out {out} already holds files this {kind} command did not write ({shown}); they would "
                             "be deleted. Pick a new folder, or move them away first")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent))
        probe.rmdir()
    except OSError as e:
        raise OSError(f"--out {out}: cannot write in {parent} ({e.strerror or e}); pick a folder you can write "
                      "to") from None
    return out


def _foreign_files(out: Path, kind: str) -> list[str]:
    """Files under ``out`` that a previous ``kind`` output did not list in its marker (all of them, if there is
    no marker or it names another command)."""

    present = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir())
    try:
        marker = json.loads((out / OUTPUT_MARKER).read_text())
        written = set(marker["files"]) if marker.get("kind") == kind else set()
    except (OSError, ValueError, KeyError, TypeError):
        written = set()
    return [f for f in present if f not in written and f != OUTPUT_MARKER]


def writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create folder ``path`` if needed and check that a file can be written in it, before any work is done;
    the error names the path (an existing file, a read-only place such as /proc)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder; pass a folder name")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"{what} {path}: cannot write there ({e.strerror or e}); pick a folder you can write "
                      "to") from None
    return path


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, kind: str = "output"):
    """Yield a fresh temporary folder beside ``out``. If the block succeeds, the folder takes the place of ``out``
    in one rename; if it fails or is interrupted, the folder is removed: nothing half-written is ever left at
    ``out``. ``out`` must pass :func:`check_output_dir` (checked before and after the block): an existing folder is
    replaced only when it is a previous output of the same ``kind`` holding nothing else."""

    out = check_output_dir(out, kind)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.resolve().parent))
    old = None
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir())
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"kind": kind, "files": files}, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; an output folder is for everyone
        if out.exists():
            check_output_dir(out, kind)  # nothing of anyone else's appeared while we worked
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        if old is not None and old.exists() and not out.exists():
            old.rename(out)  # put the previous output back
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old is not None and old.exists():
            shutil.rmtree(old)  # only files the same command wrote (checked above)


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


def save_state(path: str | os.PathLike, state) -> None:
    """Write a nested state (dicts, lists, tuples, numbers, strings, None and tensors: a training checkpoint) to
    one safetensors file, atomically. Tensors go in the file's tensor section, everything else as JSON in its
    metadata. Unlike ``torch.save`` (pickle), loading it back can never run code, whoever wrote the file."""


    tensors: dict = {}

    def encode(x, key: str):

        if torch.is_tensor(x):
            tensors[key] = x.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {"__dict__": {k: encode(v, f"{key}/{k}") for k, v in x.items()}}
            return {"__items__": [[k, encode(v, f"{key}/{k}")] for k, v in x.items()]}  # non-string keys (optimizer)
        if isinstance(x, (list, tuple)):
            return {"__tuple__" if isinstance(x, tuple) else "__list__": [encode(v, f"{key}/{i}") for i,
                                                                          v in enumerate(x)]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"save_state: cannot store {type(x).__name__} at {key!r}; use tensors, numbers, text, lists, "
                        "dicts")

    meta = json.dumps(encode(state, "state"))
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"rlhf_lite_state": meta})


def load_state(path: str | os.PathLike):
    """Read what :func:`save_state` wrote (no pickle is ever loaded). A file that is not such a checkpoint is an
    error naming it."""


    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("rlhf_lite_state")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta is None:
            raise ValueError("no rlhf_lite_state metadata")
        encoded = json.loads(meta)
    except Exception as e:  # safetensors' own error types for garbage, truncated or foreign files
        raise ValueError(f"{path} is not a readable rlhf-lite checkpoint ({type(e).__name__}: {e}); it is corrupt or "
                         "was written by something else. Start a new run without resume") from None

    def decode(x):
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__dict__" in x:
                return {k: decode(v) for k, v in x["__dict__"].items()}
            if "__items__" in x:
                return {k: decode(v) for k, v in x["__items__"]}
            if "__tuple__" in x:
                return tuple(decode(v) for v in x["__tuple__"])
            return [decode(v) for v in x["__list__"]]
        return x

    return decode(encoded)


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


def config_key(*configs) -> str:
    """A short hash of dataclass configs: cached stage outputs are reused only for identical settings."""

    blob = json.dumps([dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c for c in configs], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def rounded(x, digits: int = 4):
    """``x`` with every float inside (dicts and lists too) rounded to ``digits``: metrics as they are reported."""
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v, digits) for v in x]
    return round(x, digits) if isinstance(x, float) else x


def code_digest(*modules: str) -> str:
    """A short hash of the source of ``rlhf_lite`` modules (``"sft"`` is ``rlhf_lite/sft.py``; a package such as
    ``"world"`` counts all its files): part of every stage's cache key, so a cached model is reused only by the
    code that made it."""

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in sorted(modules):
        path = root / name.replace(".", "/")
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        if not files or not files[0].is_file():
            raise ValueError(f"code_digest: no module rlhf_lite.{name}")
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:10]


def warmup_linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Learning rate: linear warm-up over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        return min((step + 1) / max(warmup_steps, 1),
                   max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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

    check_finite(loss, f"{what}: the loss", hint)
    loss.backward()
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
    """``with MemoryMonitor() as m: ...`` then ``m.seconds`` and ``m.peak_mb``: wall time, and the peak memory the
    block added on top of what was in use when it started: CPU resident memory sampled every 20 ms by a thread
    (after handing freed heap memory back to the OS, so that an earlier block's leftovers do not hide this
    one's), or on CUDA ``torch.cuda.max_memory_allocated`` (exact)."""

    def __init__(self, device: str = "cpu", interval: float = 0.02):
        self.device, self.interval = str(device), interval

    def __enter__(self):


        self.cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**20
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
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss_mb())
        self.seconds = time.time() - self.t0
        self.peak_mb = self.peak - self.start
        return False
