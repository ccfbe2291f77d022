"""The child process of ``grade`` (:mod:`rlhf_lite.course.grader`): one student's exercise cell, fenced in.

``python -m rlhf_lite.course.sandbox`` reads a JSON spec on stdin: the names an answer may use (the course
notebook's imports), the student's cell, and what to do with it:

* ``serve`` (a pure function): call the student's function on the arguments the grader sends over a pipe and send
  back what it returns. The checker runs in the grader's process and compares there: nothing here decides a grade;
* ``check`` (a training loop, whose checker needs the model objects in this process): import the checker *after*
  the student's code ran, run it, and send back whether it raised.

Before any student code runs the process closes the doors a homework answer never needs, with a Python audit hook
(PEP 578: it cannot be removed once added): no new processes, no signals to other processes, no writing outside its
own temporary folder, no reading the course's notebooks (they hold the solutions), no network, no ``ctypes``.
It sets its own limits on memory, CPU time and output size first. The grader gives it a minimal environment, its
own process group and, when the grader runs as root, an unprivileged user.
"""
from __future__ import annotations

import io
import json
import os
import struct
import sys

BLOCKED = {
    "subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "pty.spawn",
    "os.startfile", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "ctypes.dlsym",
    "ctypes.call_function", "ctypes.cdata", "ctypes.addressof", "ctypes.string_at", "ctypes.wstring_at",
    "socket.connect", "socket.bind", "socket.getaddrinfo", "sys.remote_exec", "resource.setrlimit",
    "resource.prlimit",
}
"""Audit events refused once the student's code may run."""
PATH_WRITES = {"os.remove", "os.rename", "os.rmdir", "os.chmod", "os.chown", "os.truncate", "os.link", "os.symlink",
               "os.mkdir", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "shutil.copytree"}
"""Audit events that change a file system path (their path arguments must lie in the process's own folder)."""
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Refused(PermissionError):
    """What the audit hook raises."""


def _inside(path, folder: str) -> bool:
    if isinstance(path, int):  # an open file descriptor: already allowed when it was opened
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return os.path.realpath(path).startswith(folder + os.sep)


def install_guard(workdir: str, unreadable: list[str]) -> None:
    """Refuse, from now on, every event of :data:`BLOCKED`, writes outside ``workdir`` and reads under
    ``unreadable``."""
    workdir = os.path.realpath(workdir)
    unreadable = [os.path.realpath(p) for p in unreadable]

    def hook(event: str, args: tuple) -> None:
        if event in BLOCKED:
            raise Refused(f"grading does not allow {event}: an answer computes with its arguments")
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS)
            if path is None:
                return
            if writes and not _inside(path, workdir):
                raise Refused(f"grading does not allow writing {path}")
            if not isinstance(path, int) and any(_inside(path, u) or os.path.realpath(path) == u for u in unreadable):
                raise Refused(f"grading does not allow reading {path}")
        elif event in PATH_WRITES:
            for a in args:
                if isinstance(a, (str, bytes, os.PathLike)) and not _inside(os.fspath(a), workdir):
                    raise Refused(f"grading does not allow {event} on {a}")

    sys.addaudithook(hook)


def encode(obj) -> bytes:
    """A message: tensors, numbers, strings, booleans, None, and lists, tuples and dicts of them, as JSON whose tensors
    are stored beside it with safetensors. Nothing in it can run code when it is read (no pickle)."""
    from safetensors.torch import save

    tensors: dict = {}

    def walk(x):
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if type(x).__name__ == "Tensor" and hasattr(x, "detach"):
            key = str(len(tensors))
            tensors[key] = x.detach().cpu().clone().contiguous()
            return {"tensor": key}
        if isinstance(x, (list, tuple)):
            return {"list" if isinstance(x, list) else "tuple": [walk(v) for v in x]}
        if isinstance(x, dict):
            return {"dict": [[walk(k), walk(v)] for k, v in x.items()]}
        raise TypeError(f"a {type(x).__name__} is not a tensor, number, string, list, tuple or dict of them")

    tree = json.dumps(walk(obj)).encode()
    return struct.pack("<Q", len(tree)) + tree + save(tensors)


