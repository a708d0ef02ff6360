"""Metric functions against values computed by hand (or by a second, naive computation)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantscope.metrics import stats
from quantscope.metrics.divergence import kl_full, kl_topk, log_rest, true_token_logprob


def test_mean_se_matches_hand_computation():
    # mean 2.5, sample sd sqrt(5/3), se = sd / sqrt(4)
    est = stats.mean_se([1.0, 2.0, 3.0, 4.0])
    assert est.value == pytest.approx(2.5)
    assert est.se == pytest.approx(math.sqrt(5 / 3) / 2)


def test_clustered_se_matches_hand_computation():
    # clusters {1, 3} and {2, 6}: sums 4, 8; counts 2, 2; mean 3; residuals 4-6=-2, 8-6=2
    # se^2 = G/(G-1) * sum(resid^2) / n^2 = 2 * 8 / 16 = 1
    est = stats.mean_se([1.0, 3.0, 2.0, 6.0], clusters=[0, 0, 1, 1])
    assert est.value == pytest.approx(3.0)
    assert est.se == pytest.approx(1.0)
    assert est.clusters == 2


def test_paired_standard_error_matches_hand_computation():
    nll_q, nll_b = [2.0, 3.0, 4.0], [1.5, 2.7, 3.0]
    # differences 0.5, 0.3, 1.0: mean 0.6; sd = sqrt((0.01 + 0.09 + 0.16) / 2) = sqrt(0.13)
    est = stats.paired_log_ratio(nll_q, nll_b)
    assert est.value == pytest.approx(0.6)
    assert est.se == pytest.approx(math.sqrt(0.13) / math.sqrt(3))


def test_paired_se_is_much_smaller_than_unpaired_for_correlated_losses():
    rng = np.random.default_rng(0)
    base = rng.exponential(2.0, 5000)
    quant = base + rng.normal(0.05, 0.1, 5000)  # strongly correlated, slightly worse
    paired = stats.paired_log_ratio(quant, base).se
    unpaired = math.hypot(stats.mean_se(quant).se, stats.mean_se(base).se)
    assert paired < unpaired / 10


def test_perplexity_delta_method():
    nll = [1.0, 2.0, 3.0]
    est = stats.perplexity(nll)
    assert est.value == pytest.approx(math.exp(2.0))
    assert est.se == pytest.approx(math.exp(2.0) * 1.0 / math.sqrt(3))


def test_proportion_se_is_bernoulli_se():
    hits = [1] * 30 + [0] * 70
    est = stats.proportion(hits)
    assert est.value == pytest.approx(0.3)
    # sample variance of 0/1 data with n-1: p(1-p) n/(n-1)
    assert est.se == pytest.approx(math.sqrt(0.3 * 0.7 * 100 / 99 / 100))


def test_quantiles_and_spread():
    assert stats.quantiles(list(range(101)), (0.5, 0.9, 0.99)) == [50.0, 90.0, 99.0]
    assert stats.median_spread([5.0, 1.0, 3.0, 2.0]) == (2.5, 1.0, 5.0)


def test_kl_full_matches_naive_sum():
    torch.manual_seed(0)
    lp_b = torch.log_softmax(torch.randn(5, 11, dtype=torch.float64), -1)
    lp_q = torch.log_softmax(torch.randn(5, 11, dtype=torch.float64), -1)
    naive = [
        sum(math.exp(a) * (a - b) for a, b in zip(rb.tolist(), rq.tolist(), strict=True))
        for rb, rq in zip(lp_b, lp_q, strict=True)
    ]
    assert kl_full(lp_b, lp_q).tolist() == pytest.approx(naive)
    assert (kl_full(lp_b, lp_b) == 0).all()


def test_kl_topk_equals_full_kl_when_k_is_the_vocabulary():
    torch.manual_seed(1)
    lp_b = torch.log_softmax(torch.randn(8, 50), -1)
    lp_q = torch.log_softmax(torch.randn(8, 50), -1)
    values, ids = lp_b.topk(50, -1)
    rest_b, rest_q = log_rest(lp_b, ids), log_rest(lp_q, ids)
    coarse = kl_topk(values, lp_q.gather(-1, ids), rest_b, rest_q)
    expected = kl_full(lp_b.double(), lp_q.double()).tolist()
    assert coarse.tolist() == pytest.approx(expected, rel=1e-5)


def test_kl_topk_is_a_lower_bound_that_tightens_with_k():
    torch.manual_seed(2)
    lp_b = torch.log_softmax(3 * torch.randn(16, 200, dtype=torch.float64), -1)
    lp_q = torch.log_softmax(lp_b + 0.5 * torch.randn(16, 200, dtype=torch.float64), -1)
    exact = kl_full(lp_b, lp_q)
    previous = torch.zeros(16, dtype=torch.float64)
    for k in (1, 5, 20, 100, 200):
        values, ids = lp_b.topk(k, -1)
        coarse = kl_topk(values, lp_q.gather(-1, ids), log_rest(lp_b, ids), log_rest(lp_q, ids))
        assert (coarse <= exact + 1e-9).all()  # data-processing inequality
        assert (coarse >= previous - 1e-9).all()  # refining the partition never lowers it
        previous = coarse
    assert torch.allclose(previous, exact)


def test_true_token_logprob_picks_the_target():
    lp = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]))
    out = true_token_logprob(lp, torch.tensor([2, 0]))
    assert out.exp().tolist() == pytest.approx([0.7, 0.5])


_ROWS = st.integers(1, 6)
_VOCAB = st.integers(2, 40)


@st.composite
def _logits(draw, rows: int, vocab: int):
    values = draw(
        st.lists(st.floats(-20, 20, allow_nan=False), min_size=rows * vocab, max_size=rows * vocab)
    )
    return torch.tensor(values, dtype=torch.float64).view(rows, vocab)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), rows=_ROWS, vocab=_VOCAB)
def test_kl_is_nonnegative_and_zero_for_identical_inputs(data, rows, vocab):
    a = data.draw(_logits(rows, vocab)).log_softmax(-1)
    b = data.draw(_logits(rows, vocab)).log_softmax(-1)
    assert (kl_full(a, b) >= -1e-12).all()
    assert (kl_full(a, a) == 0).all()
    k = data.draw(st.integers(1, vocab))
    top, ids = a.topk(k, dim=-1)
    rest = log_rest(a, ids)
    # the top-k bound is a lower bound of the full KL, and 0 for identical inputs
    low = kl_topk(top, b.gather(-1, ids), rest, log_rest(b, ids))
    assert (low <= kl_full(a, b) + 1e-9).all()
    assert kl_topk(top, top, rest, rest).abs().max() < 1e-9


@settings(max_examples=200, deadline=None)
@given(
    hits=st.lists(st.booleans(), min_size=2, max_size=200),
    clusters=st.lists(st.integers(0, 5), min_size=200, max_size=200),
)
def test_agreement_is_a_share_and_identical_answers_flip_nothing(hits, clusters):
    from quantscope.metrics.tasks import compare_answers

    share = stats.proportion(hits, clusters[: len(hits)])
    assert 0.0 <= share.value <= 1.0
    assert share.se >= 0 or math.isnan(share.se)
    same = compare_answers(hits, hits)
    assert same["correct_to_wrong"] == same["wrong_to_correct"] == 0
    assert same["mcnemar_p"] == 1.0 and same["delta"] == 0
