"""Instruction tasks in Dolly's schema, Flan-style templates, InstructGPT's use-case mix, and the
corruptions (rude, rambling, wrong, invented, unending, badly formatted) that alignment must remove.

A task record is Dolly's ``{instruction, context, response, category}`` plus ``prompt_id``,
``user_id`` and ``meta``, the answer key the labelers grade against. ``task.to_dolly()`` gives the
four Dolly fields only.
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from typing import Callable

from .kb import (
    COLOURS,
    DIETS,
    HABITATS,
    JOBS,
    RELATIONS,
    TASTES,
    ClaimExtractor,
    Fact,
    KnowledgeBase,
    make_names,
    person_facts,
    state,
)

CATEGORIES = ["open_qa", "general_qa", "closed_qa", "information_extraction", "summarization", "brainstorming",
              "classification", "creative_writing"]

# InstructGPT (Ouyang et al. 2022, Table 1) API use-case distribution, mapped onto Dolly's categories:
# Generation 45.6 and Rewrite 6.6 -> creative_writing; Chat 8.4 and Other 3.5 -> general_qa.
INSTRUCTGPT_USE_CASES = {"Generation": 45.6, "Open QA": 12.4, "Brainstorming": 11.2, "Chat": 8.4, "Rewrite": 6.6,
                         "Summarization": 4.2, "Classification": 3.5, "Other": 3.5, "Closed QA": 2.6, "Extract": 1.9}
USE_CASE_TO_CATEGORY = {"Generation": "creative_writing", "Open QA": "open_qa", "Brainstorming": "brainstorming",
                        "Chat": "general_qa", "Rewrite": "creative_writing", "Summarization": "summarization",
                        "Classification": "classification", "Other": "general_qa", "Closed QA": "closed_qa",
                        "Extract": "information_extraction"}


def _instructgpt_mix() -> dict[str, float]:
    mix = dict.fromkeys(CATEGORIES, 0.0)
    total = sum(INSTRUCTGPT_USE_CASES.values())  # 99.9: the paper's percentages are rounded
    for use_case, pct in INSTRUCTGPT_USE_CASES.items():
        mix[USE_CASE_TO_CATEGORY[use_case]] += pct / total
    return mix


MIXES = {"instructgpt": _instructgpt_mix(), "uniform": dict.fromkeys(CATEGORIES, 1 / len(CATEGORIES))}
NOT_IN_CONTEXT = "The text does not say."
NOT_IN_CONTEXT_MARKERS = ["does not say", "doesn't say", "not mentioned", "does not mention", "no information"]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
MAX_FEW_SHOT_CHARS = 340  # a few-shot instruction stays under ~150 tokens of the TinyWorld tokenizer


@dataclass
class Task:
    """One prompt and its reference response, in Dolly's schema plus bookkeeping."""

    instruction: str
    context: str
    response: str
    category: str
    prompt_id: str = ""
    user_id: str = ""
    task_type: str = ""
    meta: dict = field(default_factory=dict)
    demonstration: str = ""
    """What the task's writer (a demonstrator, ``world.writers``) answered: the SFT target. ``response`` is
    the reference answer, the labelers' answer key and the upper bound."""
    writer: str = ""
    habits: list[str] = field(default_factory=list)

    def to_dolly(self) -> dict[str, str]:
        """Dolly's four fields; ``response`` is the human demonstration (the reference where there is none)."""
        return {"instruction": self.instruction, "context": self.context,
                "response": self.demonstration or self.response, "category": self.category}

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Task types. Each has >= 8 templates (Flan-style paraphrases) and a maker that draws the content.
# A maker returns (template fields, context, reference response, meta). meta keys used by labelers:
#   expected: strings the answer must contain; expect: "all" | "any"
#   format: None | "short" | "one_sentence" | "n_sentences:N" | "n_items:N" | "question"
#   closed: grade against the context's facts instead of the knowledge base
#   context_facts: the facts stated in the context (closed tasks)
#   topic: words that mark a sentence as on-topic; max_words: length a concise answer stays within
#   valid_items: acceptable list items (brainstorming)
# ---------------------------------------------------------------------------------------------
QUESTIONS = {  # relation -> ways to ask for it ({s} subject)
    "lives_in": ["Where does {s} live?", "In which town does {s} live?"],
    "job": ["What does {s} do for a living?", "What is {s}'s job?"],
    "favourite_colour": ["What is {s}'s favourite colour?", "Which colour does {s} like best?"],
    "favourite_food": ["What is {s}'s favourite food?", "What food does {s} love most?"],
    "pet": ["What pet does {s} have?", "Which animal does {s} keep as a pet?"],
    "age": ["How old is {s}?", "What is {s}'s age?"],
    "habitat": ["Where does the {s} live?", "In what place can you find the {s}?"],
    "eats": ["What does the {s} eat?", "What food does the {s} feed on?"],
    "river": ["Which river is {s} by?", "What river runs through {s}?"],
    "famous_food": ["What is {s} famous for?", "Which food is {s} known for?"],
}
QUESTION_CUES = {"lives_in": "live", "job": "do", "favourite_colour": "colour", "favourite_food": "food",
                 "pet": "pet", "age": "old", "habitat": "live", "eats": "eat", "river": "river",
                 "famous_food": "famous"}


