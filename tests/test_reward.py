import math
from dataclasses import replace

import pytest
import torch

from rlhf_lite.config import LoRAConfig, RewardConfig, get_profile
from rlhf_lite.data import encode_response
from rlhf_lite.models import last_token_index, load_base, pad_batch, position_ids_from_mask
from rlhf_lite.reward import (
    RewardModel,
    build_reward_model,
    load_reward_model,
    normalize_rewards,
    pairwise_loss,
    ranking_loss,
    rm_accuracy,
    save_reward_model,
    score_responses,
    split_pairs,
    train_reward_model,
    variance_split,
)


def lsig(x):  # −log σ(x) by hand
    return math.log(1 + math.exp(-x))


def test_pairwise_loss_by_hand():
    got = pairwise_loss(torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0]))
    assert got.item() == pytest.approx((lsig(1) + lsig(0) + lsig(-3)) / 3, rel=1e-6)
    big = pairwise_loss(torch.tensor([0.0]), torch.tensor([200.0]))  # stays finite far from 0
    assert big.item() == pytest.approx(200.0)
    with pytest.raises(ValueError, match=r"two \[B\] tensors"):
        pairwise_loss(torch.zeros(2, 1), torch.zeros(2, 1))


def test_ranking_loss_by_hand():
    r = torch.tensor([0.0, 1.0, 3.0])
    # best -> worst 2, 1, 0: pairs (2,1) (2,0) (1,0) with margins 2, 3, 1
    assert ranking_loss(r, [2, 1, 0]).item() == pytest.approx((lsig(2) + lsig(3) + lsig(1)) / 3, rel=1e-6)
    # the reverse order: every margin negative
    assert ranking_loss(r, [0, 1, 2]).item() == pytest.approx((lsig(-1) + lsig(-3) + lsig(-2)) / 3, rel=1e-6)
    # a tie between 0 and 1 leaves two pairs
    assert ranking_loss(r, [2, [0, 1]]).item() == pytest.approx((lsig(3) + lsig(2)) / 2, rel=1e-6)
    # K = 2 is the pairwise loss
    assert ranking_loss(r[:2], [1, 0]).item() == pytest.approx(pairwise_loss(r[1:2], r[:1]).item())
    with pytest.raises(ValueError, match="orders 2 responses but there are 3"):
        ranking_loss(r, [0, 1])


