"""What a reader sees: widgets that still read well without a kernel, and generations shown as text.

A widget's output in a saved notebook is a pointer to state that only a running kernel has; JupyterLab (for a
notebook opened without running it), nbconvert's HTML and repository viewers show the output's plain-text form
instead, which by default is the widget's ``repr`` (``VBox(children=(HTML(value='<b>Rank…``). :func:`static_fallback`
replaces that text with a readable description of what the widget shows and how to bring it to life.

:func:`readable` prepares a sampled response for printing: a byte-level model can emit half of a multi-byte
character, which decodes to the replacement character, and control bytes; both would print as noise or not at all.
"""
from __future__ import annotations

import re
import textwrap

UNREADABLE = re.compile("[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MARK = "▯"
"""What :func:`readable` shows in place of a byte that is not text on its own."""


def readable(text: str, limit: int | None = None) -> str:
    """``text`` for printing: every byte that does not decode to a character (U+FFFD after decoding) and every
    control character becomes ``▯``, and text longer than ``limit`` characters is cut and ends in ``…``."""
    text = UNREADABLE.sub(MARK, text)
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def static_fallback(widget, text: str):
    """``widget``, with ``text`` as the plain-text form of its output (what a reader without a kernel sees). Returns
    the same widget, so it can end a cell: ``static_fallback(ranking_widget(session), "…")``. Works with ipywidgets
    8 (JupyterLab) and 7 (what Colab ships), which display a widget in different ways."""
    bundle = getattr(widget, "_repr_mimebundle_", None)
    if bundle is not None:  # ipywidgets 8: the display bundle comes from _repr_mimebundle_
        def with_text(**kwargs):
            data = bundle(**kwargs)
            if isinstance(data, dict):
                data["text/plain"] = text
            return data

        widget._repr_mimebundle_ = with_text
        return widget

    def display_with_text(**kwargs):  # ipywidgets 7: _ipython_display_ sends the bundle itself, with repr as its text
        from IPython.display import display

        data = {"text/plain": text}
        if widget._view_name is not None:
            data["application/vnd.jupyter.widget-view+json"] = {"version_major": 2, "version_minor": 0,
                                                                 "model_id": widget._model_id}
        display(data, raw=True)
        if widget._view_name is not None:
            widget._handle_displayed(**kwargs)

    widget._ipython_display_ = display_with_text
    return widget


def ranking_preview(session, width: int = 100, max_chars: int = 160) -> str:
    """What :func:`rlhf_lite.feedback.ranking_widget` shows first, as text: the prompt to rank and its answers (each
    shortened to ``max_chars``), and how to rank them."""
    item = session.current
    if item is None:
        return "[ranking widget: nothing left to rank]"
    lines = ["[ranking widget: run this cell with a running kernel to rank these answers and save your ranking]", "",
             "Prompt:"]
    lines += ["    " + line for line in item["prompt"].strip().splitlines()]
    for i, (answer, finished) in enumerate(zip(item["responses"], item["finished"])):
        answer = answer if len(answer) <= max_chars else answer[:max_chars - 1].rstrip() + "…"
        tail = "" if finished else " [cut off: no end-of-text]"
        lines += textwrap.wrap(f"{chr(65 + i)}: {answer}{tail}", width, subsequent_indent="   ")
    lines += ["", f"{len(session.items) - session.pos} prompts to rank in this session."]
    return "\n".join(lines)
