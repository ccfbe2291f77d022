"""``python -m rlhf_lite grade``: the implement-exercises of students' notebooks, graded without nbgrader, and so
that a wrong answer cannot pass.

What a student hands in is read as data, never trusted:

1. **What to grade comes from the course.** The exercises, their checkers and their points are read from the
   course's own notebook of the same name (:func:`rlhf_lite.course.student.notebook_exercises`), not from the
   submission; the student's cell is found by its nbgrader ``grade_id`` (or, if the metadata was lost, by the
   functions it defines). A missing or unchanged stub fails.
2. **A static reading of the answer cell** fails one that imports from ``rlhf_lite`` anything its scaffold does not
   give (the package's own implementation is the reference), or that reaches for what no answer needs: ``exec``,
   ``eval``, ``open``, ``__import__``, dunder attributes, the ``os``/``sys``/``subprocess``/``ctypes`` modules, or
   assigning to an attribute of a library (``json.dumps = …``).
3. **The answer runs in its own process** (:mod:`rlhf_lite.course.sandbox`): a fresh interpreter per exercise with a
   minimal environment, an empty working folder, its own process group (all of it ended when grading ends), limits
   on memory, CPU time and output, an audit hook that refuses new processes, signals, writes outside its folder and
   reading the course's notebooks, and an unprivileged user when the grader runs as root.
4. **The grader decides.** For a pure function the checker runs here, in the grader's process: each call of the
   student's function goes to the sandbox and its return value comes back as data (JSON and safetensors, no pickle),
   so nothing the student's code does to its own process reaches the comparison. A training loop's checker needs
   the model objects in the student's process; it is imported there only after the answer ran, and its verdict
   comes back over a pipe (not a file).
"""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..models import REPO_ROOT
from . import exercises as exercises_module
from . import sandbox
from .exercises import ExerciseError
from .student import (
    Exercise,
    course_imports,
    defined_functions,
    nbgrader,
    notebook_exercises,
    read_notebook,
    source,
    without_title,
)

GRADE_TIMEOUT_S = 180
"""Wall time one exercise may take in its process (an endless loop fails, not the grader)."""
MEMORY_LIMIT_GB = {"serve": 2.5, "check": 6.0}
"""Address space of one exercise's process: a pure function's (torch and the answer: about 1 GB), a training loop's
(its checker's tiny models: the reward-model batch peaks at 3.5 GB of address space, 2 GB resident)."""
OUTPUT_LIMIT_BYTES = 1 << 20
"""What one exercise's process may print (a file-size limit: a flood of output fails the write, not the grader)."""
REPLY_LIMIT_BYTES = 64 << 20
"""The largest return value the sandbox may send back for one call."""
FORBIDDEN_MODULES = {"os", "sys", "subprocess", "ctypes", "signal", "socket", "shutil", "pathlib", "io",
                     "importlib", "builtins", "gc", "inspect", "multiprocessing", "threading", "pickle", "marshal",
                     "json", "pty", "runpy", "code", "codeop", "types", "tempfile", "glob", "nbformat"}
FORBIDDEN_NAMES = {"exec", "eval", "compile", "__import__", "open", "globals", "locals", "vars", "setattr", "delattr",
                   "breakpoint", "input", "exit", "quit", "memoryview", "__builtins__", "__loader__", "__spec__"}
UNREADABLE = [REPO_ROOT / "notebooks"]
"""Folders the sandbox may not read: the course's notebooks hold the solutions (and so does ``--course``)."""


# ---------------------------------------------------------------------------------------------
# 1-2. What to grade, and a static reading of the answer
# ---------------------------------------------------------------------------------------------
def _rlhf_imports(tree: ast.AST) -> set[tuple[str, str]]:
    """(module, name) of every ``rlhf_lite`` import in a cell; ``(module, "*")`` for ``import rlhf_lite.x``."""
    found = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "rlhf_lite":
            found |= {(n.module, a.name) for a in n.names}
        elif isinstance(n, ast.Import):
            found |= {(a.name, "*") for a in n.names if a.name.split(".")[0] == "rlhf_lite"}
    return found


