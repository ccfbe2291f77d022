import json
import os
import subprocess
import sys
import warnings

import pytest

from rlhf_lite.data import DataFormatError
from rlhf_lite.feedback import (
    RankingSession,
    RankingStore,
    agreement_matrix,
    expected_agreement,
    load_preference_dataset,
    ranking_to_pairs,
    ranking_widget,
    ranks_to_ranking,
    read_comparisons,
    split_hh,
)


def rec(i=0, k=3, ranking=None):
    return {"prompt_id": f"p{i}", "user_id": "u0", "labeler": "ada",
            "prompt": f"### Instruction:\nQ{i}\n\n### Response:\n",
            "responses": [f"answer {j}" for j in range(k)], "ranking": ranking or list(range(k)),
            "finished": [True] * k}


def test_ranking_to_pairs_by_hand():
    assert ranking_to_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]
    assert len(ranking_to_pairs(list(range(9)))) == 36  # C(9, 2)
    assert ranking_to_pairs([2, [0, 1]]) == [(2, 0), (2, 1)]  # the tie (0, 1) is dropped
    assert ranking_to_pairs([[0, 1, 2]]) == []
    with pytest.raises(ValueError, match="more than once"):
        ranking_to_pairs([0, 1, 0])
    assert ranks_to_ranking([2, 1, 2]) == [1, [0, 2]]
    assert ranks_to_ranking([3, 1, 2]) == [1, 2, 0]


def test_store_roundtrip_and_validation(tmp_path):
    store = RankingStore(tmp_path / "c.jsonl")
    store.append(rec(0))
    store.extend([rec(1), rec(2, k=4, ranking=[3, [0, 2], 1])])
    got = store.load()
    assert [r["prompt_id"] for r in got] == ["p0", "p1", "p2"] and got[2]["ranking"] == [3, [0, 2], 1]
    with pytest.raises(DataFormatError, match="'ranking'.*exactly once"):
        store.append(rec(3, ranking=[0, 0, 1]))
    bad = rec(4)
    del bad["responses"]
    with pytest.raises(DataFormatError, match="missing field 'responses'"):
        store.append(bad)
    assert len(store) == 3  # nothing half-written


def test_store_survives_crash_mid_write(tmp_path):
    path = tmp_path / "c.jsonl"
    # a child process saves two rankings, then dies halfway through writing the third
    code = ("import os, json, sys\nfrom rlhf_lite.feedback import RankingStore\n"
            f"s = RankingStore({str(path)!r})\n"
            f"s.append({rec(0)!r}); s.append({rec(1)!r})\n"
            f"f = open({str(path)!r}, 'a'); f.write(json.dumps({rec(2)!r})[:25]); f.flush(); os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    with pytest.warns(UserWarning, match=r"c.jsonl, line 3: skipped an incomplete last record"):
        assert [r["prompt_id"] for r in read_comparisons(path)] == ["p0", "p1"]
    with pytest.warns(UserWarning, match=r"line 3: incomplete last record"):
        store = RankingStore(path)  # reopening cuts the torn line off …
    store.append(rec(3))  # … so the next record starts on a line of its own
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["prompt_id"] for r in store.load()] == ["p0", "p1", "p3"]


def test_broken_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n{oops\n" + json.dumps(rec(1)) + "\n")
    with pytest.raises(DataFormatError, match=r"c.jsonl, line 2: invalid JSON"):
        read_comparisons(path)


def test_split_hh_dialogue():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: An apple."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: No."
    prompt, c, r = split_hh(chosen, rejected)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant:"
    assert (c, r) == ("An apple.", "No.")
    # replies that share a first word must not eat into the prompt
    prompt, c, r = split_hh("\n\nHuman: Q\n\nAssistant: An apple.", "\n\nHuman: Q\n\nAssistant: An orange.")
    assert prompt.endswith("Assistant:") and (c, r) == ("An apple.", "An orange.")


def test_preference_files_hh_and_trl_load_the_same(tmp_path):
    hh = [{"chosen": "\n\nHuman: Name a fruit.\n\nAssistant: An apple.",
           "rejected": "\n\nHuman: Name a fruit.\n\nAssistant: No."}]
    trl = [{"prompt": "\n\nHuman: Name a fruit.\n\nAssistant:", "chosen": "An apple.", "rejected": "No."}]
    (tmp_path / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hh))
    (tmp_path / "trl.json").write_text(json.dumps(trl))
    a, b = load_preference_dataset(str(tmp_path / "hh.jsonl")), load_preference_dataset(str(tmp_path / "trl.json"))
    for r in (a[0], b[0]):
        assert (r["prompt"], r["responses"], r["ranking"]) == (trl[0]["prompt"], ["An apple.", "No."], [0, 1])


