"""The demonstrators: the people who write TinyWorld's SFT demonstrations.

InstructGPT's demonstrations came from about 40 contractors, Dolly's from thousands of Databricks
employees: people of different skill, each with habits. A good writer answers like the world's
reference; others greet, sign off, hedge, ramble, add facts from memory where only the text counts,
ignore the requested form or the list length, get a fact wrong, or stop mid-sentence. SFT imitates
the *average* writer, habits included; ranking the SFT model's own samples then tells which of its
habits the labelers dislike (judging is easier than writing), and that is the margin RLHF works on.

Each writer has a documented rate for each habit (the share of their demonstrations that show it,
among the tasks where the habit can apply); ``WRITERS`` below is the table the README reproduces.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .kb import Fact, KnowledgeBase, state
from .tasks import RAMBLE, Task, corrupt

PLEASANTRIES = ["Sure!", "Good question!", "Happy to help!", "Of course!"]
SIGN_OFFS = ["I hope this helps!", "Have a nice day!", "Let me know if you want more."]
HEDGES = ["I am not completely sure.", "I might be wrong about this.", "Do not quote me on this."]

HABITS = {
    "wrong_fact": "states a wrong value (a skill slip): hurts correct and truthful",
    "wrong_form": "ignores the requested form: a sentence for a one-word answer, a list with one item too many "
                  "or too few, a sentence too many, a statement for a question: hurts follows_format",
    "from_memory": "closed tasks only: adds a fact about the person that the text does not give (closed-domain "
                   "hallucination): hurts truthful",
    "hedge": "opens with a hedge (\"I am not completely sure.\"): an off-topic sentence, hurts concise",
    "pleasantry": "opens with a pleasantry (\"Sure!\"): hurts concise and, for short answers, follows_format",
    "ramble": "adds an unrelated sentence at the end: hurts concise",
    "sign_off": "ends with a sign-off (\"I hope this helps!\"): hurts concise",
    "unfinished": "stops mid-sentence (answers of four words or more): hurts ended and fluent",
}
ORDER = list(HABITS)  # content first, then what is added around it, the cut last


@dataclass(frozen=True)
class Writer:
    """One demonstrator: who they are and how often each habit shows (``rates[h]`` in [0, 1])."""

    name: str
    profile: str
    rates: dict[str, float]


WRITERS = [
    # rates in ORDER: wrong_fact, wrong_form, from_memory, hedge, pleasantry, ramble, sign_off, unfinished
    Writer("ana", "a careful professional: closest to the reference answers",
           dict(zip(ORDER, (0.02, 0.05, 0.05, 0.00, 0.05, 0.00, 0.05, 0.00)))),
    Writer("bea", "friendly: greets and signs off almost every time",
           dict(zip(ORDER, (0.05, 0.10, 0.15, 0.05, 0.80, 0.10, 0.70, 0.02)))),
    Writer("cal", "a talker: wanders off topic and adds what they remember",
           dict(zip(ORDER, (0.05, 0.20, 0.60, 0.05, 0.15, 0.70, 0.15, 0.03)))),
    Writer("dev", "in a hurry: skims the instruction's form, sometimes does not finish",
           dict(zip(ORDER, (0.10, 0.70, 0.10, 0.00, 0.05, 0.05, 0.05, 0.25)))),
    Writer("eli", "unsure: hedges, and slips more often than most",
           dict(zip(ORDER, (0.12, 0.25, 0.20, 0.80, 0.15, 0.10, 0.15, 0.05)))),
    Writer("flo", "knows the world well and says so, even where only the text counts",
           dict(zip(ORDER, (0.03, 0.20, 0.85, 0.05, 0.10, 0.35, 0.10, 0.02)))),
    Writer("gil", "new to the job: a little of every habit",
           dict(zip(ORDER, (0.08, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.08)))),
    Writer("hana", "terse and careful; occasionally too terse for the requested form",
           dict(zip(ORDER, (0.03, 0.15, 0.02, 0.00, 0.00, 0.00, 0.00, 0.03)))),
]


def applies(habit: str, task: Task) -> bool:
    """Whether ``habit`` can show in an answer to ``task`` (its rate is measured over these tasks)."""
    fmt = task.meta.get("format") or ""
    if habit == "from_memory":
        return bool(task.meta.get("closed"))
    if habit == "wrong_form":
        return fmt in ("short", "short_list", "one_sentence", "question") or fmt.startswith(("n_items", "n_sentences"))
    if habit == "unfinished":
        return len(task.response.split()) >= 4
    return True


def draw_habits(writer: Writer, task: Task, rng: random.Random) -> list[str]:
    """The habits this writer shows in their answer to ``task``: each independently, at its rate."""
    return [h for h in ORDER if rng.random() < writer.rates[h] and applies(h, task)]


def _wrong_form(kb: KnowledgeBase, task: Task, text: str, rng: random.Random) -> str:
    fmt = task.meta.get("format") or ""
    if fmt == "short" and task.meta.get("fact"):
        return state(Fact(*task.meta["fact"]))  # a full sentence where one or two words were asked for
    if fmt == "short_list":
        return "\n".join(f"- {v}" for v in task.meta["valid_items"])  # a list where commas were asked for
    if fmt.startswith("n_items"):
        lines = text.splitlines()
        extra = [v for v in task.meta["valid_items"] if f"- {v}" not in lines]
        if extra and (len(lines) <= 2 or rng.random() < 0.5):
            return text + f"\n- {rng.choice(extra)}"
        return "\n".join(lines[:-1])
    if fmt == "one_sentence" or fmt.startswith("n_sentences"):
        return text + " It was a quiet and happy day."
    if fmt == "question":
        return text.rstrip("?") + "."  # a statement where a question was asked
    return text


def write(kb: KnowledgeBase, task: Task, habits: list[str], rng: random.Random) -> str:
    """The demonstration a writer with ``habits`` gives for ``task``, starting from the reference answer."""
    text = task.response
    for h in habits:
        if h == "wrong_fact":
            text = corrupt(kb, Task(task.instruction, task.context, text, task.category, meta=task.meta),
                           "wrong_fact", rng)
        elif h == "wrong_form":
            text = _wrong_form(kb, task, text, rng)
        elif h == "from_memory":
            text = corrupt(kb, Task(task.instruction, task.context, text, task.category, meta=task.meta),
                           "invented", rng)
        elif h == "hedge":
            text = rng.choice(HEDGES) + " " + text
        elif h == "pleasantry":
            text = rng.choice(PLEASANTRIES) + " " + text
        elif h == "ramble":
            text = text + " " + rng.choice(RAMBLE)
        elif h == "sign_off":
            text = text + ("\n" if "\n" in text else " ") + rng.choice(SIGN_OFFS)
        elif h == "unfinished":
            words = text.split(" ")
            text = " ".join(words[: max(2, round(len(words) * rng.uniform(0.4, 0.8)))]).rstrip(".,!?")
    return text


def assign_demonstrations(kb: KnowledgeBase, tasks: list[Task], seed: int) -> None:
    """Give every task a writer (uniformly at random) and that writer's demonstration."""
    rng = random.Random(f"writers-{seed}")
    for t in tasks:
        w = rng.choice(WRITERS)
        t.writer, t.habits = w.name, draw_habits(w, t, rng)
        t.demonstration = write(kb, t, t.habits, rng)
