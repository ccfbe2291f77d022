"""Is this a sentence of TinyWorld's language? The labelers' seventh criterion, ``fluent``.

TinyWorld's language is closed: every sentence the world ever writes comes from a fixed set of
templates whose slots are filled with names, numbers and values from the knowledge base. So a
labeler can check what a person checks by reading, exactly and cheaply:

* every word is a word of the world (its lexicon), a number, a value of the knowledge base, or a
  name the reader knows (the knowledge base's people, towns and rivers, or a name in the prompt);
* every pair of neighbouring words (slots replaced by their kind, ``<s>``/``</s>`` at the ends) is a
  pair the world's sentences contain: a bigram grammar over the templates.

Sub-word fusions ("youossaik", "Heamaik"), invalid bytes ("�"), word salad and a sentence cut off
in the middle fail one of the two checks; a fluent recombination of template pieces passes. The
lexicon and the bigrams are read off text the world generates (its corpus and the training users'
prompts, references and demonstrations), never off a model's outputs.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .kb import KnowledgeBase

_TOKEN = re.compile(r"[A-Za-z]+|\d+|\S")
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")
VALUE_KINDS = ("food", "animal", "job", "colour", "class", "habitat", "diet", "taste", "region")
MIN_SOURCES = 3
"""A word joins the lexicon once it occurs in this many different sources (a corpus document, or one task's
prompt, context, reference and demonstration together): a name made up for one story (the corpus's strangers, a
closed task's visitor) stays out, and is accepted only where the prompt names it."""


def split_sentences(text: str) -> list[str]:
    """Sentences and lines of ``text``, list markers ("- ", "* ") removed."""
    out = []
    for s in _SENT.split(text.strip()):
        s = s.strip().lstrip("-*").strip()
        if s:
            out.append(s)
    return out


class Language:
    """The lexicon and bigram grammar of one world. Build with :func:`learn_language`."""

    def __init__(self, kb: "KnowledgeBase", lexicon: set[str], bigrams: set[tuple[str, str]]):
        self.lexicon, self.bigrams = lexicon, bigrams
        self.names = {part.lower() for n in kb.people + kb.towns + kb.rivers for part in n.split()}
        self.values: dict[tuple[str, ...], str] = {}
        for kind in VALUE_KINDS:
            for v in kb.value_set(kind):
                self.values.setdefault(tuple(v.lower().split()), f"<{kind}>")

    def prompt_names(self, *texts: str) -> set[str]:
        """Capitalised words of the prompt that are not words of the world: names the reader was just told."""
        return {t.lower() for text in texts for t in _TOKEN.findall(text)
                if t[:1].isupper() and t.lower() not in self.lexicon}

    def classes(self, sentence: str, names: set[str]) -> list[str | None]:
        """The sentence as word classes: a lexicon word, ``<kind>`` for a knowledge-base value, ``<name>``,
        ``<num>``; None for a word the reader does not know."""
        toks, out, i = _TOKEN.findall(sentence), [], 0
        while i < len(toks):
            two = tuple(t.lower() for t in toks[i:i + 2])
            if len(two) == 2 and two in self.values:
                out.append(self.values[two])
                i += 2
                continue
            t, low = toks[i], toks[i].lower()
            if (low,) in self.values:
                out.append(self.values[(low,)])
            elif t.isdigit():
                out.append("<num>")
            elif low in self.names or low in names:
                out.append("<name>")
            elif low in self.lexicon:
                out.append(low)
            else:
                out.append(None)
            i += 1
        return out

    def well_formed(self, sentence: str, names: set[str] = frozenset()) -> bool:
        """Every word known and every neighbouring pair one the world's sentences use."""
        cls = self.classes(sentence, names)
        if not cls or None in cls:
            return False
        seq = ["<s>"] + cls + ["</s>"]
        return all(pair in self.bigrams for pair in zip(seq, seq[1:]))

    def fluency(self, text: str, names: set[str] = frozenset()) -> float:
        """Share of the sentences of ``text`` that are well-formed (0 for an empty text)."""
        sents = split_sentences(text)
        return sum(self.well_formed(s, names) for s in sents) / len(sents) if sents else 0.0


def learn_language(kb: "KnowledgeBase", sources: Iterable[list[str]]) -> Language:
    """Read the lexicon (words in ≥ MIN_SOURCES sources) and then the bigrams off the world's own texts;
    ``sources`` is a list of lists of texts (one list per document or task)."""
    sources = [[t for t in src if t] for src in sources]
    df: Counter = Counter()
    for src in sources:
        df.update({t.lower() for text in src for t in _TOKEN.findall(text)})
    lang = Language(kb, set(), set())
    lang.lexicon = {w for w, n in df.items() if n >= MIN_SOURCES and not w.isdigit() and w not in lang.names}
    for src in sources:
        names = lang.prompt_names(*src)  # the source's own made-up names count as names, as a prompt's do
        for s in (s for text in src for s in split_sentences(text)):
            cls = lang.classes(s, names)
            if None not in cls:
                seq = ["<s>"] + cls + ["</s>"]
                lang.bigrams.update(zip(seq, seq[1:]))
    return lang


def garble(text: str) -> str:
    """A probe: every second word (the only word of a one-word text) cut to two letters plus "ossaik",
    the sub-word fusions a poorly trained sampler produces."""
    words = text.split()
    return " ".join(w[:2] + "ossaik" if i % 2 or len(words) == 1 else w for i, w in enumerate(words))


def shuffle_words(text: str, rng) -> str:
    """A probe: the words of ``text`` in a random order that differs from the original (if any does)."""
    words = text.split()
    for _ in range(20):
        out = rng.sample(words, len(words))
        if out != words:
            break
    return " ".join(out)
