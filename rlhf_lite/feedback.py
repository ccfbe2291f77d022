"""Comparison data: step 2 of InstructGPT begins with people ranking a model's answers.

For each prompt the SFT model samples K responses (InstructGPT: K between 4 and 9) and one labeler
orders them best → worst. A ranking of K gives C(K,2) (winner, loser) pairs at the price of reading
K answers once: that is why the paper collected rankings rather than pairs.

This module holds that stage (notebook 03):

* :func:`ranking_to_pairs`, the one index manipulation everything downstream relies on;
* :class:`RankingStore`, a JSON-lines file that never loses a ranking once it was reported saved;
* :func:`collect_comparisons`, the synthetic labeler panel ranking SFT samples at scale;
* :func:`load_preference_dataset`, real preference data (HH-RLHF dialogues, TRL prompt/chosen/rejected)
  turned into the same records (K = 2);
* :class:`RankingSession` and :func:`ranking_widget`, the "you are the labeler" interface: the logic
  runs headless (tests drive it), the widget is a thin ipywidgets shell around it.

A comparison record is one JSON object::

    {"prompt_id", "user_id", "labeler", "prompt", "responses": [K texts], "ranking": [K indices, best first],
     "finished": [K bools: did the response end with EOS]}

``prompt`` is the text the models read (already in the prompt format); ``ranking`` may group tied
responses in a nested list, e.g. ``[2, [0, 3], 1]``; pairs inside a tie carry no preference and are dropped.
"""
from __future__ import annotations

import html
import itertools
import json
import os
import random
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

from datasets import load_dataset

from .data import render_prompt
from .files import DataFormatError, append_lines, decode_text, read_rows, repair_lines
from .models import generate
from .world.labelers import Labeler, prefer_prob

HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
RECORD_FIELDS = ("prompt", "responses", "ranking")


# ---------------------------------------------------------------------------------------------
# Rankings → pairs
# ---------------------------------------------------------------------------------------------
def ranking_to_pairs(ranking: Sequence[int | Sequence[int]]) -> list[tuple[int, int]]:
    """All (winner, loser) pairs implied by a ranking listed best → worst.

    ``[2, 0, 1]`` → ``[(2, 0), (2, 1), (0, 1)]``: every earlier index beats every later one, C(K,2)
    pairs for K responses. A nested list is a tie: ``[2, [0, 1]]`` → ``[(2, 0), (2, 1)]``; the pair
    (0, 1) is dropped, as InstructGPT dropped ties. Indices must be distinct.
    """
    groups = [list(g) if isinstance(g, (list, tuple)) else [g] for g in ranking]
    flat = [i for g in groups for i in g]
    if len(set(flat)) != len(flat):
        raise ValueError(f"ranking {list(ranking)} lists a response more than once")
    return [(w, l) for a, b in itertools.combinations(range(len(groups)), 2) for w in groups[a] for l in groups[b]]


def flat_ranking(ranking: Sequence[int | Sequence[int]]) -> list[int]:
    """The response indices in ranked order, ties flattened: ``[2, [0, 3], 1]`` → ``[2, 0, 3, 1]``."""
    return [i for g in ranking for i in (g if isinstance(g, (list, tuple)) else [g])]


# ---------------------------------------------------------------------------------------------
# Storage: one JSON line per ranking, flushed and fsynced before we say "saved"
# ---------------------------------------------------------------------------------------------
def validate_comparison(rec: dict, where: str) -> dict:
    """Check one comparison record; the error names the record and the field."""
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for f in RECORD_FIELDS:
        if f not in rec:
            raise DataFormatError(f"{where}: missing field '{f}'; a comparison needs {list(RECORD_FIELDS)}")
    if not isinstance(rec["prompt"], str) or not rec["prompt"].strip():
        raise DataFormatError(f"{where}: field 'prompt' must be non-empty text")
    resp = rec["responses"]
    if not isinstance(resp, list) or len(resp) < 2 or not all(isinstance(r, str) for r in resp):
        raise DataFormatError(f"{where}: field 'responses' must be a list of at least 2 texts")
    try:
        flat = flat_ranking(rec["ranking"])
    except TypeError:
        raise DataFormatError(f"{where}: field 'ranking' must be a list of response indices (best first)") from None
    if not all(type(i) is int for i in flat):
        raise DataFormatError(f"{where}: field 'ranking' {rec['ranking']} must hold whole-number response indices "
                              "(0, 1, 2, …, best first), not " + ", ".join(sorted({type(i).__name__ for i in flat
                                                                                    if type(i) is not int})))
    if sorted(flat) != list(range(len(resp))):
        raise DataFormatError(f"{where}: field 'ranking' {rec['ranking']} must order each of the {len(resp)} responses "
                              f"exactly once (indices 0..{len(resp) - 1}, best first)")
    fin = rec.setdefault("finished", [True] * len(resp))
    if not isinstance(fin, list) or len(fin) != len(resp) or not all(isinstance(f, bool) for f in fin):
        raise DataFormatError(f"{where}: field 'finished' must be a list of {len(resp)} booleans")
    return rec


