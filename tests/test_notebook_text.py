"""Numbers that notebook prose quotes about the course's own setup are checked against the code that sets it up,
so that changing a default cannot leave a sentence behind."""
import json
import re
from pathlib import Path

import pytest

from rlhf_lite.config import get_profile
from rlhf_lite.world import build_world

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def markdown(name: str, cell_id: str) -> str:
    nb = json.loads((NOTEBOOKS / name).read_text())
    (cell,) = [c for c in nb["cells"] if c.get("id") == cell_id]
    return "".join(cell["source"])


def test_the_one_picture_quotes_the_tiny_profile():
    text = markdown("00_tour.ipynb", "rlhf-one-picture")
    row = next(line for line in text.splitlines() if line.strip().startswith("TinyWorld:"))
    numbers = [int(x.replace(",", "")) for x in re.findall(r"\d[\d,]*", row)]
    tiny = get_profile("tiny")
    n_train = len(build_world(tiny.world.seed, tiny.world.n_prompts, tiny.world.mix).splits["train"])
    assert numbers == [n_train, tiny.reward.n_prompts, tiny.reward.k_min, tiny.reward.k_max, tiny.ppo.steps,
                       tiny.ppo.batch_size], row


def _outputs(path: Path):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        for out in cell.get("outputs", []):
            yield i, "".join(out.get("text", [])) + "".join(out.get("data", {}).get("text/plain", []))


def test_committed_notebooks_show_no_progress_bars():
    """A progress bar saved in a notebook reads "0%" to everyone who opens the file without a kernel (widgets
    are not rendered there): committed executions run with TQDM_DISABLE=1."""
    bar = re.compile(r"\d+%\|")
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for _, text in _outputs(path):
            assert not bar.search(text), f"{path.name}: a progress bar in the output of a cell: {text[:80]!r}"


def test_committed_outputs_read_well_without_a_kernel():
    """What a reader of the committed notebooks sees (GitHub, nbconvert, JupyterLab before a kernel starts): a
    widget's static fallback instead of its repr, samples without replacement or control characters (shown as ▯ by
    rlhf_lite.course.display.readable), and no absolute path of the machine that executed the notebook."""
    problems = {"a widget's repr": re.compile(r"\b(?:VBox|HBox|IntProgress)\(children=|\bOutput\(\)"),
                "a replacement character": re.compile("\ufffd"),
                "a control character": re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"),
                "an absolute path": re.compile(r"(?:/work/|/home/|/root/|/tmp/|/content/)")}
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for i, text in _outputs(path):
            for what, pattern in problems.items():
                hit = pattern.search(text)
                context = text[max(0, hit.start() - 60):hit.end() + 20] if hit else ""
                assert not hit, f"{path.name} cell {i}: {what} in the output: {context!r}"


NUMBER = re.compile(r"(?<![\w.])[−+-]?\d[\d,]*\.\d+")


def _decimals(text: str) -> list[str]:
    """The decimal numbers of a text (0.791, 59.4, −0.406, 69,651.0), as written."""
    return [m.group().replace("−", "-").replace(",", "") for m in NUMBER.finditer(text)]


def unquoted_numbers(path: Path, cell_id: str, constants=()) -> list[str]:
    """The decimal numbers of a markdown cell that its notebook's outputs do not print, either as such or as the
    difference of two numbers one output prints (a sentence may say "+0.035" for 0.826 − 0.791). ``constants``:
    numbers the sentence takes from the setup, not from an output (a β, say)."""
    cells = json.loads(path.read_text())["cells"]
    (cell,) = [c for c in cells if c.get("id") == cell_id]
    outputs = [[abs(float(x)) for x in _decimals(text)] for _, text in _outputs(path)]
    printed = {v for out in outputs for v in out}
    missing = []
    for x in _decimals("".join(cell["source"])):
        value, places = abs(float(x)), len(x.split(".")[1])
        if x.lstrip("+-") in constants or value in printed:
            continue
        diffs = {round(abs(a - b), places) for out in outputs for a in out for b in out}  # within one output
        if round(value, places) not in diffs:
            missing.append(x)
    return missing


