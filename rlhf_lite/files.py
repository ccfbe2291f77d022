"""File handling, kept out of the modules a student reads: output folders that never delete a user's files,
atomic writes, training state without pickle, model-folder checks, data-file readers and the ranking store's
storage.

Every function here either finishes its write completely or leaves the disk as it was:

* an output folder (:func:`check_output_dir`, :func:`atomic_dir`, :func:`open_output_dir`) is replaced or written
  into only when it is new, empty, or an earlier output of the same command holding only what that command wrote;
  a symbolic link, the current folder and the root are refused;
* a file (:func:`atomic_file`) is written under a unique temporary name beside it, flushed to disk, then renamed
  over the old one, so two writers never share a temporary file and a crash keeps the old file;
* an append-only JSON-lines file (:func:`append_lines`) is written under a lock; a failed write is rolled back
  and a torn last line (a killed writer) is moved aside, never silently dropped.
"""
from __future__ import annotations

import contextlib
import csv
import fnmatch
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

try:
    import fcntl
except ImportError:  # Windows: no flock; single-writer use is still safe
    fcntl = None


# ---------------------------------------------------------------------------------------------
# Output folders
# ---------------------------------------------------------------------------------------------
OUTPUT_MARKER = ".rlhf-lite-output.json"
"""Written into every output folder: which command wrote it, and the files it wrote (``files``, a finished
:func:`atomic_dir`) or may write (``patterns``, a folder filled as it goes: :func:`open_output_dir`). A folder is
reused only when it holds nothing else."""


def check_output_dir(out: str | os.PathLike, kind: str) -> Path:
    """Check, before any work, that ``out`` can become the output folder of ``kind`` (e.g. "pretrain"): it does
    not exist, is an empty folder, or is an earlier output of the same command holding only the files that command
    wrote. Anything else (a file, a symbolic link, a folder of your own, the current folder, the root) is refused
    with a message naming it, so no file the course did not write is ever deleted or overwritten. Also checks that
    the parent folder is writable."""
    out = Path(out)
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symbolic link (to {os.readlink(out)}); pass the folder itself or a new "
                         "folder name")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; pass a new folder name")
    if out.is_dir():
        if out.resolve() == Path.cwd().resolve() or out.resolve() == Path(out.resolve().anchor):
            raise ValueError(f"--out {out} is the current folder (or the root): it would be written over; pass a new "
                             "folder name, e.g. --out runs/my-run")
        foreign = foreign_files(out, kind)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ValueError(f"--out {out} already holds files this {kind} command did not write ({shown}); they would "
                             "be lost. Pick a new folder, or move them away first")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent))
        probe.rmdir()
    except OSError as e:
        raise OSError(f"--out {out}: cannot write in {parent} ({e.strerror or e}); pick a folder you can write "
                      "to") from None
    return out


def foreign_files(out: Path, kind: str) -> list[str]:
    """Files (and links) under ``out`` that an earlier ``kind`` output did not write: all of them if there is no
    marker or it names another command."""
    present = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_symlink() or not p.is_dir())
    try:
        marker = json.loads((out / OUTPUT_MARKER).read_text())
        ours = marker.get("kind") == kind
        written, patterns = set(marker.get("files") or []) if ours else set(), marker.get("patterns") or []
        patterns = patterns if ours else []
    except (OSError, ValueError, AttributeError, TypeError):
        written, patterns = set(), []
    return [f for f in present if f != OUTPUT_MARKER and f not in written
            and not any(fnmatch.fnmatch(f, p) for p in patterns)]


def open_output_dir(out: str | os.PathLike, kind: str, patterns: Sequence[str]) -> Path:
    """An output folder that a command fills as it goes (PPO's checkpoints, the pipeline's files): checked as
    :func:`check_output_dir` does, created, and marked as ``kind``'s with the names it may write (``patterns``,
    shell-style, e.g. ``"adapter/*"``), so that the same command may write into it again and nothing else may."""
    out = check_output_dir(out, kind)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / OUTPUT_MARKER, json.dumps({"kind": kind, "patterns": list(patterns)}, indent=1) + "\n")
    return out


def clear_output_dir(out: Path, kind: str) -> None:
    """Remove ``out`` if it is an earlier output of ``kind`` holding only what that command wrote (checked as
    :func:`check_output_dir` does); anything else there is refused, and nothing is removed."""
    if out.exists() or out.is_symlink():
        check_output_dir(out, kind)
        shutil.rmtree(out)