def _short(v: str) -> str:
    return v[:1].upper() + v[1:] + "."


def make_open_qa(kb: KnowledgeBase, rng: random.Random):
    rel = rng.choice(list(QUESTIONS))
    subj = rng.choice(kb.people if rel in ("lives_in", "job", "favourite_colour", "favourite_food", "pet", "age")
                      else kb.animals if rel in ("habitat", "eats") else kb.towns)
    fact = Fact(subj, rel, kb.get(subj, rel))
    short = rng.random() < 0.3
    q = rng.choice(QUESTIONS[rel]).format(s=subj)
    fields = {"question": q + (" Answer in one or two words." if short else "")}
    meta = {"expected": [fact.value], "expect": "all", "format": "short" if short else None,
            "topic": [subj, fact.value], "max_words": 4 if short else 14, "fact": list(fact)}
    return fields, "", _short(fact.value) if short else state(fact), meta


def make_open_qa_inverted(kb: KnowledgeBase, rng: random.Random):
    """Input inversion (Flan): given the answer, write the question."""
    rel = rng.choice(["lives_in", "job", "favourite_colour", "favourite_food", "pet", "age"])
    subj = rng.choice(kb.people)
    fact = Fact(subj, rel, kb.get(subj, rel))
    meta = {"expected": [subj, QUESTION_CUES[rel]], "expect": "all", "format": "question", "topic": [subj],
            "max_words": 12, "inverted": True}
    return {"answer": state(fact)}, "", QUESTIONS[rel][0].format(s=subj), meta


def make_general_qa(kb: KnowledgeBase, rng: random.Random):
    kind = rng.choice(["person", "animal", "town"])
    subj = rng.choice({"person": kb.people, "animal": kb.animals, "town": kb.towns}[kind])
    facts = [f for f in kb.about(subj) if f.relation != "friend"]
    picked = rng.sample(facts, min(3, len(facts)))
    label = {"person": subj, "animal": "the " + subj, "town": subj}[kind]
    meta = {"expected": [subj], "expect": "all", "format": None, "topic": [subj] + [f.value for f in facts],
            "max_words": 40, "min_claims": 2}
    return {"subject": label}, "", " ".join(state(f) for f in picked), meta


def _visitor(kb: KnowledgeBase, rng: random.Random, n_facts: int) -> tuple[str, list[Fact]]:
    """A person who is *not* in the knowledge base: closed tasks can only be answered from the text."""
    name = make_names(rng, 1, "person", set(kb.people))[0]
    facts = person_facts(rng, name, kb.towns, kb.foods)
    return name, rng.sample(facts, n_facts)