def test_index_helpers_by_hand():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 0]
    assert last_token_index(left).tolist() == [3, 3]
    assert position_ids_from_mask(left).tolist() == [[0, 0, 1, 2], [0, 0, 0, 0]]
    b = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert b["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.fixture(scope="module")
def tiny():
    return load_base("tiny")


def test_reward_read_at_eos_with_either_padding(tiny):
    lm, tok = tiny
    rm = build_reward_model(lm, RewardConfig(lora=False))
    rm.eval()
    long = encode_response(tok, "### Instruction:\nName a fruit.\n\n### Response:\n", "An apple, of course.", True, 256)
    short = encode_response(tok, "### Instruction:\nHi\n\n### Response:\n", "Hello.", True, 256)
    assert long[-1] == tok.eos_token_id == tok.pad_token_id  # the reward lands on EOS, although EOS == pad
    alone = [rm(**pad_batch([s], tok.pad_token_id)).item() for s in (long, short)]
    for side in ("left", "right"):
        b = pad_batch([long, short], tok.pad_token_id, side)
        got = rm(**b)
        assert got.tolist() == pytest.approx(alone, abs=1e-5), side
        values = rm.token_values(**b)  # [B, T]: the reward is the value at the last real token
        assert values[1, last_token_index(b["attention_mask"])[1]].item() == pytest.approx(alone[1], abs=1e-5)
    # without EOS (an unfinished response) the reward is read one token earlier, and differs
    unfinished = rm(**pad_batch([long[:-1]], tok.pad_token_id)).item()
    assert abs(unfinished - alone[0]) > 1e-4


def test_scalar_head_and_init(tiny):
    lm, _ = tiny
    rm = RewardModel(lm, seed=0)
    assert rm.head.out_features == 1 and rm.head.weight.shape == (1, 192)
    assert rm.head.weight.std().item() == pytest.approx(1 / math.sqrt(193), rel=0.2)  # N(0, 1/(d+1))
    assert rm.head.bias.item() == 0.0
    assert torch.equal(RewardModel(lm, seed=0).head.weight, rm.head.weight)  # seeded


def test_lora_and_full_parameter_counts():
    lora = build_reward_model(load_base("tiny")[0], RewardConfig(lora=True), LoRAConfig(r=4))
    full = build_reward_model(load_base("tiny")[0], RewardConfig(lora=False))
    n_train = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert n_train(lora) == 4 * 4 * (768 + 384 + 960 + 960) + 193  # adapters + the head (192 weights + bias)
    assert n_train(full) == sum(p.numel() for p in full.parameters())


@pytest.fixture(scope="module")
def smoke_rm_run(world):
    """The smoke profile's reward model trained on rankings of reference-vs-corruption answers (a strong
    signal that a few dozen steps can learn), measured on held-out users' prompts."""
    from rlhf_lite.feedback import variant_comparisons
    from rlhf_lite.stages import sft_checkpoint

    cfg = get_profile("smoke").reward
    lm, tok = load_base(str(sft_checkpoint(get_profile("smoke"), progress=False)))
    train = variant_comparisons(world, world.splits["train"][:96], world.panel.train, tok)
    val = variant_comparisons(world, world.splits["validation"][:16], world.panel.train, tok, seed=1)
    rm = build_reward_model(lm, cfg)
    before = rm_accuracy(rm, tok, world, val, world.panel.held_out)
    history = train_reward_model(rm, tok, train, cfg, val, progress=False)
    return rm, tok, train, val, before, history


@pytest.mark.slow
def test_smoke_rm_beats_chance_on_held_out_labelers(world, smoke_rm_run):
    rm, tok, _, val, before, history = smoke_rm_run
    after = rm_accuracy(rm, tok, world, val, world.panel.held_out)
    assert after > 0.58 and after > before + 0.05, (before, after)
    assert history["eval"][-1]["loss"] < history["eval"][0]["loss"]


@pytest.mark.slow
def test_normalize_and_save_load_roundtrip(world, smoke_rm_run, tmp_path):
    rm, tok, train, _, _, _ = smoke_rm_run
    tasks = world.splits["train"][:8]
    prompts = [f"### Instruction:\n{t.instruction}\n\n### Response:\n" for t in tasks]
    normalize_rewards(rm, tok, prompts, [t.response for t in tasks])
    scores = score_responses(rm, tok, prompts, [t.response for t in tasks])
    assert sum(scores) / len(scores) == pytest.approx(0.0, abs=1e-5)
    from rlhf_lite.stages import sft_checkpoint

    save_reward_model(rm, tmp_path / "rm", base=sft_checkpoint(get_profile("smoke"), progress=False))
    rm2, tok2 = load_reward_model(tmp_path / "rm")
    assert score_responses(rm2, tok2, prompts, [t.response for t in tasks]) == pytest.approx(scores, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="not a saved reward model"):
        load_reward_model(tmp_path)


@pytest.mark.slow
def test_shuffled_pairs_ablation_sees_the_same_pairs(smoke_rm_run):
    _, tok, train, _, _, _ = smoke_rm_run
    train = train[:4]
    cfg = replace(get_profile("smoke").reward, eval_every=10**6)
    grouped = train_reward_model(build_reward_model(load_base("tiny")[0], cfg), tok, train, cfg, progress=False)
    pairs = split_pairs(train)
    assert len(pairs) == grouped["pairs"] == 4 * 21 and all(len(p["responses"]) == 2 for p in pairs)
    cfg = replace(cfg, grouped=False)
    shuffled = train_reward_model(build_reward_model(load_base("tiny")[0], cfg), tok, train, cfg, progress=False)
    assert len(shuffled["train"]) == len(grouped["train"])  # same number of steps
    assert grouped["responses_forwarded"] == sum(len(r["responses"]) for r in train)  # K per prompt
    assert shuffled["responses_forwarded"] == 2 * grouped["pairs"]  # 2 per pair


def test_nan_loss_names_the_setting(tiny):
    lm, tok = tiny
    cfg = RewardConfig(lora=False)
    rm = build_reward_model(load_base("tiny")[0], cfg)
    recs = [{"prompt": "### Instruction:\nHi\n\n### Response:\n", "responses": ["Hello.", "Go away."],
             "ranking": [0, 1],
             "finished": [True, True]}] * 2
    with torch.no_grad():
        rm.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="RewardConfig.lr"):
        train_reward_model(rm, tok, recs, cfg, progress=False)


def test_variance_split_by_hand():
    # prompt means 2 and 6 (overall 4): within = (1+1+1+1)/4 = 1, between = (4+4+4+4)/4 = 4
    v = variance_split([[1.0, 3.0], [5.0, 7.0]])
    assert v["within"] == pytest.approx(1.0) and v["between"] == pytest.approx(4.0)
    assert v["baseline_share"] == pytest.approx(0.8)
    # unequal group sizes: weighted by answers; the two parts add up to the population variance
    groups = [[0.0, 1.0, 2.0], [4.0]]
    v = variance_split(groups)
    flat = [x for g in groups for x in g]
    total = sum((x - sum(flat) / 4) ** 2 for x in flat) / 4
    assert v["within"] + v["between"] == pytest.approx(total) and v["within"] == pytest.approx(2 / 4)