def _fsync(path: Path) -> None:
    """Flush a file or a folder to disk (some file systems cannot fsync a folder: then its files are flushed)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the folders themselves to disk (before a rename publishes them)."""
    for p in sorted(root.rglob("*"), reverse=True) + [root]:
        if not p.is_symlink():
            _fsync(p)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, kind: str = "output"):
    """Yield a fresh temporary folder beside ``out``. If the block succeeds, the folder is flushed to disk and takes
    the place of ``out`` in one rename; if it fails or is interrupted, the folder is removed: nothing half-written is
    ever left at ``out``. ``out`` must pass :func:`check_output_dir` (checked before and after the block): an
    existing folder is replaced only when it is an earlier output of the same ``kind`` holding nothing else."""
    out = check_output_dir(out, kind)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.resolve().parent))
    old = None
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir())
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"kind": kind, "files": files}, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; an output folder is for everyone
        _fsync_tree(tmp)
        if out.exists() or out.is_symlink():
            check_output_dir(out, kind)  # nothing of anyone else's appeared while we worked
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.resolve().parent))
            old.rmdir()
            out.rename(old)
        tmp.rename(out)
        _fsync(out.resolve().parent)
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
    """Yield a temporary path beside ``path`` (a unique name: two writers never share it, and no file of yours is
    touched); when the block finishes, the file is flushed to disk and replaces ``path`` in one step. A crash while
    writing leaves the old file (or none), never half of a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


WRITTEN_BY = "written_by"
"""The field a JSON result file (``bench --out``, ``notebook-times --out``) carries: the command that wrote it."""


def check_output_file(path: str | os.PathLike, kind: str) -> Path:
    """Check, before any work, that the JSON result file ``path`` may be written by command ``kind``: it does not
    exist, or it is an earlier result of the same command (its ``written_by`` field). A file of yours is refused."""
    path = Path(path)
    if path.is_symlink() or path.is_dir():
        raise ValueError(f"--out {path} is a {'symbolic link' if path.is_symlink() else 'folder'}; pass a new .json "
                         "file name")
    if path.exists():
        try:
            ours = json.loads(path.read_text()).get(WRITTEN_BY) == kind
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise ValueError(f"--out {path} exists and was not written by `{kind}`; it would be replaced. Pass a new "
                             "file name, or move it away first")
    return path


# ---------------------------------------------------------------------------------------------
# Training state without pickle
# ---------------------------------------------------------------------------------------------
def _state_digest(meta: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(meta.encode())
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_state(path: str | os.PathLike, state) -> None:
    """Write a nested state (dicts, lists, tuples, numbers, strings, None and tensors: a training checkpoint, a
    notebook cell's result) to one safetensors file, atomically, with a checksum of its contents. Tensors go in the
    file's tensor section, everything else as JSON in its metadata. Unlike ``torch.save`` (pickle), loading it back
    can never run code, whoever wrote the file."""
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
            kind = "__tuple__" if isinstance(x, tuple) else "__list__"
            return {kind: [encode(v, f"{key}/{i}") for i, v in enumerate(x)]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"save_state: cannot store {type(x).__name__} at {key!r}; use tensors, numbers, text, lists, "
                        "dicts")

    meta = json.dumps(encode(state, "state"))
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"rlhf_lite_state": meta,
                                               "rlhf_lite_sha256": _state_digest(meta, tensors)})


def load_state(path: str | os.PathLike):
    """Read what :func:`save_state` wrote (no pickle is ever loaded). A file that is not such a state, or whose
    contents no longer match their checksum (flipped bytes), is an error naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("rlhf_lite_state")
            digest = (f.metadata() or {}).get("rlhf_lite_sha256")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta is None:
            raise ValueError("no rlhf_lite_state metadata")
        if digest is not None and digest != _state_digest(meta, tensors):
            raise ValueError("its contents do not match their checksum")
        encoded = json.loads(meta)
    except Exception as e:  # safetensors' own error types for garbage, truncated or foreign files
        raise ValueError(f"{path} is not a readable rlhf-lite checkpoint ({type(e).__name__}: {e}); it is corrupt or "
                         "was written by something else. Delete it: a notebook cell's saved result is then computed "
                         "again, a PPO run starts afresh (without --resume)") from None

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


# ---------------------------------------------------------------------------------------------
# Model folders
# ---------------------------------------------------------------------------------------------
def check_model_folder(path: Path, hint: str) -> None:
    """A model folder must hold a readable config, safetensors weights that fit it, and a tokenizer; pickle weights
    (``*.bin``, ``*.pt``) are refused, since ``from_pretrained`` would load them instead of the checked ones. The
    errors say what is wrong and end with ``hint`` (how to rebuild or where to get the folder)."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint folder {path} has no config.json, so it is not a model folder; {hint}, "
                                "or pass the folder that `save_pretrained` wrote")
    try:
        json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint folder {path}: config.json is not valid JSON ({e}); the folder is corrupt, "
                         f"{hint}") from None
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.pkl") for p in path.glob(pattern))
    if pickles:
        raise ValueError(f"checkpoint folder {path} holds pickle weights ({', '.join(pickles)}), which the course "
                         "never loads (loading a pickle can run code); save the model with save_pretrained "
                         "(safetensors) or remove those files")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"checkpoint folder {path} has no *.safetensors weights; {hint}")
    for w in weights:
        try:
            with safe_open(str(w), framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own error types for truncated/garbled files
            raise ValueError(f"checkpoint weights {w} cannot be read ({type(e).__name__}: {e}); the file is corrupt "
                             f"or truncated: {hint}") from None
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"checkpoint folder {path} has no tokenizer files (tokenizer_config.json); {hint}")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        raise FileNotFoundError(f"checkpoint folder {path} has tokenizer_config.json but no vocabulary "
                                f"(tokenizer.json, or vocab.json + merges.txt); copy the tokenizer files in, or {hint}")
    _check_weights_fit_config(path, weights, hint)


def _check_weights_fit_config(path: Path, weights: list[Path], hint: str) -> None:
    """Build the model that config.json describes on the meta device (no memory, any size) and compare its
    tensors with the ones the weight files hold: a missing layer, an extra layer or a wrong shape (vocabulary
    size, width) is an error naming the tensors, instead of a model that loads with random layers."""
    try:
        config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as e:
        raise ValueError(f"checkpoint folder {path}: config.json does not describe a causal LM transformers can build "
                         f"({str(e).splitlines()[0][:200]}); {hint}") from None
    prefix = model.base_model_prefix + "."
    expected = {k.removeprefix(prefix): tuple(v.shape) for k, v in model.state_dict().items()}
    tied = {k.removeprefix(prefix) for k in (getattr(model, "_tied_weights_keys", None) or {})} \
        if getattr(config, "tie_word_embeddings", False) else set()
    found = {}
    for w in weights:
        with safe_open(str(w), framework="pt") as f:
            found.update({k.removeprefix(prefix): tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    missing = sorted(k for k in expected if k not in found and k not in tied)
    extra = sorted(k for k in found if k not in expected)
    wrong = sorted(f"{k} {found[k]} (config: {expected[k]})" for k in expected
                   if k in found and found[k] != expected[k])
    if missing or extra or wrong:
        parts = [f"{name} {', '.join(items[:3])}{' …' if len(items) > 3 else ''}"
                 for name, items in (("missing from the weights:", missing), ("not in the config:", extra),
                                     ("wrong shape:", wrong)) if items]
        raise ValueError(f"checkpoint folder {path}: config.json and the weights disagree ({'; '.join(parts)}). The "
                         "config must be the one the weights were saved with (save both with save_pretrained); for the "
                         f"shipped model: {hint}")


# ---------------------------------------------------------------------------------------------
# Data files
# ---------------------------------------------------------------------------------------------
class DataFormatError(ValueError):
    """A data file or dataset does not match its schema; the message says where and why."""


def decode_text(path: Path) -> str:
    """A UTF-8 text file's contents, without a leading byte-order mark (spreadsheet programs write one); bytes
    that are not UTF-8 are an error naming the file, line and offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(f"{path}, line {line}: not valid UTF-8 text (byte {raw[e.start]:#04x} at offset "
                              f"{e.start}); re-save the file as UTF-8") from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads``' object hook: a key written twice in one object is an error (JSON would keep the last)."""
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise DataFormatError(f"the key(s) {', '.join(map(repr, twice))} appear twice in one object; keep one")
    return dict(pairs)


def parse_json(text: str, where: str):
    """``json.loads`` for data files: an error names ``where`` (file and line), and a key written twice in one
    object is refused rather than silently keeping the last."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{where}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except DataFormatError as e:
        raise DataFormatError(f"{where}: {e}") from None


def read_rows(path: str | os.PathLike, what: str = "data file", check_columns=None) -> list[tuple[str, dict]]:
    """Rows of a local .json / .jsonl / .csv / .parquet file, each with where it came from ("file, line 3").
    Malformed files raise :class:`DataFormatError` naming the file and line. ``check_columns(columns,
    source)`` is called on a csv/parquet header before the rows are read."""
    p = Path(path)
    if p.is_dir():
        raise DataFormatError(f"{what} {p} is a folder; pass one .json/.jsonl/.csv/.parquet file inside it")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    suffix = p.suffix.lower()
    rows: list[tuple[str, dict]] = []
    if suffix == ".jsonl":
        # split on "\n" only: str.splitlines would also split inside strings at U+2028, U+0085, …
        for n, line in enumerate(decode_text(p).split("\n"), 1):
            if not line.strip():
                continue
            obj = parse_json(line, f"{p}, line {n}")
            if not isinstance(obj, dict):
                raise DataFormatError(f"{p}, line {n}: expected a JSON object per line, got a JSON "
                                      f"{type(obj).__name__}")
            rows.append((f"{p}, line {n}", obj))
    elif suffix == ".json":
        data = parse_json(decode_text(p), str(p))
        if not isinstance(data, list):
            raise DataFormatError(f"{p}: expected a JSON list of records, got a JSON {type(data).__name__}; for one "
                                  "record per line use .jsonl")
        for n, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise DataFormatError(f"{p}, record {n}: expected a JSON object, got a JSON {type(obj).__name__}")
            rows.append((f"{p}, record {n}", obj))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(decode_text(p), newline=""))
        if check_columns:
            check_columns(reader.fieldnames or [], str(p))
        for r in reader:
            where = f"{p}, line {reader.line_num}"
            if None in r:  # DictReader files cells beyond the header under the key None
                raise DataFormatError(f"{where}: {len(r[None])} more cell(s) than the header's "
                                      f"{len(reader.fieldnames)} columns ({r[None]!r:.60}); quote cells that contain "
                                      "commas")
            short = [k for k, v in r.items() if v is None]  # ... and missing cells as None
            if short:
                raise DataFormatError(f"{where}: {len(short)} cell(s) fewer than the header's {len(reader.fieldnames)} "
                                      f"columns (no {', '.join(map(repr, short))}); every row needs a cell per column")
            rows.append((where, dict(r)))
    elif suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except (pyarrow.ArrowException, OSError) as e:
            raise DataFormatError(f"{p}: not a readable parquet file ({type(e).__name__}: {str(e)[:200]}); re-save "
                                  "it, or use .jsonl or .csv") from None
        if check_columns:
            check_columns(table.column_names, str(p))
        rows = [(f"{p}, row {n}", r) for n, r in enumerate(table.to_pylist())]
    else:
        raise DataFormatError(f"{p}: unsupported file type {suffix!r}; use .json, .jsonl, .csv or .parquet")
    if not rows:
        raise DataFormatError(f"{p}: no records")
    return rows


def file_digest(path: str | os.PathLike) -> str:
    """A short hash of a file's bytes: part of a cache key, so a changed data file is never mistaken for the old."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Append-only JSON lines (the ranking store's storage)
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path, write: bool = True):
    """``path`` opened for appending (never through a symbolic link) with an exclusive lock held."""
    flags = (os.O_RDWR | os.O_APPEND | os.O_CREAT if write else os.O_RDONLY) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link; pass the file itself") from None
        raise OSError(f"{path}: cannot open it{' for writing' if write else ''} ({e.strerror or e})") from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def _repair(path: Path, fd: int, check_line: Callable[[str, str], object]) -> None:
    """Make the file end with a newline (called with the lock held). A last line that ``check_line`` accepts only
    lacked its newline: it gets one. A torn last line (a writer killed mid-write) after complete records is moved to
    ``<path>.torn`` with a warning; a file whose only line is not a record is not ours to cut, and is refused."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    raw = os.pread(fd, size, 0)
    keep = raw.rfind(b"\n") + 1
    tail, line = raw[keep:], raw[:keep].count(b"\n") + 1
    try:
        check_line(tail.decode("utf-8"), f"{path}, line {line}")
        os.write(fd, b"\n")  # a complete record whose newline is missing (written by hand, or by another tool)
    except (ValueError, UnicodeDecodeError) as e:
        if keep == 0:
            raise DataFormatError(f"{path} is not a JSON-lines file of records ({e}); it was left as it is. Pass a new "
                                  "file name, or move this file away") from None
        with open(path.with_name(path.name + ".torn"), "ab") as f:  # kept, never silently dropped
            f.write(tail + b"\n")
            f.flush()
            os.fsync(f.fileno())
        warnings.warn(f"{path}, line {line}: incomplete last record ({len(tail)} bytes, an interrupted write); moved "
                      f"it to {path.name}.torn, the records before it are intact", stacklevel=5)
        os.ftruncate(fd, keep)
    os.fsync(fd)


def repair_lines(path: Path, check_line: Callable[[str, str], object]) -> None:
    """Open-time check of an append-only file: see :func:`_repair`. A file you may only read is left as it is."""
    if not path.exists() or not os.access(path, os.W_OK):
        return
    with _locked(path) as fd:
        _repair(path, fd, check_line)


def append_lines(path: Path, lines: Sequence[str], check_line: Callable[[str, str], object]) -> None:
    """Append ``lines`` (each one JSON record, no newline) to ``path`` with one write under an exclusive lock,
    flushed to disk before returning. If the write fails (a full disk, a size limit), the file is cut back to where
    it was: none of the batch is kept, so a retry does not duplicate it."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path) as fd:
        _repair(path, fd, check_line)  # another writer may have been killed mid-line since we last looked
        start = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, start)
            raise
