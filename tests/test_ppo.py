"""The PPO building blocks against values computed by hand (the loop arrives with issue 5)."""
import math

import pytest
import torch

from rlhf_lite.ppo import (AdaptiveKLController, FixedKLController, compute_gae, kl_penalized_rewards, masked_mean,
                           masked_whiten, ppo_policy_loss, ppo_value_loss)


def test_masked_mean_and_whiten_by_hand():
    x, m = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([2.0])
    # mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1: the padded 100 is ignored
    assert masked_whiten(x, m).tolist() == [pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)]
    assert masked_whiten(x, m, shift_mean=False).tolist() == [pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)]


def test_kl_penalized_rewards_by_hand_either_padding():
    lp = torch.tensor([[0.0, 0.5, -0.2, 9.0], [7.0, 7.0, 0.1, 0.3]])
    ref = torch.zeros(2, 4)
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0],   # prompt, two response tokens, padding after
                         [0.0, 0.0, 1.0, 1.0]])  # left-padded prompt, response at the end
    r = kl_penalized_rewards(torch.tensor([2.0, -1.0]), lp, ref, mask, beta=0.1)
    assert r[0].tolist() == pytest.approx([0.0, -0.05, 0.02 + 2.0, 0.0])  # the score lands on the last response token
    assert r[1].tolist() == pytest.approx([0.0, 0.0, -0.01, -0.03 - 1.0])
    with pytest.raises(ValueError, match="no response token"):
        kl_penalized_rewards(torch.zeros(1), lp[:1], ref[:1], torch.zeros(1, 4), 0.1)


def test_gae_by_hand_rows_of_different_length():
    # row 0: response at t = 0, 1 then padding; row 1: prompt at t = 0, response at t = 1, 2, 3
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 9.0, 9.0], [9.0, 0.1, 0.2, 0.3]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: δ1 = 1 + 0 − 0.2 = 0.8 (the value after the last token is 0, not the pad's 9); A1 = 0.8
    #        δ0 = 0 + 0.2 − 0.5 = −0.3; A0 = −0.3 + 0.5 · 0.8 = 0.1
    assert adv[0].tolist() == pytest.approx([0.1, 0.8, 0.0, 0.0])
    assert ret[0].tolist() == pytest.approx([0.6, 1.0, 0.0, 0.0])
    # row 1: δ3 = 1 − 0.3 = 0.7; δ2 = 0.3 − 0.2 = 0.1, A2 = 0.1 + 0.35 = 0.45; δ1 = 0.2 − 0.1 = 0.1, A1 = 0.1 + 0.225
    assert adv[1].tolist() == pytest.approx([0.0, 0.325, 0.45, 0.7])
    assert ret[1].tolist() == pytest.approx([0.0, 0.425, 0.65, 1.0])


def test_policy_loss_first_minibatch_and_clipping_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0, 5.0]])
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    loss, stats = ppo_policy_loss(lp, lp.clone(), adv, mask, clip_range=0.2)
    assert stats["ratio"] == pytest.approx(1.0) and stats["approx_kl"] == 0.0 and stats["clipfrac"] == 0.0
    assert loss.item() == pytest.approx(0.0)  # −mean(A) over the two response tokens
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))  # ratios 1.5 and 0.5 against old log-probs 0
    loss, stats = ppo_policy_loss(new, torch.zeros(1, 3), adv, mask, clip_range=0.2)
    # token 1 (A = 1): max(−1.5, −1.2) = −1.2; token 2 (A = −1): max(0.5, 0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert stats["clipfrac"] == 1.0
    assert stats["approx_kl"] == pytest.approx((0.5 * math.log(1.5) ** 2 + 0.5 * math.log(0.5) ** 2) / 2)


def test_value_loss_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    values, old = torch.tensor([[1.0, 0.0, 4.0]]), torch.tensor([[0.5, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_range_value=0.2)
    # token 1: (1 − 2)² = 1 vs (0.7 − 2)² = 1.69 -> 1.69; token 2: 1 vs 1 -> 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert stats["vf_clipfrac"] == 0.5


def test_kl_controllers_move_beta_the_right_way():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2
    assert c.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(current_kl=3.0, n_steps=100)  # error −0.5, clipped to −0.2
    assert c.value == pytest.approx(0.1 * (1 - 0.2 * 100 / 10000))
    c.update(current_kl=6.0, n_steps=100)  # on target: unchanged
    assert c.value == pytest.approx(0.1 * (1 - 0.2 * 100 / 10000))
    f = FixedKLController(0.05)
    f.update(100.0, 100)
    assert f.value == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