def answer_problems(cell: str, given: str, notebook_imports: list[str]) -> list[str]:
    """Why an answer cell is not graded: what it imports from ``rlhf_lite`` beyond its scaffold (``given``), and
    what it reaches for that no answer needs. Empty when it may run."""
    try:
        tree = ast.parse(cell)
    except SyntaxError as e:
        return [f"the cell is not valid Python (line {e.lineno}: {e.msg})"]
    problems = []
    extra = sorted(_rlhf_imports(tree) - _rlhf_imports(ast.parse(given)))
    for module, name in extra:
        what = f"imports {name} from {module}" if name != "*" else f"imports {module}"
        problems.append(f"{what}, which this exercise's scaffold does not give: the package's own implementation is "
                        "what your answer is checked against; write it yourself")
    libraries = {(a.asname or a.name).split(".")[0] for n in ast.walk(ast.parse("\n".join(notebook_imports)))
                 if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            libraries |= {(a.asname or a.name).split(".")[0] for a in n.names}
    aliases = set(libraries)
    for n in ast.walk(tree):  # m = torch: m is a library too
        if isinstance(n, ast.Assign) and isinstance(n.value, (ast.Name, ast.Attribute)):
            base = n.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                aliases |= {t.id for t in n.targets if isinstance(t, ast.Name)}
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            for m in [n.module] if isinstance(n, ast.ImportFrom) else [a.name for a in n.names]:
                if (m or "").split(".")[0] in FORBIDDEN_MODULES:
                    problems.append(f"imports {m}: an answer computes with its arguments and does not need it")
        elif isinstance(n, ast.Name) and n.id in FORBIDDEN_NAMES:
            problems.append(f"uses {n.id}(): an answer computes with its arguments and does not need it")
        elif isinstance(n, ast.Attribute) and n.attr.startswith("__") and n.attr.endswith("__"):
            problems.append(f"reads {ast.unparse(n)}: an answer does not need Python's internals")
        elif isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            for t in n.targets if isinstance(n, (ast.Assign, ast.Delete)) else [n.target]:
                base = t
                while isinstance(base, (ast.Attribute, ast.Subscript)):
                    base = base.value
                if t is not base and isinstance(base, ast.Name) and base.id in aliases:
                    problems.append(f"changes {ast.unparse(t)}: an answer must not change a library")
    return list(dict.fromkeys(problems))


def _student_cell(nb: dict, ex: Exercise) -> str | None:
    """The student's cell for an exercise: by nbgrader grade_id, else the code cell that defines its functions."""
    for c in nb["cells"]:
        if c.get("cell_type") == "code" and nbgrader(c).get("grade_id") == ex.grade_id:
            return without_title(source(c))
    for c in nb["cells"]:
        if c.get("cell_type") != "code":
            continue
        try:
            if set(ex.functions) <= set(defined_functions(source(c))):
                return source(c)
        except SyntaxError:
            continue
    return None


def course_notebook(path: Path, course: Path | None = None) -> Path:
    """The course notebook a submission answers: the one of the same file name in ``course`` (default: the course's
    notebooks/)."""
    folder = course or REPO_ROOT / "notebooks"
    match = folder / Path(path).name
    if not match.is_file():
        raise ValueError(f"{path}: no course notebook named {Path(path).name} in {folder} (the exercises are read "
                         "from it); keep the file name the course gave, or pass --course")
    return match


# ---------------------------------------------------------------------------------------------
# 3. The sandbox process
# ---------------------------------------------------------------------------------------------
@functools.cache
def _unprivileged_uid() -> int | None:
    """As root, the sandbox runs as ``nobody`` where that user can run this Python and read the package: it then
    cannot write the package or signal the grader at all. Elsewhere (not root, or a Python installed under
    /root) the audit hook alone keeps it in."""
    uid = None
    if os.geteuid() == 0:
        import pwd

        try:
            nobody = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            nobody = 65534
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            probe = subprocess.run([sys.executable, "-c", "import rlhf_lite.course.sandbox"], capture_output=True,
                                   cwd="/", timeout=60, user=nobody, group=nobody, extra_groups=[])
            uid = nobody if probe.returncode == 0 else None
    return uid


class Sandbox:
    """One exercise's process: started with the answer, ended (its whole process group) by :meth:`close`."""

    def __init__(self, ex: Exercise, cell: str, imports: list[str], mode: str, deadline: float,
                 unreadable: list[Path] = ()):
        self.deadline, self.timeout = deadline, deadline - time.monotonic()
        self.tmp = tempfile.TemporaryDirectory(prefix="rlhf-lite-grade-")
        uid = _unprivileged_uid()
        if uid is not None:
            os.chown(self.tmp.name, uid, uid)
        self.out = open(Path(self.tmp.name) / "output.txt", "w+b")
        req_r, self.req_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        spec = {"imports": imports, "cell": cell, "functions": ex.functions, "mode": mode, "checks": ex.checks,
                "needs_tok": any("tok" in args for _, _, args in ex.checks),
                "workdir": self.tmp.name, "unreadable": [str(p) for p in [*UNREADABLE, *unreadable]],
                "requests": req_r, "replies": rep_w, "preload": _given_imports(ex.given),
                "limits": {"memory_gb": MEMORY_LIMIT_GB[mode], "output_bytes": OUTPUT_LIMIT_BYTES,
                           "cpu_seconds": int(self.timeout) * 2 + 10}}
        env = {"PATH": "/usr/bin:/bin", "HOME": self.tmp.name, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TMPDIR": self.tmp.name,
               "MALLOC_ARENA_MAX": "2"}
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", "from rlhf_lite.course.sandbox import main; main()"]
                                     if _isolated_imports_work() else
                                     [sys.executable, "-c", "from rlhf_lite.course.sandbox import main; main()"],
                                     stdin=subprocess.PIPE, stdout=self.out, stderr=subprocess.STDOUT,
                                     cwd=self.tmp.name, env=env, pass_fds=(req_r, rep_w), start_new_session=True,
                                     **({"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}))
        os.close(req_r)
        os.close(rep_w)
        try:
            self.proc.stdin.write(json.dumps(spec).encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def call(self, name: str, args: list):
        try:
            sandbox.send(self.req_w, (name, [sandbox.TOKENIZER if _is_tokenizer(a) else a for a in args]))
        except BrokenPipeError:
            raise SandboxEnded(self.ended("while it was being called")) from None
        return self.reply()

    def reply(self):
        head = self._read(8)
        n = struct.unpack("<Q", head)[0]
        if n > REPLY_LIMIT_BYTES:
            raise SandboxEnded(f"its answer was {n / 2**20:.0f} MB, more than the {REPLY_LIMIT_BYTES >> 20} MB allowed")
        try:
            return sandbox.decode(self._read(n))
        except Exception as e:
            raise SandboxEnded(f"it sent something that is not data ({type(e).__name__})") from None

    def _read(self, n: int) -> bytes:
        chunks = []
        while n:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.rep_r], [], [], left)[0]:
                raise SandboxEnded(f"it did not finish within {self.timeout:.0f} s (an endless loop?); it was "
                                   "stopped")
            chunk = os.read(self.rep_r, min(n, 1 << 20))
            if not chunk:
                raise SandboxEnded(self.ended("before it answered"))
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def ended(self, when: str) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)
        return f"its process ended (exit code {self.proc.returncode}) {when}{self.output_tail()}"

    def output_tail(self, n: int = 600) -> str:
        self.out.seek(0, os.SEEK_END)
        size = self.out.tell()
        self.out.seek(max(0, size - n))
        tail = self.out.read().decode(errors="replace").strip()
        return f"; it printed …{tail[-n:]}" if tail else ""

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: anything the answer left running
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for fd in (self.req_w, self.rep_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.out.close()
        self.tmp.cleanup()


def _given_imports(given: str) -> list[str]:
    """The import statements of an exercise's scaffold (from the course notebook, so trusted)."""
    return [ast.unparse(n) for n in ast.parse(given).body if isinstance(n, (ast.Import, ast.ImportFrom))]


class SandboxEnded(BaseException):
    """The sandbox stopped answering (ended, killed, too slow, sent garbage): the exercise fails with this reason.
    A BaseException, so that a checker's ``except Exception`` cannot turn it into a pass or a different message."""


def _is_tokenizer(a) -> bool:
    return type(a).__name__.endswith(("Tokenizer", "TokenizerFast"))


@functools.cache
def _isolated_imports_work() -> bool:
    """``python -I`` (no environment variables, no user site, no current folder on the path) still finds the
    package when it is installed; an uninstalled checkout needs the path."""
    r = subprocess.run([sys.executable, "-I", "-c", "import rlhf_lite.course.sandbox"], capture_output=True,
                       cwd=tempfile.gettempdir())
    return r.returncode == 0


class _Remote:
    """The student's function as the checker sees it: each call runs in the sandbox."""

    def __init__(self, box: Sandbox, name: str):
        self.box, self.__name__ = box, name

    def __call__(self, *args):
        reply = self.box.call(self.__name__, list(args))
        if not isinstance(reply, tuple) or not reply or reply[0] not in ("ok", "error"):
            raise SandboxEnded("it sent a reply the grader did not ask for")
        if reply[0] == "ok":
            return reply[1]
        kind, message = str(reply[1]), str(reply[2])
        if kind == "NotImplementedError":
            raise NotImplementedError(message)
        raise type(kind if kind.isidentifier() else "Error", (Exception,), {})(message)


# ---------------------------------------------------------------------------------------------
# 4. Grading
# ---------------------------------------------------------------------------------------------
class _ThreadOutput(io.TextIOBase):
    """sys.stdout while exercises are graded in threads: each thread's prints go to its own buffer."""

    def __init__(self, fallback):
        self.fallback, self.local = fallback, threading.local()

    def write(self, s):
        buf = getattr(self.local, "buf", None)
        return (buf or self.fallback).write(s)

    def flush(self):
        self.fallback.flush()


_STDOUT_LOCK = threading.Lock()


@contextlib.contextmanager
def _printed():
    """What this thread prints, kept apart from other threads' (exercises are graded in several threads)."""
    with _STDOUT_LOCK:
        if not isinstance(sys.stdout, _ThreadOutput):
            sys.stdout = _ThreadOutput(sys.stdout)
        out = sys.stdout
    out.local.buf = io.StringIO()
    try:
        yield out.local.buf
    finally:
        out.local.buf = None


def grade_exercise(ex: Exercise, cell: str | None, imports: list[str], timeout: float = GRADE_TIMEOUT_S,
                   read_source: bool = True, unreadable: list[Path] = ()) -> dict:
    """One exercise: ``{"passed", "message"}``. ``read_source=False`` skips the static reading (step 2), to test
    the fences behind it."""
    if not ex.checks:
        return {"passed": False, "message": "the course notebook has no test cell after this exercise"}
    if cell is None:
        return {"passed": False, "message": f"no cell of the notebook is exercise {ex.grade_id!r} or defines "
                                            f"{', '.join(ex.functions)}"}
    problems = answer_problems(cell, ex.given, imports) if read_source else []
    if problems:
        return {"passed": False, "message": "not graded: the cell " + "; it ".join(problems)}
    functions = {name for _, _, args in ex.checks for name in args if name.startswith("my_")}
    pure = all(module == "rlhf_lite.course.exercises" for module, _, _ in ex.checks)
    box = Sandbox(ex, cell, imports, "serve" if pure else "check", time.monotonic() + timeout, unreadable)
    try:
        first = box.reply()
        if not pure:
            if first and first[0] in ("passed", "failed"):
                return {"passed": first[0] == "passed", "message": str(first[1])}
            return {"passed": False, "message": _cell_error(first, "check")}
        if first != ("ready",):
            return {"passed": False, "message": _cell_error(first, "serve")}
        with _printed() as buf:  # the checker's ✓ line, this thread's alone
            for module, checker, args in ex.checks:
                fn = getattr(exercises_module, checker)
                fn(*[_Remote(box, a) if a in functions else _tok() if a == "tok" else None for a in args])
        return {"passed": True, "message": buf.getvalue().strip()}
    except SandboxEnded as e:
        return {"passed": False, "message": f"the exercise failed: {e}"}
    except ExerciseError as e:
        return {"passed": False, "message": str(e)}
    except Exception as e:  # a checker that could not handle what came back
        return {"passed": False, "message": f"the checker could not use your function's result: {type(e).__name__}: "
                                            f"{e}"}
    finally:
        box.close()


def _cell_error(reply, mode: str) -> str:
    if isinstance(reply, tuple) and len(reply) == 3 and reply[0] == "error":
        if reply[1] == "MemoryError":
            return (f"the cell did not run: it asked for more memory than grading allows "
                    f"({MEMORY_LIMIT_GB[mode]:g} GB of address space for this exercise)")
        if reply[1] == "NotImplementedError":
            return "not implemented yet: the cell still raises NotImplementedError (its '# YOUR CODE HERE' stub)"
        return f"the cell did not run: {reply[1]}: {reply[2]}"
    return "the exercise's process sent a reply the grader did not ask for"


@functools.cache
def _tok():
    """The tiny tokenizer, for checkers that take one."""
    from ..models import load_base

    return load_base("tiny")[1]


def package_digest() -> str:
    """A digest of the package's source: grading checks that no student's code changed it."""
    h = hashlib.sha256()
    for p in sorted((REPO_ROOT / "rlhf_lite").rglob("*.py")):
        h.update(str(p.relative_to(REPO_ROOT)).encode() + p.read_bytes())
    return h.hexdigest()


def grade_notebook(path: str | Path, course: str | Path | None = None, timeout: float = GRADE_TIMEOUT_S) -> list[dict]:
    """Grade the implement-exercises of a student's notebook (see the module docstring), each in its own sandbox,
    several at once. Returns one row per exercise of the course notebook: ``{"grade_id", "functions", "points",
    "passed", "message"}``."""
    submitted = read_notebook(path)
    source_path = course_notebook(Path(path), Path(course) if course else None)
    reference = read_notebook(source_path)
    imports = course_imports(reference)
    exercises = notebook_exercises(reference)
    rows = [{"grade_id": ex.grade_id, "functions": ex.functions, "points": ex.points} for ex in exercises]
    cells = [_student_cell(submitted, ex) for ex in exercises]
    stdout = sys.stdout
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            outcomes = list(pool.map(lambda job: grade_exercise(job[0], job[1], imports, timeout,
                                                                unreadable=[source_path.parent]),
                                     zip(exercises, cells)))
    finally:
        sys.stdout = stdout
    for row, outcome in zip(rows, outcomes):
        row.update(outcome)
    return rows


def grade_command(notebooks: list[str], course: str | None = None) -> dict:
    """``grade``: every implement-exercise of each notebook; a notebook that cannot be read fails alone. Fails
    (exit 1) unless every exercise passes. Stops if the package's own files changed while grading."""
    total = passed = points = max_points = 0
    before = package_digest()
    for path in notebooks:
        try:
            graded = grade_notebook(path, course)
        except (ValueError, OSError) as e:  # a damaged or missing notebook fails alone; the others are still graded
            total += 1
            print(f"✗ {path}: cannot grade it: {e}")
            continue
        if not graded:
            total += 1
            print(f"✗ {path}: its course notebook has no implement-exercises to grade")
            continue
        for row in graded:
            total, passed = total + 1, passed + row["passed"]
            points, max_points = points + row["passed"] * row["points"], max_points + row["points"]
            detail = "" if row["passed"] else f"\n    {row['message']}"
            print(f"{'✓' if row['passed'] else '✗'} {path}: {', '.join(row['functions'])}{detail}")
        if package_digest() != before:
            raise RuntimeError(f"the package's files changed while {path} was graded: reinstall rlhf_lite before "
                               "grading again")
    print(f"{passed}/{total} exercises pass their checkers ({points:g}/{max_points:g} points)")
    return {"passed": passed, "total": total, "exit": 0 if passed == total else 1}
