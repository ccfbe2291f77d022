"""What a student sees: every notebook opened in JupyterLab in a headless browser, as a fresh clone gives it.

``python -m rlhf_lite browser-check --out DIR`` (before committing executed notebooks; not part of CI):

1. copies the notebooks to a temporary folder (JupyterLab autosaves, and the committed files must stay as they
   are) and starts JupyterLab on it, its kernels on the ``smoke`` profile with an empty runs folder;
2. opens each notebook untrusted, without running it, takes a screenshot (``DIR/NN_name.png``) and checks the page
   for what a reader must never see: a solution whose source is shown before the learner opens it, a widget's
   ``repr`` (``VBox(children=…``) instead of its static fallback, a progress bar frozen in the saved output, an
   unreadable character, a path of the machine that executed it;
3. runs notebook 03 in the browser, ranks the first prompt through the widget (Submit), and checks the ranking
   reached the file the widget says it saved to.

It drives Debian's ``chromium`` over the DevTools protocol with the websocket client of tornado (a JupyterLab
dependency), so it needs nothing beyond ``apt install chromium``. Returns a report; the command exits 1 on any
problem.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..models import REPO_ROOT

PAGE_PROBLEMS = {
    "a widget's repr instead of its fallback": re.compile(r"\b(?:VBox|HBox|IntProgress)\(children=|\bOutput\(\)"),
    "a frozen progress bar": re.compile(r"\b0%\|"),
    "a replacement character (invalid UTF-8 in a sample)": re.compile("\ufffd"),
    "an absolute path of the executing machine": re.compile(r"(?:/work/|/home/\w+/|/root/|/tmp/)\S*runs"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


class Page:
    """One browser tab over the DevTools protocol: evaluate JavaScript, take screenshots."""

    def __init__(self, debug_port: int):
        from tornado.ioloop import IOLoop
        from tornado.websocket import websocket_connect

        req = urllib.request.Request(f"http://127.0.0.1:{debug_port}/json/new?about:blank", method="PUT")
        target = json.loads(urllib.request.urlopen(req, timeout=10).read())
        self.loop = IOLoop.current()
        self.ws = self.loop.run_sync(lambda: websocket_connect(target["webSocketDebuggerUrl"],
                                                               max_message_size=256 * 2**20))
        self.n = 0
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=1600, deviceScaleFactor=1, mobile=False)
        self.send("Emulation.setFocusEmulationEnabled", enabled=True)  # headless has no focus: JupyterLab needs one

    def send(self, method: str, **params):
        self.n += 1
        n = self.n

        async def call():
            await self.ws.write_message(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await self.ws.read_message())
                if msg.get("id") == n:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})

        return self.loop.run_sync(call, timeout=120)

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JavaScript failed: {r['exceptionDetails'].get('text')} in {expression[:80]}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str):
        t0 = time.time()
        while time.time() - t0 < timeout:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"{what}: not within {timeout:.0f} s")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def screenshot(self, path: Path) -> None:
        height = self.js("Math.max(...[...document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')]"
                         ".map(e => e.scrollHeight), 1000)") or 1600
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=int(min(height + 200, 16000)),
                  deviceScaleFactor=1, mobile=False)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=1600, deviceScaleFactor=1, mobile=False)


NOTEBOOK_READY = ("document.querySelectorAll('.jp-Notebook .jp-Cell').length > 0 && "
                  "!document.querySelector('.jp-Notebook .jp-mod-pending')")
NOTEBOOK_PANEL = "[...window.jupyterapp.shell.widgets('main')].find(w => w.sessionContext)"
KERNEL_IDLE = (f"(() => {{ const w = {NOTEBOOK_PANEL};"
               " const k = w && w.sessionContext.session && w.sessionContext.session.kernel;"
               " return !!k && k.status === 'idle'; })()")
CLOSE_ALL = ("(async () => { for (const w of [...window.jupyterapp.shell.widgets('main')]) "
             "{ if (w.sessionContext) await w.sessionContext.shutdown(); w.close(); } return true; })()")
# what the cells show as output, not their source (where `W.Output()` is code, not a widget's repr)
SOLUTIONS_HIDDEN = ("(() => { const nb = window.jupyterapp.shell.currentWidget.content; return nb.widgets"
                    ".filter(c => (c.model.getMetadata('nbgrader') || {}).solution).map(c => c.inputHidden); })()")
"""For each solution cell (an exercise's code, a written answer) of the open notebook: is its source collapsed?"""
PAGE_TEXT = ("[...document.querySelectorAll('.jp-Notebook .jp-OutputArea')].map(c => c.innerText).join('\\n')")


def browser_check(out: str | Path, chromium: str = "chromium", notebooks: str | Path | None = None,
                  timeout: float = 900) -> dict:
    """Screenshots of every notebook, page checks, and one ranking clicked through notebook 03's widget on
    ``smoke``. Returns ``{"screenshots": [...], "problems": [...], "ranking_saved": bool}``."""
    exe = shutil.which(chromium)
    if exe is None:
        raise FileNotFoundError(f"no {chromium} on PATH: install Debian's chromium (apt install chromium), or pass "
                                "--chromium with the browser's path")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(notebooks) if notebooks else REPO_ROOT / "notebooks"
    report: dict = {"screenshots": [], "problems": [], "ranking_saved": False}
    with tempfile.TemporaryDirectory() as tmp:
        root, runs, profile_dir = Path(tmp) / "notebooks", Path(tmp) / "runs", Path(tmp) / "chromium"
        shutil.copytree(src, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        port, debug_port, token = _free_port(), _free_port(), "browser-check"
        settings = Path(tmp) / "lab-settings"  # every cell in the page, not only those in view (JupyterLab 4 windowing)
        (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
        (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
            json.dumps({"windowingMode": "none"}))
        env = {**os.environ, "RLHF_LITE_PROFILE": "smoke", "RLHF_LITE_RUNS": str(runs), "TQDM_DISABLE": "1",
               "JUPYTER_CONFIG_DIR": str(Path(tmp) / "jupyter-config"), "JUPYTERLAB_SETTINGS_DIR": str(settings)}
        procs = []  # whatever started is stopped again, even if the next one fails to start
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                                           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                                           "--allow-root", "--LabApp.expose_app_in_browser=True",
                                           "--ServerApp.open_browser=False"],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            procs.append(subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu",
                                           f"--remote-debugging-port={debug_port}", f"--user-data-dir={profile_dir}",
                                           "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 120)
            _wait_http(f"http://127.0.0.1:{debug_port}/json/version", 60)
            page = Page(debug_port)
            for nb in sorted(root.glob("[0-9][0-9]_*.ipynb")):
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{nb.name}?token={token}&reset")
                page.wait_for(NOTEBOOK_READY, 120, f"{nb.name} did not render")
                time.sleep(2)  # outputs and math finish rendering
                text = page.js(PAGE_TEXT) or ""
                for what, pattern in PAGE_PROBLEMS.items():
                    hit = pattern.search(text)
                    if hit:
                        context = text[max(0, hit.start() - 60):hit.end() + 60]
                        report["problems"].append(f"{nb.name}: {what}: …{context}…")
                hidden = page.js(SOLUTIONS_HIDDEN) or []
                if not hidden or not all(hidden):
                    report["problems"].append(f"{nb.name}: {hidden.count(False) if hidden else 'no'} of its solution "
                                              "cells open with their source shown (JupyterLab's collapsed input: "
                                              "metadata jupyter.source_hidden)")
                shot = out / f"{nb.stem}.png"
                page.screenshot(shot)
                report["screenshots"].append(str(shot))
                page.js(CLOSE_ALL)  # its kernel too: nine idle kernels would only take memory
            # 03 on smoke: run every cell, rank through the widget, check the ranking was saved
            try:
                _rank_through_widget(page, port, token, root, runs, out, timeout, report)
            except (TimeoutError, RuntimeError) as e:  # keep the page as it was when it stopped
                shot = out / "03_human_feedback-smoke-run.png"
                page.screenshot(shot)
                report["screenshots"].append(str(shot))
                report["problems"].append(f"03 on smoke: {e}")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return report


def _rank_through_widget(page: Page, port: int, token: str, root: Path, runs: Path, out: Path, timeout: float,
                         report: dict) -> None:
    """Run notebook 03 in the browser, click Submit in its ranking widget, check the ranking reached the runs
    folder, and screenshot the result."""
    nb = next(root.glob("03_*.ipynb"))
    page.goto(f"http://127.0.0.1:{port}/lab/tree/{nb.name}?token={token}&reset")
    page.wait_for(NOTEBOOK_READY, 120, f"{nb.name} did not render")
    page.js(f"(() => {{ window.jupyterapp.shell.activateById({NOTEBOOK_PANEL}.id); return true; }})()")
    page.js("document.querySelector('.jp-Notebook .jp-Cell').click()")  # the notebook becomes current
    page.wait_for(KERNEL_IDLE, 180, "the kernel of 03 did not start")
    page.js("(() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; })()")
    page.wait_for("[...document.querySelectorAll('button')].some(b => b.innerText.includes('Submit ranking') "
                  "|| b.innerText.includes('A is better'))", timeout, "03's ranking widget did not appear")
    page.js("[...document.querySelectorAll('button')].find(b => b.innerText.includes('Submit ranking') || "
            "b.innerText.includes('A is better')).click()")
    page.wait_for("document.body.innerText.includes('saved to')", 60, "the widget did not confirm the save")
    saved = list(runs.glob("you-*.jsonl"))
    rows = [json.loads(line) for p in saved for line in p.read_text().splitlines() if line.strip()]
    report["ranking_saved"] = bool(rows) and all("ranking" in r for r in rows)
    if not report["ranking_saved"]:
        report["problems"].append("03: the widget said 'saved to' but no ranking is in the runs folder")
    page.wait_for(KERNEL_IDLE, timeout, "03 did not finish running")
    errors = page.js("[...document.querySelectorAll('.jp-RenderedText[data-mime-type=\"application/"
                     "vnd.jupyter.stderr\"]')].map(e => e.innerText).filter(t => t.includes('Error'))")
    report["problems"] += [f"03 on smoke: {e[:300]}" for e in errors or []]
    shot = out / "03_human_feedback-smoke-run.png"
    page.screenshot(shot)
    report["screenshots"].append(str(shot))


def browser_check_command(out: str = "runs/browser-check", chromium: str = "chromium") -> dict:
    """``browser-check``: :func:`browser_check`, with its screenshots and problems printed; fails (exit 1) on any
    problem."""
    report = browser_check(out, chromium=chromium)
    for shot in report["screenshots"]:
        print(f"screenshot: {shot}")
    print(f"ranking clicked through notebook 03's widget and saved: {'yes' if report['ranking_saved'] else 'NO'}")
    for problem in report["problems"]:
        print(f"✗ {problem}")
    print("no problems found" if not report["problems"] else f"{len(report['problems'])} problems")
    return {**report, "exit": 0 if report["ranking_saved"] and not report["problems"] else 1}