@pytest.mark.parametrize("row, message", [
    ({"chosen": "\n\nHuman: Q\n\nAssistant: A"}, r"row 0: missing field\(s\) \['rejected'\]"),
    ({"chosen": "Q? A", "rejected": "Q? B"}, r"row 0: field 'chosen' has no '\\n\\nAssistant:' turn"),
    ({"prompt": "Q", "chosen": "A", "rejected": 3}, r"row 0: field 'rejected' must be non-empty text"),
    ({"prompt": "Q", "chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"},
     r"row 0: field 'chosen' is a list"),
    ({"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: R\n\nAssistant: B"}, "share no conversation"),
])
def test_bad_preference_rows(tmp_path, row, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataFormatError, match=message):
        load_preference_dataset(str(p))


def test_hh_hub_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="Anthropic/hh-rlhf.*RLHF_LITE_PROFILE=tiny"):
        load_preference_dataset("hh-rlhf")


def _items(world, n=3):
    out = []
    for t in world.splits["validation"][:n]:
        v = world.variants(t)
        out.append({"prompt_id": t.prompt_id, "user_id": t.user_id, "prompt": t.instruction,
                    "responses": [v["reference"], v["rude"], v["wrong_fact"]], "finished": [True, True, True]})
    return out


def test_ranking_session_headless(world, tmp_path):
    store = RankingStore(tmp_path / "you.jsonl")
    s = RankingSession(world, _items(world), store)
    first = s.submit([0, 2, 1])
    assert first["done"] == 1 and first["left"] == 2 and store.load()[0]["ranking"] == [0, 2, 1]
    gold = s.gold_scores(_items(world)[0])
    want = sum(gold[w] > gold[l] for w, l in [(0, 2), (0, 1), (2, 1)]) / 3
    assert first["agreement"] == pytest.approx(want)
    s.submit([[0, 1], 2])  # a tie: only two pairs count
    assert s.n_pairs == 5
    # a new session on the same file (after a crash) resumes with the unranked item
    s2 = RankingSession(world, _items(world), RankingStore(tmp_path / "you.jsonl"))
    assert s2.n_done == 2 and s2.current["prompt_id"] == _items(world)[2]["prompt_id"]


def test_ranking_widget_clicks_save(world, tmp_path):
    pytest.importorskip("ipywidgets")
    items = _items(world, 2)
    items[1] = {**items[1], "responses": items[1]["responses"][:2], "finished": [True, False]}  # K = 2: A/B buttons
    ui = ranking_widget(RankingSession(world, items, RankingStore(tmp_path / "w.jsonl")))
    body = ui.children[2]
    drops = [row.children[1] for row in body.children[:3]]
    drops[0].value, drops[1].value, drops[2].value = 3, 1, 2
    submit = body.children[3].children[0]
    submit.click()
    assert ui.session.store.load()[0]["ranking"] == [1, 2, 0]
    assert "cut off" in body.children[1].value  # the unfinished response is marked
    body.children[2].children[1].click()  # "B is better"
    assert ui.session.store.load()[1]["ranking"] == [1, 0]
    assert "All done" in ui.children[1].value


def test_agreement_matrix_diagonal_and_symmetry(world):
    items = [{**it, "ranking": [0, 1, 2]} for it in _items(world, 4)]
    labs = world.panel.labelers[:3]
    m = agreement_matrix(world, items, labs)
    assert all(abs(m[i][j] - m[j][i]) < 1e-12 for i in range(3) for j in range(3))
    assert all(0.5 <= m[i][j] <= 1 for i in range(3) for j in range(3))
    assert expected_agreement(world, items, lambda r: [0.0, 0.0, 0.0], labs[0]) == 0.5  # no opinion: a coin

    def gold(r):
        t = world.tasks_by_id[r["prompt_id"]]
        return [world.panel.gold_score(t.instruction, t.context, x, f, task=t) for x,
                f in zip(r["responses"], r["finished"])]

    assert expected_agreement(world, items, gold, labs[0]) > m[0][1]  # the panel's mean beats a second noisy labeler