def make_closed_qa(kb: KnowledgeBase, rng: random.Random):
    name, facts = _visitor(kb, rng, 4)
    ctx_facts = facts[:3]
    unanswerable = rng.random() < 0.25
    target = facts[3] if unanswerable else rng.choice(ctx_facts)
    context = " ".join(state(f, rng) for f in ctx_facts)
    q = rng.choice(QUESTIONS[target.relation]).format(s=name)
    if unanswerable:
        ref, expected = NOT_IN_CONTEXT, NOT_IN_CONTEXT_MARKERS
    else:
        ref, expected = state(target), [target.value]
    meta = {"expected": expected, "expect": "any", "format": None, "closed": True, "unanswerable": unanswerable,
            "context_facts": [list(f) for f in ctx_facts], "asked": [name, target.relation],
            "topic": [name, "text"] + [f.value for f in ctx_facts], "max_words": 14}
    return {"question": q}, context, ref, meta


def make_extraction(kb: KnowledgeBase, rng: random.Random):
    people = [_visitor(kb, rng, 3) for _ in range(rng.choice([2, 3]))]
    ctx_facts = [f for _, fs in people for f in fs]
    rng.shuffle(ctx_facts)
    context = " ".join(state(f, rng) for f in ctx_facts)
    rel_counts: dict[str, int] = {}
    for f in ctx_facts:
        rel_counts[f.relation] = rel_counts.get(f.relation, 0) + 1
    rel = sorted(rel_counts, key=lambda r: (-rel_counts[r], r))[0]
    what = {"lives_in": "towns", "job": "jobs", "favourite_colour": "colours", "favourite_food": "foods",
            "pet": "animals", "age": "ages"}[rel]
    values = list(dict.fromkeys(f.value for f in ctx_facts if f.relation == rel))
    meta = {"expected": values, "expect": "all", "format": "short_list", "closed": True,
            "context_facts": [list(f) for f in ctx_facts], "topic": values, "max_words": 4 * len(values) + 2,
            "valid_items": values}
    answer = ", ".join(v[:1].upper() + v[1:] if i == 0 else v for i, v in enumerate(values)) + "."
    return {"what": what}, context, answer, meta


EVENTS = ["walked to the market", "baked bread for the neighbours", "fixed a broken fence", "went fishing at dawn",
          "painted the front door", "sang at the spring fair", "planted beans in the garden", "visited an old friend"]


def make_summarization(kb: KnowledgeBase, rng: random.Random):
    name, facts = _visitor(kb, rng, 3)
    job = next((f.value for f in facts if f.relation == "job"), None) or rng.choice(JOBS)
    town = next((f.value for f in facts if f.relation == "lives_in"), None) or rng.choice(kb.towns)
    facts = [f for f in facts if f.relation not in ("job", "lives_in")]
    event = rng.choice(EVENTS)
    ctx_facts = [Fact(name, "job", job), Fact(name, "lives_in", town)] + facts
    sentences = [state(f, rng) for f in ctx_facts] + [f"One morning, {name.split()[0]} {event}.",
                                                      "It was a quiet and happy day."]
    context = " ".join(sentences[:2] + sentences[2:-2] + sentences[-2:])
    ref = f"{name}, a {job} from {town}, {event}."
    meta = {"expected": [name, job, town], "expect": "all", "format": "one_sentence", "closed": True,
            "context_facts": [list(f) for f in ctx_facts], "topic": [name, name.split()[0], job, town],
            "max_words": 18}
    return {}, context, ref, meta


def make_summarization_inverted(kb: KnowledgeBase, rng: random.Random):
    """Input inversion: given a one-sentence summary, write the short text it summarises."""
    name, _ = _visitor(kb, rng, 1)
    job, town, event = rng.choice(JOBS), rng.choice(kb.towns), rng.choice(EVENTS)
    summary = f"{name}, a {job} from {town}, {event}."
    ctx_facts = [Fact(name, "job", job), Fact(name, "lives_in", town)]
    ref = f"{state(ctx_facts[0])} {state(ctx_facts[1])} One morning, {name.split()[0]} {event}."
    meta = {"expected": [name, job, town], "expect": "all", "format": None, "closed": True, "inverted": True,
            "context_facts": [list(f) for f in ctx_facts], "topic": [name, name.split()[0], job, town],
            "max_words": 40}
    return {"summary": summary}, "", ref, meta


