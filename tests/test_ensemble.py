import pytest
import torch

from rlhf_lite.models import last_token_index, load_base, pad_batch
from rlhf_lite.reward import RewardEnsemble, RewardModel, combine_rewards, load_reward_ensemble
from rlhf_lite.rollout import score_and_features


def test_combine_rewards_by_hand():
    s = torch.tensor([[1.0, 3.0], [2.0, -1.0]])  # [B=2, K=2]
    assert combine_rewards(s, "mean").tolist() == [2.0, 0.5]
    assert combine_rewards(s, "min").tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="choose one of mean, min"):
        combine_rewards(s, "max")


@pytest.fixture(scope="module")
def members():
    """Two reward models whose bodies and heads both differ, so a member read from the wrong slice shows."""
    a_lm, tok = load_base("tiny")
    b_lm, _ = load_base("tiny")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in b_lm.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return RewardModel(a_lm, seed=0).eval(), RewardModel(b_lm, seed=1).eval(), tok


def test_ensemble_combines_every_member_where_ppo_reads_it(members):
    a, b, tok = members
    seqs = [tok.encode("Mira asked for tea."), tok.encode("The river runs past the old mill in the north.")]
    batch = pad_batch(seqs, tok.pad_token_id, side="left")
    with torch.no_grad():
        ra, rb = a(**batch), b(**batch)
        assert (ra - rb).abs().min() > 1e-3  # the members disagree
        for how, want in (("mean", (ra + rb) / 2), ("min", torch.minimum(ra, rb))):
            ens = RewardEnsemble([a, b], how)
            assert torch.allclose(ens(**batch), want, atol=1e-5)
            h = ens.hidden(**batch)  # [B, T, 2d]: both members' features, the critic's input
            assert h.shape == (2, batch["input_ids"].size(1), 2 * a.head.in_features) == (*h.shape[:2],
                                                                                       ens.head.in_features)
            last = h[torch.arange(2), last_token_index(batch["attention_mask"])]  # [B, 2d]
            assert torch.allclose(ens.head(last).squeeze(-1), want, atol=1e-5)
            # PPO's rollout: the score at the last token and the features before each response token
            scores, feats = score_and_features(ens, batch["input_ids"], batch["attention_mask"], prompt_len=3)
            assert torch.allclose(scores, want, atol=1e-5) and feats.shape[-1] == 2 * a.head.in_features
    assert ens.head.weight.device == a.head.weight.device
    with pytest.raises(ValueError, match="choose one of mean, min"):
        RewardEnsemble([a, b], "max")
    with pytest.raises(ValueError, match="at least one reward model"):
        RewardEnsemble([])


def test_an_ensemble_needs_two_saved_reward_models(tmp_path):
    with pytest.raises(ValueError, match="at least two reward models"):
        load_reward_ensemble([tmp_path])
