"""Numbers that notebook prose quotes about the course's own setup are checked against the code that sets it up,
so that changing a default cannot leave a sentence behind."""
import json
import re
from pathlib import Path

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


def test_committed_notebooks_show_no_progress_bars():
    """A progress bar saved in a notebook reads "0%" to everyone who opens the file without a kernel (widgets
    are not rendered there): committed executions run with TQDM_DISABLE=1."""
    bar = re.compile(r"\d+%\|")
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                text = "".join(out.get("text", [])) + "".join(out.get("data", {}).get("text/plain", []))
                assert not bar.search(text), f"{path.name}: a progress bar in the output of a cell: {text[:80]!r}"