READINGS = [  # (notebook, markdown cell that reads its outputs, numbers it takes from the setup rather than an output)
    ("02_sft_lora.ipynb", "7576fb15", ()),
    ("04_reward_model.ipynb", "7cf445cc", ()),
    ("04_reward_model.ipynb", "d1a9c0e3", ()),
    ("07_beyond_ppo.ipynb", "kl-reading", ("0.04",)),
    ("07_beyond_ppo.ipynb", "what-we-found", ()),
    ("08_trl_bridge.ipynb", "c5b45f28", ()),
    ("08_trl_bridge.ipynb", "what-we-found", ()),
]


@pytest.mark.parametrize("notebook,cell_id,constants", READINGS, ids=[f"{r[0][:2]}-{r[1]}" for r in READINGS])
def test_the_prose_that_reads_an_output_quotes_it(notebook, cell_id, constants):
    """Sentences written from an execution ("What this run says") must not outlive the next one."""
    assert unquoted_numbers(NOTEBOOKS / notebook, cell_id, constants=set(constants)) == []


CITED = {  # numbers the prose takes from a paper or a library (cited beside them), not from an output
    "00_tour.ipynb": {"45.6", "12.4", "11.2", "8.4", "6.6", "4.2", "3.5",  # InstructGPT Table 1, the use-case mix
                      "72.6", "1.5"},  # InstructGPT §3.4: labelers agreed on 72.6 ± 1.5 % of comparisons
    "03_human_feedback.ipynb": {"72.6", "1.5"},
    "04_reward_model.ipynb": {"72.4", "69.6", "72.6"},  # InstructGPT's reward-model and labeler agreement
    "06_evaluation.ipynb": {"77.3", "1.3"},  # InstructGPT's held-out labelers' agreement, 77.3 ± 1.3 %
    "08_trl_bridge.ipynb": {"1.10"},  # the TRL release that dropped PPOTrainer
}
ARITHMETIC = {  # numbers the prose computes from printed ones, with how
    ("03_human_feedback.ipynb", "answer-2"): {"1.5"},  # 6 comparisons / 4 answers read, printed in section 2
    ("06_evaluation.ipynb", "answer-2"): {"1.78"},  # log 15 − 14/15, the formula of section 4
}
SECTION = re.compile(r"§[\d.]*[–-]?$")  # "§3.5", and the second number of "§3.2–3.4"


def test_every_number_in_the_prose_is_printed_or_cited():
    """00–08 quote no result they do not compute: every decimal number in a markdown cell is printed by the
    notebook's own outputs (or is the difference of two numbers one output prints), names a paper's section, or
    is a figure from a paper or a library listed in CITED. Results measured elsewhere are in docs/results.md."""
    problems = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            text = "".join(cell["source"])
            sections = {m.group().replace("−", "-").replace(",", "") for m in NUMBER.finditer(text)
                        if SECTION.search(text[:m.start()])}
            allowed = CITED.get(path.name, set()) | ARITHMETIC.get((path.name, cell["id"]), set()) | sections
            missing = [x for x in unquoted_numbers(path, cell["id"]) if x.lstrip("+-") not in allowed]
            if missing:
                problems.append(f"{path.name} cell {cell['id']}: {missing}")
    assert not problems, "numbers no output prints:\n" + "\n".join(problems)


def test_what_we_found_is_short():
    """A notebook's closing findings: at most 150 words, at most two numbers to a sentence."""
    found = 0
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            if cell["cell_type"] != "markdown" or not text.startswith("## What we found"):
                continue
            found += 1
            body = text.removeprefix("## What we found")
            assert len(body.split()) <= 150, f"{path.name}: 'What we found' has {len(body.split())} words"
            for sentence in re.split(r"(?<=[.!?])\s+|\n- ", body):
                numbers = re.findall(r"(?<![\w.])[−+-]?\d[\d,]*(?:\.\d+)?", sentence)
                assert len(numbers) <= 2, f"{path.name}: more than two numbers in {sentence.strip()!r}"
    assert found >= 1
