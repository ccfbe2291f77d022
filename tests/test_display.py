"""Widgets in a notebook opened without a kernel: the saved output's plain text is a readable description."""
import pytest

from rlhf_lite.course.display import ranking_preview, readable, static_fallback
from rlhf_lite.feedback import RankingSession, RankingStore, ranking_widget


def _items(world, n=2):
    out = []
    for t in world.splits["validation"][:n]:
        v = world.variants(t)
        out.append({"prompt_id": t.prompt_id, "user_id": t.user_id, "prompt": t.instruction,
                    "responses": [v["reference"], v["rude"], "x" * 500], "finished": [True, True, False]})
    return out


def displayed(widget, monkeypatch) -> dict:
    """The bundle a notebook saves for ``widget``: ipywidgets 8 builds it in _repr_mimebundle_, 7 (Colab's) sends
    it from _ipython_display_."""
    if hasattr(widget, "_repr_mimebundle_"):
        return widget._repr_mimebundle_()
    import IPython.display

    sent = []
    monkeypatch.setattr(IPython.display, "display", lambda data, raw=False: sent.append(data))
    widget._ipython_display_()
    return sent[0]


def test_ranking_widget_saves_a_readable_fallback(world, tmp_path, monkeypatch):
    W = pytest.importorskip("ipywidgets")
    session = RankingSession(world, _items(world), RankingStore(tmp_path / "you.jsonl"))
    text = ranking_preview(session)
    ui = static_fallback(ranking_widget(session), text)
    bundle = displayed(ui, monkeypatch)
    assert bundle["text/plain"] == text and "application/vnd.jupyter.widget-view+json" in bundle
    assert "VBox" not in text and "run this cell" in text
    item = _items(world)[0]
    assert item["prompt"].splitlines()[0] in text and f"A: {item['responses'][0][:40]}" in text.replace("\n   ", " ")
    assert "[cut off: no end-of-text]" in text and "x" * 200 not in text  # long answers shortened, cut ones marked
    assert "2 prompts to rank" in text
    session.submit([0, 1, 2])
    session.submit([0, 1, 2])
    assert ranking_preview(session) == "[ranking widget: nothing left to rank]"
    out = static_fallback(W.Output(), "")
    assert displayed(out, monkeypatch)["text/plain"] == ""


def test_readable_marks_bytes_that_are_not_text_and_shortens():
    assert readable("Dear Minbrum, I\ufffdiss you\x01 in Meholm.") == "Dear Minbrum, I▯iss you▯ in Meholm."
    assert readable("line one\nline two\tend") == "line one\nline two\tend"  # newlines and tabs are text
    assert readable("abcdefgh", 5) == "abcd…" and readable("abcde", 5) == "abcde"


def test_the_fallback_works_with_ipywidgets_7(monkeypatch):
    """ipywidgets 7 (Colab's) has no _repr_mimebundle_: a widget displays itself through _ipython_display_."""
    import IPython.display

    shown, handled = [], []

    class Widget7:  # the attributes ipywidgets 7.7's Widget uses to display itself
        _view_name, _model_id = "VBoxView", "abc123"

        def __repr__(self):
            return "VBox(children=(HTML(value='<b>Rank…"

        def _handle_displayed(self, **kwargs):
            handled.append(kwargs)

    monkeypatch.setattr(IPython.display, "display", lambda data, raw=False: shown.append((data, raw)))
    w = static_fallback(Widget7(), "[ranking widget: run this cell]")
    w._ipython_display_()
    assert shown == [({"text/plain": "[ranking widget: run this cell]",
                       "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                                    "model_id": "abc123"}}, True)]
    assert handled == [{}]