def make_brainstorming(kb: KnowledgeBase, rng: random.Random):
    by_value: list[tuple[str, list[str]]] = []
    for hab in HABITATS:
        by_value.append((f"animals that live in the {hab}", [a for a in kb.animals if kb.get(a, "habitat") == hab]))
    for taste in TASTES:
        by_value.append((f"foods that taste {taste}", [f for f in kb.foods if kb.get(f, "taste") == taste]))
    for diet in DIETS:
        by_value.append((f"animals that eat {diet}", [a for a in kb.animals if kb.get(a, "eats") == diet]))
    by_value.append(("jobs people have", list(JOBS)))
    by_value.append(("colours", list(COLOURS)))
    choices = [(d, v) for d, v in by_value if len(v) >= 2]
    desc, valid = rng.choice(choices)
    n = min(len(valid), rng.choice([2, 3, 3, 4]))
    items = rng.sample(valid, n)
    meta = {"expected": [], "expect": "all", "format": f"n_items:{n}", "valid_items": valid, "topic": valid,
            "max_words": 4 * n + 2}
    return {"n": NUMBER_WORDS[n], "things": desc}, "", "\n".join(f"- {x}" for x in items), meta


def make_classification(kb: KnowledgeBase, rng: random.Random):
    if rng.random() < 0.5:
        a = rng.choice(kb.animals)
        fact, options = Fact(a, "animal_class", kb.get(a, "animal_class")), "a mammal, a bird or an amphibian"
        item = "the " + a
    else:
        f = rng.choice(kb.foods)
        fact, options = Fact(f, "taste", kb.get(f, "taste")), ", ".join(TASTES[:-1]) + " or " + TASTES[-1]
        item = f
    short = rng.random() < 0.5
    meta = {"expected": [fact.value], "expect": "all", "format": "short" if short else None,
            "topic": [fact.subject, fact.value], "max_words": 3 if short else 12, "fact": list(fact)}
    return {"item": item, "options": options}, "", _short(fact.value) if short else state(fact), meta


SETTINGS = ["in winter", "at the market", "on a rainy day", "at night", "by the river", "at the spring fair",
            "in the morning", "on a long walk"]


def make_creative_writing(kb: KnowledgeBase, rng: random.Random):
    p = rng.choice(kb.people)
    pet, town, food = (kb.get(p, r) for r in ("pet", "lives_in", "favourite_food"))
    first, setting, n = p.split()[0], rng.choice(SETTINGS), rng.choice([2, 3])
    lines = [f"{p} lives in {town}.", f"{p} has a pet {pet}.",
             f"One day {setting}, {first} and the {pet} shared some {food}."]
    ref = " ".join(lines[-n:])
    meta = {"expected": [first, pet], "expect": "all", "format": f"n_sentences:{n}",
            "topic": [p, first, pet, town, food, setting], "max_words": 16 * n}
    return {"person": p, "pet": pet, "n": NUMBER_WORDS[n], "setting": setting}, "", ref, meta


def make_letter(kb: KnowledgeBase, rng: random.Random):
    p = rng.choice(kb.people)
    friend = rng.choice(kb.values(p, "friend"))
    town, food = kb.get(p, "lives_in"), kb.get(p, "favourite_food")
    first, ffirst, setting = p.split()[0], friend.split()[0], rng.choice(SETTINGS)
    ref = f"Dear {ffirst}, I miss you here in {town}. Come and share some {food} with me {setting}. Love, {first}."
    meta = {"expected": [ffirst, first], "expect": "all", "format": None,
            "topic": [p, friend, first, ffirst, town, food, setting], "max_words": 40}
    return {"person": p, "friend": friend, "setting": setting}, "", ref, meta


@dataclass(frozen=True)
class TaskType:
    name: str
    category: str
    make: Callable
    templates: tuple[str, ...]
    example_format: str  # how a solved example is shown in a few-shot prompt: {instruction} / {response}
    inverted: bool = False  # input inversion (Flan): the source task with its input and output swapped


