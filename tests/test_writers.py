"""The demonstrators: each habit shows at its documented rate and lowers the panel's score."""
import random
import statistics

import pytest

from rlhf_lite.world import WRITERS
from rlhf_lite.world.writers import HABITS, ORDER, applies, draw_habits, write


def test_every_writer_documents_every_habit():
    assert len(WRITERS) >= 6
    assert len({w.name for w in WRITERS}) == len(WRITERS)
    for w in WRITERS:
        assert list(w.rates) == ORDER == list(HABITS) and w.profile
        assert all(0.0 <= r <= 1.0 for r in w.rates.values())


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.name)
def test_each_habit_shows_at_its_documented_rate(world, writer):
    """Draws on tasks where the habit applies: the share is within 3 points of the documented rate. 8,000 draws
    (σ ≤ 0.6 points) rather than 2,000 (σ up to 1.1 points): with 64 writer-habit rates, 2,000 draws would miss
    by more than 3 points somewhere by chance alone in about one seed of three."""
    rng = random.Random(f"rates-{writer.name}")
    for habit in ORDER:
        tasks = [t for t in world.tasks if applies(habit, t)]
        drawn = [habit in draw_habits(writer, tasks[i % len(tasks)], rng) for i in range(8000)]
        assert sum(drawn) / len(drawn) == pytest.approx(writer.rates[habit], abs=0.03), habit


def test_each_habit_lowers_the_panel_score(world):
    """For every habit, over tasks where it applies, the answer with the habit scores below the reference."""
    rng = random.Random(0)
    for habit in ORDER:
        tasks = [t for t in world.splits["train"] if applies(habit, t)][:60]
        drops = []
        for t in tasks:
            text = write(world.kb, t, [habit], rng)
            drops.append(world.panel.gold_score(t.instruction, t.context, t.response, True, task=t)
                         - world.panel.gold_score(t.instruction, t.context, text, True, task=t))
        # lower on average and on most tasks (a length-loving labeler may like a sign-off under a short list)
        assert statistics.mean(drops) > 0.02, (habit, statistics.mean(drops))
        assert sum(d > 0 for d in drops) >= 0.8 * len(drops), habit


def test_demonstrations_are_deterministic_and_worse_than_references(world):
    from rlhf_lite.world import build_world

    again = build_world(world.seed, len(world.tasks), world.mix)
    assert [t.demonstration for t in again.tasks] == [t.demonstration for t in world.tasks]
    train = world.splits["train"]
    assert {t.writer for t in train} == {w.name for w in WRITERS}
    demo = statistics.mean(world.panel.gold_score(t.instruction, t.context, t.demonstration, True, task=t)
                           for t in train)
    ref = statistics.mean(world.panel.gold_score(t.instruction, t.context, t.response, True, task=t) for t in train)
    assert ref - demo > 0.05
    by = {w.name: statistics.mean(world.panel.gold_score(t.instruction, t.context, t.demonstration, True, task=t)
                                  for t in train if t.writer == w.name) for w in WRITERS}
    careful = {"ana", "hana"}  # the two careful writers come out on top
    assert min(by[w] for w in careful) > max(v for w, v in by.items() if w not in careful)
