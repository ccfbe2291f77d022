"""The repository URL in the places a reader meets it: the notebooks' Colab setup cells and the README's badges.

:data:`rlhf_lite.REPO_URL` is the one copy of the truth; :func:`repo_url_uses` finds every use so a test can check
that they agree, and :func:`set_repo_url` rewrites them all for a fork (``python -m rlhf_lite repo-url URL``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..models import REPO_ROOT

_GITHUB = re.compile(r"https://github\.com/([\w.-]+/[\w.-]+)")
_SETUP = re.compile(r'(    REPO = ")(https://github\.com/[\w.-]+/[\w.-]+)(")')
_BADGE = re.compile(r"(https://colab\.research\.google\.com/github/)([\w.-]+/[\w.-]+)(/blob/)")


def repo_url_uses(root: Path = REPO_ROOT) -> dict[str, list[str]]:
    """Where a repository URL is written, file -> the URLs found: each notebook's setup cell (``REPO = "…"``), the
    README's Colab badges (as ``https://github.com/owner/name``), and the package constant."""
    uses: dict[str, list[str]] = {}
    for nb in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        uses[f"notebooks/{nb.name}"] = [m.group(2) for c in cells if c["cell_type"] == "code"
                                        for m in _SETUP.finditer("".join(c["source"]))]
    readme = (root / "README.md").read_text()
    uses["README.md"] = [f"https://github.com/{m.group(2)}" for m in _BADGE.finditer(readme)]
    init = (root / "rlhf_lite" / "__init__.py").read_text()
    uses["rlhf_lite/__init__.py"] = re.findall(r'^REPO_URL = "([^"]+)"', init, flags=re.M)
    return uses


def set_repo_url(url: str, root: Path = REPO_ROOT) -> list[str]:
    """Point the setup cells, the badges and :data:`~rlhf_lite.REPO_URL` at ``url`` (``https://github.com/owner/
    name``, a fork). Returns the files changed. Notebook outputs are left as they are."""
    m = _GITHUB.fullmatch(url.rstrip("/"))
    if not m:
        raise ValueError(f"repo-url: expected https://github.com/OWNER/NAME, got {url!r} (Colab opens notebooks from "
                         "GitHub repositories only)")
    url, slug = m.group(0), m.group(1)
    changed = []
    for nb in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        doc, edited = json.loads(nb.read_text()), False
        for cell in doc["cells"]:
            src = "".join(cell["source"])
            new = _SETUP.sub(lambda x: x.group(1) + url + x.group(3), src) if cell["cell_type"] == "code" else src
            if new != src:
                cell["source"], edited = new.splitlines(keepends=True), True
        if edited:  # written as the course writes notebooks: one-space indent, UTF-8 kept
            nb.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
            changed.append(f"notebooks/{nb.name}")
    for name, pattern, repl in (("README.md", _BADGE, lambda x: x.group(1) + slug + x.group(3)),
                                ("rlhf_lite/__init__.py", re.compile(r'^REPO_URL = "[^"]+"', re.M),
                                 lambda x: f'REPO_URL = "{url}"')):
        path = root / name
        text = path.read_text()
        new = pattern.sub(repl, text)
        if new != text:
            path.write_text(new)
            changed.append(name)
    return changed


def repo_url_command(url: str) -> dict:
    """``repo-url``: point the Colab setup cells, badges and ``REPO_URL`` at ``url`` (:func:`set_repo_url`)."""
    changed = set_repo_url(url)
    print(f"pointed the Colab setup cells, badges and REPO_URL at {url}: {len(changed)} files changed"
          + (f" ({', '.join(changed)})" if changed else ""))
    return {"changed": changed}