_Q = "Q: {instruction}\nA: {response}"
TASK_TYPES: dict[str, TaskType] = {t.name: t for t in [
    TaskType("attribute_question", "open_qa", make_open_qa, (
        "{question}", "Answer the following question. {question}", "Question: {question}",
                                                             "Please answer this: {question}",
        "I was wondering about something. {question}", "Can you help me? {question}", "Quick question: {question}",
        "Here is a question about our world. {question}", "Tell me the answer. {question}"), _Q),
    TaskType("question_from_answer", "open_qa", make_open_qa_inverted, (
        "Write a question whose answer is: {answer}", "Here is an answer: \"{answer}\" What was the question?",
        "Make up the question that this sentence answers. {answer}", "Answer: {answer} Question?",
        "Turn this statement into a question about it: {answer}",
                                                                        "What question would you ask to get this "
                                                                        "answer? {answer}",
        "Invert this: given the answer \"{answer}\", write the question.",
                                                                        "Someone replied \"{answer}\" What did they "
                                                                        "ask?"), _Q,
        inverted=True),
    TaskType("describe", "general_qa", make_general_qa, (
        "Tell me about {subject}.", "What do you know about {subject}?", "Describe {subject}.",
        "Give me some facts about {subject}.", "I want to learn about {subject}. What can you tell me?",
        "Share a few things you know about {subject}.", "Who or what is {subject}?",
                                                         "Write a few facts about {subject}."), _Q),
    TaskType("reading_question", "closed_qa", make_closed_qa, (
        "Read the text and answer: {question}", "Using only the text, answer this question. {question}",
        "Based on the passage, {question_lower}", "{question} Use the text to answer.",
                                                               "Answer from the context: {question}",
        "Look at the text below. {question}", "According to the passage, {question_lower}",
        "Here is a short text. {question} If the text does not say, say so."), _Q),
    TaskType("extract_values", "information_extraction", make_extraction, (
        "List all the {what} mentioned in the text, separated by commas.",
                                                                           "Extract the {what} from the passage as a "
                                                                           "list.",
        "Which {what} appear in the text? Give them separated by commas.",
                                                                           "Pull out every one of the {what} named in "
                                                                           "the text.",
        "Find the {what} in this passage and list them.",
                                                                           "From the text, extract the {what}. "
                                                                           "Separate them with commas.",
        "What {what} does the text mention? List them.", "Give me a comma-separated list of the {what} in the text."),
             _Q),
    TaskType("summarize", "summarization", make_summarization, (
        "Summarize the text in one sentence.", "Write a one-sentence summary of this passage.",
        "Give me the gist of the text in a single sentence.", "In one sentence, what is this text about?",
        "Condense the passage into one sentence.", "Sum up the story below in one sentence.",
        "TL;DR in one sentence, please.", "Briefly summarize this in a single sentence."), "{instruction}\n{response}"),
    TaskType("expand_summary", "summarization", make_summarization_inverted, (
        "Here is a one-sentence summary: {summary} Write the short text it summarizes.",
        "Expand this summary into three sentences: {summary}",
                                                                              "Write a short passage that this summary "
                                                                              "could describe. {summary}",
        "Turn the summary into a longer text. {summary}", "Summary: {summary} Now write the full text.",
        "Reverse summarization: {summary}", "Write the text behind this one-line summary: {summary}",
        "Given this gist, write a short story in three sentences: {summary}"), "{instruction}\n{response}",
             inverted=True),
    TaskType("list_things", "brainstorming", make_brainstorming, (
        "List {n} {things}.", "Name {n} {things}.", "Give me {n} {things}.", "Can you think of {n} {things}?",
        "Brainstorm {n} {things}, one per line.", "I need {n} {things}. Any ideas?", "Write down {n} {things}.",
        "Come up with {n} {things}."), _Q),
    TaskType("classify", "classification", make_classification, (
        "Is {item} {options}?", "Classify {item}: {options}?", "Which is it for {item}: {options}?",
        "Put {item} into one of these groups: {options}.", "Decide whether {item} is {options}.",
        "{item}: {options}?", "Tell me which one fits {item}: {options}.", "Sort {item} into a class: {options}."), _Q),
    TaskType("short_story", "creative_writing", make_creative_writing, (
        "Write a short story about {person} and their pet {pet} {setting}, in {n} sentences.",
        "Tell a {n}-sentence tale about {person} and the {pet} {setting}.",
                                                                        "Write {n} sentences about {person}'s pet "
                                                                        "{pet} {setting}.",
        "Compose a tiny story, {n} sentences long, starring {person} and a {pet} {setting}.",
        "In {n} sentences, describe a day {setting} for {person} and the {pet}.",
        "Write a little story ({n} sentences) about {person} {setting}.",
        "Create a {n}-sentence story featuring {person} and their {pet} {setting}.",
        "Imagine {person} with their {pet} {setting}. Write {n} sentences."), _Q),
    TaskType("letter", "creative_writing", make_letter, (
        "Write a short letter from {person} to {friend}, inviting them over {setting}.",
        "Compose a note from {person} to their friend {friend} about meeting {setting}.",
        "{person} wants to see {friend} {setting}. Write the letter.",
                                                         "Draft a friendly letter: {person} writes to {friend}, "
                                                         "{setting}.",
        "Write a message from {person} asking {friend} to visit {setting}.",
                                                         "Pretend you are {person}. Write to {friend} about {setting}.",
        "Write a warm invitation from {person} to {friend} for {setting}.",
                                                         "A letter, please: from {person} to {friend}, {setting}."),
             _Q),
]}
CATEGORY_TASK_TYPES = {c: [t for t in TASK_TYPES.values() if t.category == c] for c in CATEGORIES}