def _ranking_writer(path: str, tag: str, ack_fd: int) -> None:
    """A forked writer for the SIGKILL test: appends records forever and, after each ``append`` returns, writes
    the record's id as a line to ``ack_fd`` (what it reported saved)."""
    store = RankingStore(path)
    os.write(ack_fd, b"ready\n")
    for i in range(100000):
        store.append({"prompt_id": f"{tag}-{i}", "prompt": "Q" * (i % 300 + 1), "responses": ["a" * i, "b"],
                      "ranking": [0, 1]})
        os.write(ack_fd, f"{tag}-{i}\n".encode())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks its writers")
def test_store_loses_no_acknowledged_record_under_sigkill(tmp_path):
    """Two writers on one file, killed with SIGKILL at random moments, many times: every record a writer reported
    saved is in the file, and the file always loads. The writers are forked from this process (which has imported
    the package already), so a trial costs a fraction of a second instead of two interpreter start-ups."""
    import multiprocessing
    import random
    import time

    path, fork = tmp_path / "c.jsonl", multiprocessing.get_context("fork")
    rng, acked = random.Random(0), set()
    for trial in range(8):
        pipes = [os.pipe() for _ in range(2)]
        procs = [fork.Process(target=_ranking_writer, args=(str(path), f"w{trial}{k}", w)) for k, (_, w) in
                 enumerate(pipes)]
        for p in procs:
            p.start()
        readers = []
        for r, w in pipes:
            os.close(w)  # the writer holds the only write end: its death closes the pipe
            readers.append(os.fdopen(r, encoding="utf-8"))
            assert readers[-1].readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        for p in procs:
            p.kill()  # SIGKILL, possibly in the middle of a write
        for p, f in zip(procs, readers):
            lines = f.read().split("\n")
            f.close()
            acked |= {line for line in lines[:-1] if line}  # the last piece may be an id cut off mid-write
            p.join()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn tail is expected; it is cut off when the store opens
            saved = {r["prompt_id"] for r in RankingStore(path).load()}
        assert acked <= saved, sorted(acked - saved)[:5]
    assert len(acked) > 100


def test_second_round_prompts_are_the_unranked_or_all(world):
    from dataclasses import replace

    from rlhf_lite.config import get_profile
    from rlhf_lite.policy_stages import second_round_prompts

    prof = get_profile("smoke")
    train = world.splits["train"]
    assert 0 < prof.reward.n_prompts < len(train)
    assert second_round_prompts(prof, world) == train[prof.reward.n_prompts:]  # what round 1 left
    assert second_round_prompts(prof, world, "all") == train  # round 1's prompts again too
    every = replace(prof, reward=replace(prof.reward, n_prompts=len(train)))
    with pytest.raises(ValueError, match="every training prompt.*prompts='all'"):
        second_round_prompts(every, world)
    assert second_round_prompts(every, world, "all") == train
    with pytest.raises(ValueError, match="'unranked'.*'all'"):
        second_round_prompts(prof, world, "first")


def test_hh_dialogues_in_the_policy_prompt_format():
    from rlhf_lite.feedback import dialogue_turns, in_policy_format

    two = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Why is the sky blue?\n\nAssistant:"
    assert dialogue_turns(two) == [("Human", "Hi there"), ("Assistant", "Hello!"), ("Human", "Why is the sky blue?")]
    assert dialogue_turns("Human: One?\n\nAssistant:") == [("Human", "One?")]  # no leading blank line
    recs = in_policy_format([{"prompt": two, "responses": ["a", "b"]},
                             {"prompt": "Write a poem.", "responses": ["a", "b"]}], None)
    assert recs[0]["prompt"] == ("### Instruction:\nWhy is the sky blue?\n\n### Context:\nHuman: Hi there\n"
                                 "Assistant: Hello!\n\n### Response:\n")
    assert recs[1]["prompt"] == "### Instruction:\nWrite a poem.\n\n### Response:\n"  # TRL's plain prompt
    assert recs[0]["responses"] == ["a", "b"]  # only the prompt changes
