import math

import pytest
import torch

from algorithms.logprobs import masked_mean, sequence_logprobs, token_entropy, token_logprobs
from algorithms.losses import (
    aggregate_loss,
    clip_stats,
    clipped_surrogate,
    grpo_loss,
    gspo_loss,
    importance_log_ratio,
)


def test_token_logprobs_by_hand() -> None:
    # Two-token vocabulary, logits (0, ln 3): probabilities 1/4, 3/4.
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    lp = token_logprobs(logits, torch.tensor([[1]]))
    assert torch.allclose(lp, torch.tensor([[math.log(0.75)]]))
    # Temperature 2 halves the logits: (0, ln 3 / 2) -> p1 = sqrt3 / (1 + sqrt3).
    lp_t = token_logprobs(logits, torch.tensor([[1]]), temperature=2.0)
    s3 = math.sqrt(3.0)
    assert torch.allclose(lp_t, torch.tensor([[math.log(s3 / (1 + s3))]]))


def test_token_entropy_by_hand() -> None:
    # p = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4); uniform over 2 tokens: ln 2.
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]])
    h = token_entropy(logits)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(h, torch.tensor([[expected, math.log(2.0)]]))


def test_masked_mean_ignores_padding() -> None:
    v = torch.tensor([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(masked_mean(v, m, dim=-1), torch.tensor([1.5, 4.0]))
    assert torch.allclose(masked_mean(v, m), torch.tensor(7.0 / 3.0))


def test_sequence_logprobs_sum_and_length() -> None:
    # -inf in padding must not leak: sums -3 (2 tokens) and -0.5 (1 token).
    lp = torch.tensor([[-1.0, -2.0, -math.inf], [-0.5, -math.inf, -math.inf]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    total, length = sequence_logprobs(lp, m)
    assert torch.equal(total, torch.tensor([-3.0, -0.5])) and torch.equal(length, torch.tensor([2.0, 1.0]))


# ---------------------------------------------------------------- importance ratios


def test_importance_log_ratio_levels_by_hand() -> None:
    # Sequence 0: token log-ratios 0.1, 0.3 (mean 0.2); sequence 1: 0.6 then padding (7.0, ignored).
    logp = torch.tensor([[0.1, 0.3], [0.6, 7.0]])
    old = torch.zeros(2, 2)
    mask = torch.tensor([[1, 1], [1, 0]])
    token = importance_log_ratio(logp, old, mask, "token")
    assert torch.allclose(token, torch.tensor([[0.1, 0.3], [0.6, 0.0]]))
    seq = importance_log_ratio(logp, old, mask, "sequence")
    assert seq.shape == (2, 1) and torch.allclose(seq, torch.tensor([[0.2], [0.6]]))
    seq_tok = importance_log_ratio(logp, old, mask, "sequence_token")
    assert torch.allclose(seq_tok[0], torch.tensor([0.2, 0.2])) and torch.isclose(seq_tok[1, 0], torch.tensor(0.6))
    with pytest.raises(ValueError):
        importance_log_ratio(logp, old, mask, "bogus")


def test_clipped_surrogate_regions_by_hand() -> None:
    # eps_low 0.2, eps_high 0.28 (DAPO's clip-higher). Ratios e^x:
    #   token a: r = 1.25 (<= 1.28), A = +1 -> unclipped, loss -1.25
    #   token b: r = 1.30 (> 1.28),  A = +1 -> high-clipped, loss -1.28
    #   token c: r = 0.70 (< 0.8),   A = -1 -> low-clipped, loss +0.8 (min(-0.7, -0.8) = -0.8)
    #   token d: r = 0.70,           A = +1 -> not clipped (the unclipped term is smaller), loss -0.7
    ratios = torch.tensor([[1.25, 1.30], [0.70, 0.70]])
    adv = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    s = clipped_surrogate(torch.log(ratios), adv, 0.2, 0.28)
    assert torch.allclose(s.per_token, torch.tensor([[-1.25, -1.28], [0.8, -0.7]]))
    assert s.high.tolist() == [[False, True], [False, False]]
    assert s.low.tolist() == [[False, False], [True, False]]
    stats = clip_stats(s, torch.ones(2, 2))
    assert stats["clip/low_frac"] == 0.25 and stats["clip/high_frac"] == 0.25 and stats["clip/frac"] == 0.5


def test_grpo_on_policy_loss_and_gradient() -> None:
    # With ratio 1 the loss value is -mean(A) and d loss / d logp_t = -A / (n_i * B).
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, 0.0]], requires_grad=True)
    old = logp.detach().clone()
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, stats = grpo_loss(logp, old, adv, mask)
    assert torch.isclose(loss, torch.tensor(-0.5))  # -(2 + -1) / 2
    loss.backward()
    expected = torch.tensor([[-2 / 6, -2 / 6, -2 / 6], [1 / 4, 1 / 4, 0.0]])
    assert torch.allclose(logp.grad, expected)
    assert stats["clip/frac"] == 0.0


def test_grpo_clipping_by_hand() -> None:
    # ratio = e^0.5 ~ 1.6487 > 1.2 with A = 1: clipped term 1.2 is the min -> loss -1.2,
    # and no gradient flows through the clipped token.
    logp = torch.tensor([[0.5]], requires_grad=True)
    loss, stats = grpo_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    assert torch.isclose(loss, torch.tensor(-1.2))
    loss.backward()
    assert logp.grad.abs().sum() == 0
    assert stats["clip/frac"] == 1.0 and stats["clip/high_frac"] == 1.0
    # With A = -1 the unclipped term -1.6487 is the min -> loss +1.6487, gradient e^0.5.
    logp2 = torch.tensor([[0.5]], requires_grad=True)
    loss2, _ = grpo_loss(logp2, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    assert torch.isclose(loss2, torch.tensor(math.exp(0.5)))
    loss2.backward()
    assert torch.isclose(logp2.grad, torch.tensor([[math.exp(0.5)]]))


def test_gspo_sequence_ratio_by_hand() -> None:
    # Sequence 0: token log-ratios 1e-4 and 3e-4 (mean 2e-4), padding ignored;
    # s = e^2e-4 is inside [1-3e-4, 1+4e-4], A = 1 -> term s.
    # Sequence 1: log-ratio 1e-3 -> s = e^1e-3 > 1+4e-4, A = 1 -> clipped to 1.0004.
    logp = torch.tensor([[1e-4, 3e-4, 5.0], [1e-3, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, stats = gspo_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, 1.0]), mask)
    expected = -(math.exp(2e-4) + 1.0004) / 2
    assert abs(float(loss) - expected) < 1e-6
    assert stats["clip/frac"] == 0.5  # one of two sequences


def test_gspo_equals_grpo_gradient_at_ratio_one_for_equal_lengths() -> None:
    # At ratio 1 both gradients are -A_i / (n_i * B) per token.
    logp = torch.randn(3, 4)
    mask = torch.ones(3, 4)
    adv = torch.tensor([1.0, -0.5, 2.0])
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    grpo_loss(a, logp, adv, mask)[0].backward()
    gspo_loss(b, logp, adv, mask)[0].backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def _grad(
    level: str,
    logp: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    eps: tuple[float, float] = (0.2, 0.2),
    mode: str = "sequence_mean",
) -> torch.Tensor:
    x = logp.clone().requires_grad_(True)
    s = clipped_surrogate(importance_log_ratio(x, old, mask, level), adv, *eps)
    aggregate_loss(s.per_token, mask, mode).backward()
    return x.grad


def test_gspo_and_grpo_agree_at_ratio_one_with_different_lengths_and_padding() -> None:
    # Lengths 3 and 1 (padding carries junk). At ratio 1: both -A_i / (n_i * B) on real tokens, 0 on padding.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.5, -2.0])
    expected = torch.tensor([[-1.5 / 6, -1.5 / 6, -1.5 / 6], [2.0 / 2, 0.0, 0.0]])
    for level in ("token", "sequence", "sequence_token"):
        assert torch.allclose(_grad(level, logp, logp, adv, mask), expected, atol=1e-6), level


def test_gspo_token_matches_gspo_off_policy_with_sequence_advantages() -> None:
    # Off-policy (ratio != 1, inside the clip range): GSPO's gradient per token is
    # s_i * A_i / (n_i * B); GSPO-token's value and gradient are the same for per-sequence A.
    # Sequence 0: log-ratios 1e-4, 2e-4 (mean 1.5e-4); sequence 1: -1e-4 then padding.
    old = torch.zeros(2, 2)
    logp = torch.tensor([[1e-4, 2e-4], [-1e-4, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    g_seq = _grad("sequence", logp, old, adv, mask, (3e-4, 4e-4))
    g_tok = _grad("sequence_token", logp, old, adv, mask, (3e-4, 4e-4))
    s0, s1 = math.exp(1.5e-4), math.exp(-1e-4)
    expected = torch.tensor([[-s0 / 4, -s0 / 4], [s1 / 2, 0.0]])
    assert torch.allclose(g_seq, expected, atol=1e-7) and torch.allclose(g_tok, expected, atol=1e-7)


def test_gspo_token_weights_tokens_by_their_own_advantage() -> None:
    # Per-token advantages (e.g. KL in the reward): GSPO-token's gradient on token t is
    # -s_i * A_it / (n_i * B). At ratio 1 with A = (1, 3) on one 2-token sequence: -1/2 and -3/2.
    logp = torch.tensor([[-1.0, -2.0]])
    adv = torch.tensor([[1.0, 3.0]])
    g = _grad("sequence_token", logp, logp, adv, torch.ones(1, 2))
    assert torch.allclose(g, torch.tensor([[-0.5, -1.5]]))


# ---------------------------------------------------------------- aggregation


def test_aggregation_modes_by_hand() -> None:
    # Per-token losses: sequence 0 = (1, 2, 3) (3 tokens), sequence 1 = (4) (1 token, padding 50 ignored).
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # sequence_mean: (6/3 + 4/1) / 2 = 3
    assert torch.isclose(aggregate_loss(losses, mask, "sequence_mean"), torch.tensor(3.0))
    # token_mean: (1 + 2 + 3 + 4) / 4 tokens = 2.5
    assert torch.isclose(aggregate_loss(losses, mask, "token_mean"), torch.tensor(2.5))
    # sequence_sum: (6 + 4) / 2 sequences = 5
    assert torch.isclose(aggregate_loss(losses, mask, "sequence_sum"), torch.tensor(5.0))
    # constant (Dr.GRPO), max_length 5: 10 / (2 * 5) = 1
    assert torch.isclose(aggregate_loss(losses, mask, "constant", max_length=5), torch.tensor(1.0))
    with pytest.raises(ValueError, match="max_length"):
        aggregate_loss(losses, mask, "constant")


@pytest.mark.parametrize("mode", ["sequence_mean", "token_mean", "sequence_sum", "constant"])
def test_micro_batches_sum_to_the_batch_loss(mode: str) -> None:
    # Split rows {0, 1} and {2}; passing the whole batch's totals makes the parts add up.
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [5.0, 6.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    whole = aggregate_loss(losses, mask, mode, max_length=4)
    parts = sum(
        aggregate_loss(losses[r], mask[r], mode, num_sequences=3, num_tokens=6, max_length=4)
        for r in (slice(0, 2), slice(2, 3))
    )
    assert torch.isclose(whole, parts)


def test_dr_grpo_normaliser_does_not_depend_on_sequence_length() -> None:
    # At ratio 1 the Dr.GRPO gradient per token is -A_i / (B * L_max) for every sequence,
    # whatever its length; sequence_mean's is -A_i / (B * n_i), token_mean's -A_i / N_tokens.
    logp = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, 1.0])
    x = logp.clone().requires_grad_(True)
    s = clipped_surrogate(importance_log_ratio(x, logp, mask), adv)
    aggregate_loss(s.per_token, mask, "constant", max_length=8).backward()
    g_const = x.grad
    assert torch.allclose(g_const[mask.bool()], torch.full((5,), -1.0 / 16))  # B = 2, L_max = 8
    g_seq = _grad("token", logp, logp, adv, mask, mode="sequence_mean")
    assert torch.isclose(g_seq[0, 0], torch.tensor(-1 / 8)) and torch.isclose(g_seq[1, 0], torch.tensor(-1 / 2))
    g_tok = _grad("token", logp, logp, adv, mask, mode="token_mean")
    assert torch.allclose(g_tok[mask.bool()], torch.full((5,), -1.0 / 5))  # 5 real tokens