def make_task(kb: KnowledgeBase, rng: random.Random, category: str, few_shot_prob: float = 0.15) -> Task:
    """Draw one task of ``category``: a random task type, template and (sometimes) few-shot examples."""
    ttype = rng.choice(CATEGORY_TASK_TYPES[category])
    fields, context, response, meta = ttype.make(kb, rng)
    template_id = rng.randrange(len(ttype.templates))
    if "question" in fields:
        fields["question_lower"] = fields["question"][:1].lower() + fields["question"][1:]
    instruction = ttype.templates[template_id].format(**fields)
    meta.update(template_id=template_id, n_shots=0)
    if rng.random() < few_shot_prob and not context:  # few-shot: solved examples of the same task type first
        shots: list[str] = []
        for _ in range(rng.choice([1, 2])):
            f2, _, r2, _ = ttype.make(kb, rng)
            if "question" in f2:
                f2["question_lower"] = f2["question"][:1].lower() + f2["question"][1:]
            shot = ttype.example_format.format(instruction=ttype.templates[template_id].format(**f2), response=r2)
            if len(instruction) + sum(len(x) + 2 for x in shots) + len(shot) > MAX_FEW_SHOT_CHARS:
                break  # keep prompts inside a small model's context
            shots.append(shot)
        if shots:
            instruction = "Here are some examples.\n\n" + "\n\n".join(shots) + "\n\nNow your turn.\n" + instruction
            meta["n_shots"] = len(shots)
    return Task(instruction, context, response, category, task_type=ttype.name, meta=meta)


# ---------------------------------------------------------------------------------------------
# Corruptions: the behaviours web text teaches and alignment must remove.
# ---------------------------------------------------------------------------------------------
RUDE_PHRASES = ["Look it up yourself.", "What a stupid question.", "Who cares?", "Nobody asked.",
                "Stop bothering me.", "Figure it out on your own.", "Ugh, fine.", "That is a dumb thing to ask."]
RUDE_MARKERS = [p.rstrip(".?").lower() for p in RUDE_PHRASES]
RAMBLE = ["Anyway, I once went to the market and forgot what I wanted.",
          "By the way, the weather was strange last week.",
          "That reminds me of a long walk I took as a child.",
          "My cousin says the best soup is the one you make yourself.",
          "Speaking of which, I should really fix my roof.", "I also think the old mill by the river needs paint."]
LOOP = ["and then it went on", "and on and on", "and so it kept going", "again and again"]
CORRUPTIONS = ["wrong_fact", "rude", "rambling", "invented", "unending", "bad_format"]


