import math

import pytest
import torch

from lm_eval_baking.core.kl import KLEstimate, forward_kl, monte_carlo_kl


def test_forward_kl_is_zero_for_identical_logits_and_matches_definition():
    torch.manual_seed(0)
    teacher, student = torch.randn(5, 11), torch.randn(5, 11)
    assert forward_kl(teacher, teacher).abs().max() < 1e-6
    p, q = teacher.softmax(-1), student.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(forward_kl(teacher, student), expected, atol=1e-5)


def test_forward_kl_is_teacher_first():
    teacher = torch.tensor([[4.0, 0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0, 4.0]])
    p, q = teacher.softmax(-1), student.softmax(-1)
    assert forward_kl(teacher, student).item() == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-5)


def test_top_k_with_all_tokens_equals_full_and_otherwise_lower_bounds_it():
    torch.manual_seed(1)
    teacher, student = torch.randn(7, 50) * 3, torch.randn(7, 50) * 3
    full = forward_kl(teacher, student)
    assert torch.allclose(forward_kl(teacher, student, top_k=50), full, atol=1e-4)
    for k in (1, 5, 20):
        assert (forward_kl(teacher, student, top_k=k) <= full + 1e-5).all()


def test_kl_estimate_statistics():
    estimate = KLEstimate.from_sequences([2.0, 4.0], [2, 4])
    assert estimate.per_sequence == 3.0
    assert estimate.per_token == 1.0 and estimate.per_token_stderr == 0.0
    assert estimate.per_sequence_stderr == pytest.approx(1.0)
    assert estimate.n_tokens == 6 and estimate.n_sequences == 2
    assert math.isnan(KLEstimate.from_sequences([1.0], [1]).per_token_stderr)


def test_monte_carlo_kl_is_teacher_minus_model():
    estimate = monte_carlo_kl([-1.0, -2.0], [-3.0, -2.0], [2, 2])
    assert estimate.per_sequence == pytest.approx(1.0)
    assert estimate.per_token == pytest.approx(0.5)