class RankingStore:
    """Append-only JSON-lines file of comparison records, safe against a kernel killed at any moment.

    ``append``/``extend`` validate every record first, then write the batch in one locked, flushed write
    (:func:`rlhf_lite.files.append_lines`): a ranking reported as saved survives a killed kernel or a lost Colab
    session, two stores open on one file (two notebook tabs) never interleave lines, and a failed write keeps none of
    its batch. A torn last line left by a killed writer is moved aside to ``<file>.torn`` with a warning, never glued
    to the next record; a file that is not a store at all is refused, never cut.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise DataFormatError(f"ranking store {self.path} is a folder, not a file; pass a .jsonl file path")
        repair_lines(self.path, _check_line)

    def append(self, record: dict) -> None:
        """Validate ``record`` and write it durably (one line; on disk before this returns)."""
        self.extend([record])

    def extend(self, records: Sequence[dict]) -> None:
        """Validate all ``records``, then write them in one go (bulk collection by the synthetic panel). One invalid
        record writes none of them."""
        records = list(records)
        for i, r in enumerate(records):  # validate everything before writing anything
            validate_comparison(dict(r), f"{self.path}, new record {i + 1} of {len(records)}")
        append_lines(self.path, [json.dumps(r, ensure_ascii=False) for r in records], _check_line)

    def load(self) -> list[dict]:
        return read_comparisons(self.path) if self.path.exists() else []

    def __len__(self) -> int:
        return len(self.load())


def _check_line(line: str, where: str) -> dict:
    return validate_comparison(json.loads(line), where)


def read_comparisons(path: str | os.PathLike) -> list[dict]:
    """All records of a comparisons file. A torn *last* line (a crash mid-write) is skipped with a
    warning naming it; a broken line anywhere else is an error naming the line. Lines are split on
    ``\\n`` only, so a record may contain any other line separator (U+2028, U+0085) inside its strings."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"comparisons file {p} does not exist" if not p.exists() else
                                f"comparisons file {p} is a folder, not a file")
    lines = decode_text(p).split("\n")
    torn_tail = lines[-1] != ""  # a complete file ends with a newline
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines) and torn_tail:
                warnings.warn(f"{p}, line {n}: skipped an incomplete last record (an interrupted write)", stacklevel=2)
                continue
            raise DataFormatError(f"{p}, line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
        out.append(validate_comparison(rec, f"{p}, line {n}"))
    return out


# ---------------------------------------------------------------------------------------------
# The synthetic panel labels at scale
# ---------------------------------------------------------------------------------------------
def collect_comparisons(model, tokenizer, world, tasks, labelers, k_min: int = 4, k_max: int = 9,
                        max_new_tokens: int = 64, temperature: float = 1.0, fmt: str = "alpaca", seed: int = 0,
                        store: RankingStore | None = None, batch_size: int = 64, progress: bool = True) -> list[dict]:
    """Sample K ∈ [k_min, k_max] responses per task from ``model`` and have one of ``labelers`` rank them.

    Labelers take turns in a seeded random order (each prompt is ranked by one labeler, as in
    InstructGPT). Rankings are Plackett–Luce draws from each labeler's scores (their own noise).
    Records go to ``store`` if given. Returns the records.
    """
    if not labelers:
        raise ValueError("collect_comparisons: no labelers given")
    if not 2 <= k_min <= k_max:
        raise ValueError(f"need 2 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
    rng = random.Random(f"comparisons-{seed}")
    ks = [rng.randint(k_min, k_max) for _ in tasks]
    prompts = [render_prompt(tokenizer, t.instruction, t.context, fmt) for t in tasks]
    flat = [p for p, k in zip(prompts, ks) for _ in range(k)]
    gens = generate(model, tokenizer, flat, max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size,
                    progress=progress)
    records, i = [], 0
    for t, prompt, k in zip(tasks, prompts, ks):
        g = gens[i:i + k]
        i += k
        lab = labelers[rng.randrange(len(labelers))]
        ranking = lab.rank(t.instruction, t.context, [x.text for x in g], rng, task=t, finished=[x.finished for x in g])
        records.append({"prompt_id": t.prompt_id, "user_id": t.user_id, "labeler": lab.name, "prompt": prompt,
                        "responses": [x.text for x in g], "ranking": ranking, "finished": [x.finished for x in g]})
    if store is not None:
        store.extend(records)
    return records


def variant_comparisons(world, tasks, labelers, tokenizer=None, fmt: str = "alpaca", seed: int = 0) -> list[dict]:
    """Comparisons of each task's reference answer and its six corruptions (wrong fact, rude, rambling,
    invented, unending, bad format), ranked by one of ``labelers`` per task. Quality differs a lot
    within these sets, so labelers agree about as often as InstructGPT's did (about 0.71): a second
    yardstick for a reward model, next to the subtler pairs of SFT samples."""
    rng = random.Random(f"variant-comparisons-{seed}")
    out = []
    for t in tasks:
        v = world.variants(t, seed)
        names = list(v)
        fin = [k != "unending" for k in names]  # the never-ending answer never emits EOS
        lab = labelers[rng.randrange(len(labelers))]
        out.append({"prompt_id": t.prompt_id, "user_id": t.user_id, "labeler": lab.name,
                    "prompt": render_prompt(tokenizer, t.instruction, t.context, fmt),
                    "responses": [v[k] for k in names],
                    "ranking": lab.rank(t.instruction, t.context, [v[k] for k in names], rng, task=t, finished=fin),
                    "finished": fin, "kinds": names})
    return out


def expected_agreement(world, records: Sequence[dict], a: Callable | object, b: Callable | object) -> float:
    """How often two judges pick the same winner, in expectation, over all distinct-response pairs of
    ``records``. A judge is a :class:`~rlhf_lite.world.Labeler` (a Bradley–Terry chooser) or a function
    ``scores(record) -> [K floats]`` that picks the higher score (ties: half)."""
    return agreement([pref_probs(world, r, a) for r in records], [pref_probs(world, r, b) for r in records])


def accuracy_against(world, records: Sequence[dict], judge: Callable, labelers) -> float:
    """Expected pairwise accuracy of ``judge`` (``scores(record) -> [K floats]``: a reward model, DPO's implicit
    reward) against ``labelers``' choices on the distinct-response pairs of ``records``: the mean over pairs and
    labelers of P(the labeler picks the pair's higher-scored response). The judge scores each record once."""
    probs = [pref_probs(world, r, judge) for r in records]
    return sum(agreement(probs, [pref_probs(world, r, lab) for r in records]) for lab in labelers) / len(labelers)


def agreement(pa: Sequence[list[float]], pb: Sequence[list[float]]) -> float:
    """Mean over pairs of P(both pick the first) + P(both pick the second), from each judge's P(first)."""
    total, n = 0.0, 0
    for xs, ys in zip(pa, pb):
        for x, y in zip(xs, ys):
            total += x * y + (1 - x) * (1 - y)
            n += 1
    return total / max(n, 1)


def distinct_pairs(rec: dict) -> list[tuple[int, int]]:
    """The index pairs (i, j), i < j, of a record's responses that differ (in text or in having ended)."""
    r, f = rec["responses"], rec.get("finished") or [True] * len(rec["responses"])
    return [(i, j) for i, j in itertools.combinations(range(len(r)), 2) if (r[i], f[i]) != (r[j], f[j])]


def pref_probs(world, rec: dict, judge) -> list[float]:
    """P(judge prefers i over j) for each distinct pair (i, j) of ``rec``."""
    pairs = distinct_pairs(rec)
    if isinstance(judge, Labeler):
        t = world.tasks_by_id[rec["prompt_id"]]
        s = [judge.score(t.instruction, t.context, r, f, task=t).total
             for r, f in zip(rec["responses"], rec["finished"])]
        return [prefer_prob(s[i], s[j], judge.temperature) for i, j in pairs]
    s = judge(rec)
    return [1.0 if s[i] > s[j] else 0.0 if s[i] < s[j] else 0.5 for i, j in pairs]


def agreement_matrix(world, records: Sequence[dict], labelers) -> list[list[float]]:
    """Expected agreement of every pair of ``labelers`` on the pairs of ``records`` (diagonal: each
    labeler against a fresh draw of their own noise)."""
    probs = [[pref_probs(world, r, lab) for r in records] for lab in labelers]  # each labeler scores once
    return [[agreement(pa, pb) for pb in probs] for pa in probs]


# ---------------------------------------------------------------------------------------------
# Real preference data (gpt2 profile): HH-RLHF and TRL's prompt/chosen/rejected
# ---------------------------------------------------------------------------------------------
def split_hh(chosen: str, rejected: str, where: str = "row") -> tuple[str, str, str]:
    """Split an HH-RLHF pair of full dialogues into (shared prompt, chosen reply, rejected reply).

    Both dialogues repeat the same conversation and differ only in the final Assistant turn. The
    prompt is everything up to and including the last ``"\\n\\nAssistant:"`` that both share.
    """
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{where}: field '{name}' must be non-empty text")
        if HH_ASSISTANT not in text:
            raise DataFormatError(f"{where}: field '{name}' has no {HH_ASSISTANT!r} turn; HH-RLHF dialogues alternate "
                                  f"{HH_HUMAN!r} and {HH_ASSISTANT!r}. For separate prompt/chosen/rejected columns use "
                                  "the TRL format")
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataFormatError(f"{where}: 'chosen' and 'rejected' share no conversation up to an Assistant turn; "
                              "they must be two replies to the same dialogue")
    cut += len(HH_ASSISTANT)
    prompt, c, r = chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip()
    if not c or not r:
        raise DataFormatError(f"{where}: the {'chosen' if not c else 'rejected'} reply after the shared prompt is "
                              "empty")
    for name, reply in (("chosen", c), ("rejected", r)):
        if HH_HUMAN in "\n\n" + reply or HH_ASSISTANT in "\n\n" + reply:
            raise DataFormatError(f"{where}: the two dialogues differ before their last Assistant turn (the {name} "
                                  "reply after the shared prompt contains further turns); a preference pair must be "
                                  "two replies to the same conversation")
    return prompt, c, r


def preference_records(rows: Sequence[dict], source: str) -> list[dict]:
    """Rows of HH-RLHF (``chosen``/``rejected`` dialogues) or TRL (``prompt``/``chosen``/``rejected``)
    format → comparison records with K = 2 (response 0 = chosen, ranking [0, 1]). Rows whose two replies are the
    same text carry no preference: they are dropped, with a warning that counts them."""
    out, same = [], 0
    for n, row in enumerate(rows):
        where = f"{source}, row {n}"
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: expected an object with 'chosen' and 'rejected', got {type(row).__name__}")
        missing = [f for f in ("chosen", "rejected") if f not in row]
        if missing:
            raise DataFormatError(f"{where}: missing field(s) {missing}; preference data needs 'chosen' and 'rejected' "
                                  f"(and optionally 'prompt'); found {sorted(row)}")
        if row.get("prompt") is not None:
            prompt, c, r = row["prompt"], row["chosen"], row["rejected"]
            for name, v in (("prompt", prompt), ("chosen", c), ("rejected", r)):
                if isinstance(v, list):
                    raise DataFormatError(f"{where}: field '{name}' is a list of messages (TRL's conversational "
                                          "format); "
                                          "render it to text first with tokenizer.apply_chat_template(..., "
                                          "tokenize=False)")
                if not isinstance(v, str) or not v.strip():
                    raise DataFormatError(f"{where}: field '{name}' must be non-empty text")
        else:
            prompt, c, r = split_hh(row["chosen"], row["rejected"], where)
        if c.strip() == r.strip():
            same += 1
            continue
        out.append({"prompt_id": str(row.get("id", n)), "user_id": None, "labeler": source, "prompt": prompt,
                    "responses": [c, r], "ranking": [0, 1], "finished": [True, True]})
    if same:
        warnings.warn(f"{source}: dropped {same} of {len(rows)} rows whose chosen and rejected replies are the same "
                      "text (no preference to learn from)", stacklevel=2)
    if not out:
        raise DataFormatError(f"{source}: no usable preference pairs (every row's chosen reply equals its rejected "
                              "one)")
    return out


def dialogue_turns(prompt: str) -> list[tuple[str, str]]:
    """An HH-RLHF prompt as (role, text) turns:
    ``"\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: Why?\\n\\nAssistant:"`` →
    ``[("Human", "Hi"), ("Assistant", "Hello"), ("Human", "Why?")]`` (the open Assistant turn at the end, which the
    reply fills, is left out)."""
    text = prompt.lstrip("\n")
    text = "\n\n" + text if text.startswith(("Human:", "Assistant:")) else prompt
    parts = re.split(r"\n\n(Human|Assistant):", text)  # ["", "Human", " Hi", "Assistant", " Hello", …]
    turns = [(role, text.strip()) for role, text in zip(parts[1::2], parts[2::2])]
    return turns[:-1] if turns and turns[-1] == ("Assistant", "") else turns


def in_policy_format(records: Sequence[dict], tokenizer, fmt: str = "alpaca") -> list[dict]:
    """Real preference data with its prompts rendered in the policy's prompt format (``render_prompt``), so that the
    reward model learns to score text laid out as the policy will write it in PPO. An HH-RLHF dialogue becomes its
    last human turn as the instruction and the turns before it as the context (``Human: …`` / ``Assistant: …``
    lines); a plain-text prompt (TRL format) becomes the instruction. ``tokenizer`` is only read by chat templates."""
    out = []
    for rec in records:
        turns = dialogue_turns(rec["prompt"])
        if turns and turns[-1][0] == "Human" and turns[-1][1]:
            instruction = turns[-1][1]
            context = "\n".join(f"{role}: {text}" for role, text in turns[:-1])
        else:
            instruction, context = rec["prompt"].strip(), ""
        out.append({**rec, "prompt": render_prompt(tokenizer, instruction, context, fmt)})
    return out


def load_preference_dataset(source: str = "hh-rlhf", split: str = "train") -> list[dict]:
    """Preference pairs as comparison records. ``source``: "hh-rlhf" (Anthropic/hh-rlhf from the Hub)
    or a local .json/.jsonl/.csv/.parquet file in HH-RLHF or TRL format; both load the same way."""
    if source == "hh-rlhf":
        name = "Anthropic/hh-rlhf"
        try:
            ds = load_dataset(name, split=split)
        except Exception as e:  # offline, DNS, 404: the same advice
            raise ConnectionError(f"could not load {name} from the Hugging Face Hub ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}). Without network, use TinyWorld's comparisons "
                                  "(RLHF_LITE_PROFILE=tiny) or pass a local file") from None
        return preference_records(list(ds), name)
    rows = read_rows(source, "preference data file")  # the same file reader as instruction data
    return preference_records([r for _, r in rows], str(Path(source)))

# ---------------------------------------------------------------------------------------------
# You are the labeler: a ranking session (headless) and its widget
# ---------------------------------------------------------------------------------------------
class RankingSession:
    """A person ranks K responses per prompt; every ranking is saved at once; agreement with the gold
    panel is kept as they go. Drive it with :meth:`submit` (tests, scripts) or :func:`ranking_widget`.

    ``items``: comparison records without a ranking (``prompt_id``, ``prompt``, ``responses``,
    ``finished``), e.g. from :func:`collect_comparisons`. Items already in ``store`` are skipped, so
    a session resumed after a crash continues where it stopped.
    """

    def __init__(self, world, items: Sequence[dict], store: RankingStore, labeler: str = "you"):
        self.world, self.store, self.labeler = world, store, labeler
        done = {r["prompt_id"] for r in store.load() if r.get("labeler") == labeler}
        self.items = [it for it in items if it["prompt_id"] not in done]
        self.n_done, self.pos = len(done), 0
        self.agree, self.n_pairs = 0.0, 0

    @property
    def current(self) -> dict | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def gold_scores(self, item: dict) -> list[float]:
        t = self.world.tasks_by_id[item["prompt_id"]]
        return [self.world.panel.gold_score(t.instruction, t.context, r, f, task=t)
                for r, f in zip(item["responses"], item["finished"])]

    def submit(self, ranking: Sequence[int | Sequence[int]]) -> dict:
        """Save the person's ranking of the current item (best first; a nested list is a tie) and move on.
        Returns ``{"saved", "agreement" (this item), "agreement_overall", "done", "left"}``."""
        item = self.current
        if item is None:
            raise IndexError("this session has no items left")
        rec = {k: item[k] for k in ("prompt_id", "user_id", "prompt", "responses", "finished") if k in item}
        rec.update(labeler=self.labeler, ranking=[list(g) if isinstance(g, (list, tuple)) else int(g) for g in ranking])
        validate_comparison(dict(rec), "your ranking")
        self.store.append(rec)
        gold = self.gold_scores(item)
        hits = [1.0 if gold[w] > gold[l] else 0.5 if gold[w] == gold[l] else 0.0 for w, l in ranking_to_pairs(ranking)]
        self.agree += sum(hits)
        self.n_pairs += len(hits)
        self.pos += 1
        self.n_done += 1
        return {"saved": str(self.store.path), "agreement": sum(hits) / len(hits) if hits else None,
                "agreement_overall": self.agree / self.n_pairs if self.n_pairs else None,
                "done": self.n_done, "left": len(self.items) - self.pos}

    def skip(self) -> None:
        self.pos += 1


def ranks_to_ranking(ranks: Sequence[int]) -> list[int | list[int]]:
    """Per-response ranks (1 = best; equal ranks = a tie) → a ranking best first: ``[2, 1, 2]`` → ``[1, [0, 2]]``."""
    out: list[int | list[int]] = []
    for r in sorted(set(ranks)):
        group = [i for i, x in enumerate(ranks) if x == r]
        out.append(group[0] if len(group) == 1 else group)
    return out


def ranking_widget(session: RankingSession):
    """The crowdworker interface in core ipywidgets (7.7 in Colab, 8 in JupyterLab): the prompt, K
    responses with a rank drop-down each (equal ranks = tie), or two buttons when K = 2; Submit saves
    at once and shows progress and your agreement with the gold panel."""
    import ipywidgets as w  # optional: only the widget needs it (Colab ships its own)

    title, body, status = w.HTML(), w.VBox(), w.HTML()
    bar = w.IntProgress(min=0, max=max(session.n_done + len(session.items), 1), value=session.n_done,
                        description="ranked")

    def box(text: str, finished: bool, label: str) -> str:
        tail = "" if finished else " <i style='color:#a33'>[cut off: no end-of-text]</i>"
        return (f"<div style='border:1px solid #ccc;padding:6px;margin:2px 0;white-space:pre-wrap'><b>{label}</b> "
                f"{html.escape(text) or '<i>(empty)</i>'}{tail}</div>")

    def after(result: dict) -> None:
        bar.value = result["done"]
        agree = result["agreement_overall"]
        status.value = (f"saved to <code>{html.escape(result['saved'])}</code> · {result['done']} ranked, "
                        f"{result['left']} left"
                        + (f" · your agreement with the gold panel: <b>{agree:.0%}</b> (labelers agree with each "
                           "other about 70 % of the time)" if agree is not None else ""))
        show()

    def show() -> None:
        item = session.current
        if item is None:
            title.value, body.children = "<b>All done — thank you!</b>", []
            return
        k = len(item["responses"])
        title.value = ("<pre style='white-space:pre-wrap;background:#f6f6f6;padding:6px'>"
                       f"{html.escape(item['prompt'])}</pre>")
        letters = [chr(65 + i) for i in range(k)]
        texts = [w.HTML(box(r, f, letters[i])) for i, (r, f) in enumerate(zip(item["responses"], item["finished"]))]
        skip = w.Button(description="Skip")
        skip.on_click(lambda _: (session.skip(), show()))
        if k == 2:
            a, b = w.Button(description="A is better", button_style="success"), w.Button(description="B is better",
                                                                                         button_style="success")
            a.on_click(lambda _: after(session.submit([0, 1])))
            b.on_click(lambda _: after(session.submit([1, 0])))
            body.children = texts + [w.HBox([a, b, skip])]
            return
        drops = [w.Dropdown(options=list(range(1, k + 1)), value=i + 1, description=f"rank of {letters[i]}")
                 for i in range(k)]
        submit = w.Button(description="Submit ranking", button_style="success")
        submit.on_click(lambda _: after(session.submit(ranks_to_ranking([d.value for d in drops]))))
        body.children = [w.HBox([t, d]) for t, d in zip(texts, drops)] + [w.HBox([submit, skip])]

    show()
    ui = w.VBox([w.HTML("<b>Rank the responses from best (1) to worst.</b> Equal ranks mean a tie."), title, body,
                 bar, status])
    ui.session = session  # tests and curious learners can reach the logic behind the buttons
    return ui