def _swap_value(kb: KnowledgeBase, task: Task, rng: random.Random) -> str:
    """Replace one stated value with a wrong value of the same kind: a confidently wrong answer."""
    text = task.response
    if task.meta.get("unanswerable"):  # guessing instead of saying the text does not say
        name, rel = task.meta["asked"]
        pool = [str(a) for a in range(18, 81)] if rel == "age" else kb.value_set(RELATIONS[rel][1])
        return state(Fact(name, rel, rng.choice(pool)))
    claims = ClaimExtractor(kb).claims(text)
    if claims:
        c = rng.choice(claims)
        kind = RELATIONS[c.relation][1]
        ages = [str(a) for a in range(18, 81)]
        pool = ages if kind == "number" else kb.people if kind == "person" else kb.value_set(kind)
        wrong = rng.choice([v for v in pool if v != c.value])
        if state(c) in text:
            return text.replace(state(c), state(Fact(c.subject, c.relation, wrong)), 1)
        return text.replace(c.value, wrong, 1)
    avoid = {v.lower() for v in task.meta.get("valid_items", []) + task.meta.get("expected", [])}
    firsts = sorted({p.split()[0] for p in kb.people})
    for e in task.meta.get("expected", []):  # e.g. a letter to the wrong friend
        if e in firsts and e in text:
            return text.replace(e, rng.choice([f for f in firsts if f not in task.meta["expected"]]), 1)
    for kind in ("class", "taste", "diet", "habitat", "region", "river", "town", "animal", "food", "colour", "job",
                 "person", "number"):
        ages = [str(a) for a in range(18, 81)]
        pool = kb.people if kind == "person" else ages if kind == "number" else kb.value_set(kind)
        present = [v for v in pool if re.search(r"(?<![A-Za-z])" + re.escape(v) + r"(?![a-z])", text, re.IGNORECASE)]
        if present:
            v = present[0]
            options = [w for w in pool if w.lower() not in avoid and w != v]
            fallback = [w for w in kb.value_set("animal") + kb.value_set("food") if w.lower() not in avoid]
            wrong = rng.choice(options or fallback)
            i = text.lower().index(v.lower())
            wrong = wrong[:1].upper() + wrong[1:] if text[i].isupper() else wrong
            return text[:i] + wrong + text[i + len(v):]
    return text


def corrupt(kb: KnowledgeBase, task: Task, kind: str, rng: random.Random) -> str:
    """A worse version of ``task.response``: one of :data:`CORRUPTIONS`."""
    ref = task.response
    if kind == "wrong_fact":
        return _swap_value(kb, task, rng)
    if kind == "rude":
        return rng.choice(RUDE_PHRASES) + (" " + ref if rng.random() < 0.5 else "")
    if kind == "rambling":
        return ref + " " + " ".join(rng.sample(RAMBLE, 3))
    if kind == "invented":  # one extra claim about the subject: unsupported by the context, or false in the world
        subj = task.meta.get("topic", [""])[0]
        if " " not in subj or not subj[:1].isupper():
            subj = rng.choice(kb.people)
        known = {f[1] for f in task.meta.get("context_facts", []) if f[0] == subj}
        rel = rng.choice([r for r in RELATIONS_KIND if r not in known] or list(RELATIONS_KIND))
        truth = None if task.meta.get("closed") else kb.get(subj, rel)
        pool = [str(a) for a in range(18, 81)] if rel == "age" else kb.value_set(RELATIONS_KIND[rel])
        return ref + " " + state(Fact(subj, rel, rng.choice([v for v in pool if v != truth])))
    if kind == "unending":
        body = ref.rstrip(".")
        return body + " " + " ".join(rng.choice(LOOP) for _ in range(rng.randint(6, 12)))
    if kind == "bad_format":
        fmt = task.meta.get("format") or ""
        if fmt.startswith("n_items"):
            extra = [v for v in task.meta["valid_items"] if v not in ref] or task.meta["valid_items"]
            return ref + "\n" + "\n".join(f"- {x}" for x in extra[:2]) + "\n- and more"
        if fmt in ("short", "short_list"):
            return "Well, let me think about it. The answer is " + ref[:1].lower() + ref[1:] + " I hope that helps you."
        if fmt == "question":
            return ref.rstrip("?") + "."
        return " ".join([ref] * 3)  # no format was asked for: the degenerate form is repetition
    raise ValueError(f"unknown corruption {kind!r}; choose from {CORRUPTIONS}")


RELATIONS_KIND = {"favourite_colour": "colour", "pet": "animal", "favourite_food": "food", "age": "number"}