def decode(data: bytes):
    """The inverse of :func:`encode`."""
    from safetensors.torch import load

    n = struct.unpack("<Q", data[:8])[0]
    tree, tensors = json.loads(data[8:8 + n]), load(data[8 + n:])

    def walk(x):
        if not isinstance(x, dict):
            return x
        ((kind, v),) = x.items()
        if kind == "tensor":
            return tensors[v]
        if kind == "dict":
            return {walk(k): walk(val) for k, val in v}
        if kind in ("list", "tuple") and isinstance(v, list):
            return [walk(i) for i in v] if kind == "list" else tuple(walk(i) for i in v)
        raise ValueError(f"not a message: {str(x)[:80]}")

    return walk(tree)


def send(fd: int, obj) -> None:
    """One message on a pipe: its length (8 bytes), then :func:`encode`'s bytes."""
    data = encode(obj)
    data = struct.pack("<Q", len(data)) + data
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def recv(fd: int):
    return decode(_read(fd, struct.unpack("<Q", _read(fd, 8))[0]))


def _read(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("the grader closed the pipe")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


TOKENIZER = "__rlhf_lite_tiny_tokenizer__"
"""Stands for the tiny tokenizer in a message: the grader sends this string, the sandbox passes its own copy."""


def set_limits(memory_gb: float, output_bytes: int, cpu_seconds: int) -> None:
    """Address space, file size (what it prints goes to a file) and CPU time of this process; past the file size a
    write fails (instead of the signal ending the process)."""
    import resource
    import signal

    resource.setrlimit(resource.RLIMIT_AS, (int(memory_gb * 2**30),) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes,) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def main() -> None:
    spec = json.loads(sys.stdin.read())
    set_limits(**spec["limits"])  # first: before anything is loaded (the guard then refuses raising them)
    requests, replies = spec["requests"], spec["replies"]
    import torch  # noqa: F401  (loaded before the guard: it opens shared libraries with ctypes)

    for line in spec["preload"]:  # what the exercise's scaffold imports from the package, loaded before the guard
        exec(line, {})
    tok = None
    if spec.get("needs_tok") or spec["mode"] == "check":  # transformers, loaded before the guard too
        from rlhf_lite.models import load_base

        tok = load_base("tiny")[1] if spec.get("needs_tok") else None
    install_guard(spec["workdir"], spec["unreadable"])
    ns: dict = {"__name__": "__main__"}
    try:
        for line in spec["imports"]:
            try:
                exec(line, ns)
            except Exception:  # an optional library of the notebook (e.g. trl) that is not installed here
                pass
        exec(compile(spec["cell"], "<your exercise cell>", "exec"), ns)
        missing = [f for f in spec["functions"] if not callable(ns.get(f))]
        if missing:
            send(replies, ("error", "NameError", f"the cell does not define {', '.join(missing)}"))
            return
        if spec["mode"] == "check":
            _check(spec, ns, tok, replies)
            return
        send(replies, ("ready",))
    except SystemExit as e:
        send(replies, ("error", "SystemExit", f"the cell called exit() (SystemExit({e.code!r})) before its checker "
                                              "ran"))
        return
    except BaseException as e:
        send(replies, ("error", type(e).__name__, str(e)[:2000]))
        return
    while True:  # serve: one call of the student's function per request
        try:
            request = recv(requests)
        except EOFError:
            return
        name, args = request
        args = [tok if a == TOKENIZER else a for a in args]
        try:
            result = ns[name](*args)
        except BaseException as e:  # the grader's checker decides what a crash means
            send(replies, ("error", type(e).__name__, str(e)[:2000]))
            continue
        try:
            send(replies, ("ok", result))
        except Exception as e:
            send(replies, ("error", "TypeError", f"returned a {type(result).__name__}, which is not a tensor, number, "
                                                 f"string, list, tuple or dict of them ({e})"))


def _check(spec: dict, ns: dict, tok, replies: int) -> None:
    """A loop exercise: its checker, imported only now, on the student's functions."""
    import importlib

    out = io.StringIO()
    stdout, sys.stdout = sys.stdout, out
    try:
        for module, checker, args in spec["checks"]:
            fn = getattr(importlib.import_module(module), checker)
            fn(*[tok if a == "tok" else ns[a] for a in args])
        outcome = ("passed", out.getvalue().strip()[-2000:])
    except BaseException as e:  # the checker's explanation, or a crash
        explained = type(e).__name__ == "ExerciseError"
        outcome = ("failed", str(e)[:2000] if explained else f"the cell did not run: {type(e).__name__}: {e}"[:2000])
    finally:
        sys.stdout = stdout
    send(replies, outcome)


if __name__ == "__main__":
    main()
