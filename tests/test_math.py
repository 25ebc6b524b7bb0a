"""The LipschitzLR math against hand-computed values and the paper's own figures."""

import math

import numpy as np
import pytest
import torch

from lipschitz_lightning.math import (
    RULES,
    OptimizerKind,
    Statistic,
    EpochStats,
    HeadStats,
    epoch_bound,
    RuleHyper,
    RuleState,
    apply_caps,
    bce_bound,
    bias_corrected,
    default_first_epoch_lr,
    estimate_weight_bound,
    ewma,
    initial_state,
    is_valid_bound,
    l2_term,
    least_squares_bound,
    linear_regression_constant,
    logistic_regression_constant,
    next_rate,
    scale_columns_to_unit_sum,
    second_moment_estimate,
    softmax_ce_bound,
    softmax_regression_constant,
    tikhonov_term,
    time_decay,
)


def test_paper_resnet20_cifar10_rate():
    """Paper 7.4: K_z 206.695, W 43.257, lambda 1e-3, k 10, m 128 give lr 0.668."""
    L = softmax_ce_bound(206.695, k=10, m=128) + l2_term(1e-3, 43.257)
    assert L == pytest.approx(0.9 / 128 * 206.695 + 1e-3 * 43.257)
    assert round(1 / L, 3) == 0.668


def test_paper_resnet20_cifar10_rate_through_the_function_training_calls():
    """Paper 7.4 again, through epoch_bound and next_rate: the callback's own path."""
    stats = HeadStats(k_z=206.695, m=128, w_max=43.257)
    bound = epoch_bound("sgd", stats, "softmax_ce", k=10, weight_decay=1e-3)
    assert bound.L == pytest.approx(1.4966, abs=5e-5)
    lr, state = next_rate("sgd", RuleState(), bound, RuleHyper())
    assert round(lr, 3) == 0.668 and state.t == 1


def test_every_rule_is_one_complete_entry():
    for name, rule in RULES.items():
        assert rule.name == name and rule.summary and isinstance(rule.optimizer, OptimizerKind)
        assert rule.first_epoch_lr == "auto" or rule.first_epoch_lr > 0
        assert set(rule.logged) <= {"K1", "K2"}
        assert all(isinstance(s, Statistic) for s in rule.statistics)
    assert {n for n, r in RULES.items() if r.paper} == {"sgd", "adamo", "rmsprop", "auto_adam"}


@pytest.mark.parametrize(
    "k_z, k, m, expected",
    [(10.0, 2, 4, 1.25), (206.695, 10, 128, 1.45332421875), (3.0, 5, 1, 2.4)],
)
def test_softmax_ce_bound(k_z, k, m, expected):
    # (k-1)/(k m) K_z by hand: e.g. 1/(2*4)*10 = 1.25, 4/5*3 = 2.4
    assert softmax_ce_bound(k_z, k, m) == pytest.approx(expected)


def test_bce_and_least_squares_bounds():
    assert bce_bound(8.0, 4) == pytest.approx(1.0)  # 8 / (2*4)
    assert least_squares_bound(k_a=5.0, y_norm=2.0, k_z=4.0, m=3) == pytest.approx(4.0)  # (5-2)*4/3
    assert least_squares_bound(k_a=1.0, y_norm=2.0, k_z=4.0, m=2) == pytest.approx(-2.0)  # can go negative


def test_regularisation_terms():
    assert l2_term(1e-3, 43.257) == pytest.approx(0.043257)
    assert tikhonov_term(w_max=3.0, gamma_sq_norm=0.5) == pytest.approx(3.0)  # 2 * 3 * 0.5


def test_second_moment_estimate_matches_spec_formula():
    k, m, k_z, s, lam, w = 10, 128, 200.0, 900.0, 1e-3, 40.0
    c = (k - 1) / (k * m)
    spec = ((k - 1) / (k * m)) ** 2 * s + 2 * lam * w * (k - 1) * k_z / (k * m)
    assert second_moment_estimate(c, k_z, s, lam, w) == pytest.approx(spec)


def test_bounds_reject_bad_inputs():
    with pytest.raises(ValueError, match="k >= 2"):
        softmax_ce_bound(1.0, 1, 8)
    with pytest.raises(ValueError, match="positive"):
        bce_bound(1.0, 0)


@pytest.mark.parametrize("value, ok", [(1.0, True), (0.0, False), (-1.0, False), (float("nan"), False),
                                       (float("inf"), False), (torch.tensor(2.0), True)])
def test_is_valid_bound(value, ok):
    assert is_valid_bound(value) is ok


# --- classical models ---------------------------------------------------------------------------

X = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
Y = torch.tensor([1.0, 2.0, 3.0])


def test_scale_columns_to_unit_sum():
    scaled = scale_columns_to_unit_sum(X)
    assert torch.allclose(scaled.sum(dim=0), torch.ones(2))
    assert torch.allclose(scaled[0], torch.tensor([0.25, 2 / 3]))
    # A test split is scaled by the training column sums.
    assert torch.allclose(scale_columns_to_unit_sum(torch.ones(1, 2), reference=X), torch.tensor([[0.25, 1 / 3]]))


def test_estimate_weight_bound_by_hand():
    # column means 4/3 and 1 -> a = 7/3; column maxima 3 and 2 -> b = 2.5; K = (a+b)/2
    assert float(estimate_weight_bound(X)) == pytest.approx((7 / 3 + 2.5) / 2)


def test_classical_constants_against_numpy():
    x, y = X.numpy().astype(np.float64), Y.numpy().astype(np.float64)
    spec = np.linalg.norm(x, 2)
    assert float(logistic_regression_constant(X)) == pytest.approx(spec / 6)
    assert float(softmax_regression_constant(X, 3)) == pytest.approx(2 / 9 * spec)
    K = 1.7
    expected = K / 3 * np.linalg.norm(x.T @ x, 2) - np.linalg.norm(y[None, :] @ x, 2) / 3
    assert float(linear_regression_constant(X, Y, weight_bound=K)) == pytest.approx(expected)
    # default K is the section 7.1 estimate
    k_est = float(estimate_weight_bound(X))
    expected_est = k_est / 3 * np.linalg.norm(x.T @ x, 2) - np.linalg.norm(y[None, :] @ x, 2) / 3
    assert float(linear_regression_constant(X, Y)) == pytest.approx(expected_est)


# --- rules ---------------------------------------------------------------------------------------

EPOCHS = [EpochStats(L=2.0, G2=4.0, k_z=10.0), EpochStats(L=1.0, G2=1.0, k_z=8.0), EpochStats(L=0.5, G2=0.25, k_z=5.0)]


def run(rule, hyper, state):
    rates = []
    for stats in EPOCHS:
        lr, state = next_rate(rule, state, stats, hyper)
        rates.append(lr)
    return rates, state


def test_adaptive_sgd_sequence():
    rates, state = run("sgd", RuleHyper(), RuleState())
    assert rates == pytest.approx([0.5, 1.0, 2.0])
    assert state.t == 3


def test_adamo_sequence_seeded_with_x():
    # K0 = x = 0.1; K1 = .9*.1+.1*2 = .29; K2 = .9*.29+.1*1 = .361; K3 = .9*.361+.1*.5 = .3749
    state = initial_state("adamo", 0.1)
    assert state.K1 == 0.1
    rates, state = run("adamo", RuleHyper(betas=(0.9, 0.999)), state)
    assert rates == pytest.approx([1 / 0.29, 1 / 0.361, 1 / 0.3749])
    assert state.K1 == pytest.approx(0.3749)


def test_adamo_bias_corrected():
    rates, _ = run("adamo", RuleHyper(betas=(0.9, 0.999), bias_correction=True), RuleState(K1=0.1))
    assert rates == pytest.approx([1 / (0.29 / 0.1), 1 / (0.361 / 0.19), 1 / (0.3749 / 0.271)])


def test_rmsprop_sequence():
    # K2: .1*4 = .4; .9*.4+.1*1 = .46; .9*.46+.1*.25 = .439 ; lr = (sqrt(K2)+eps)/K_z
    eps = 1e-7
    rates, state = run("rmsprop", RuleHyper(betas=(0.9, 0.9), eps=eps), RuleState())
    assert rates == pytest.approx([(math.sqrt(0.4) + eps) / 10, (math.sqrt(0.46) + eps) / 8,
                                   (math.sqrt(0.439) + eps) / 5])
    assert state.K2 == pytest.approx(0.439)


def test_rmsprop_bias_corrected():
    rates, _ = run("rmsprop", RuleHyper(betas=(0.9, 0.9), eps=0.0, bias_correction=True), RuleState())
    assert rates == pytest.approx([math.sqrt(0.4 / 0.1) / 10, math.sqrt(0.46 / 0.19) / 8, math.sqrt(0.439 / 0.271) / 5])


def test_auto_adam_sequence():
    # K1: .2, .28, .302 ; K2 (b2=.999): .004, .004996, .00524096 (=.999*.004996+.001*.25)
    eps = 1e-7
    rates, state = run("auto_adam", RuleHyper(betas=(0.9, 0.999), eps=eps), RuleState())
    k1 = [0.2, 0.28, 0.302]
    k2 = [0.004, 0.999 * 0.004 + 0.001 * 1.0, 0.999 * (0.999 * 0.004 + 0.001) + 0.001 * 0.25]
    assert k2[1] == pytest.approx(0.004996) and k2[2] == pytest.approx(0.005241004)
    assert rates == pytest.approx([(math.sqrt(b) + eps) / a for a, b in zip(k1, k2)])
    assert (state.K1, state.K2, state.t) == pytest.approx((0.302, k2[2], 3))


def test_auto_adam_bias_corrected():
    rates, _ = run("auto_adam", RuleHyper(betas=(0.9, 0.999), eps=0.0, bias_correction=True), RuleState())
    k1 = [0.2, 0.28, 0.302]
    k2 = [0.004, 0.004996, 0.005241004]
    expected = [math.sqrt(b / (1 - 0.999**t)) / (a / (1 - 0.9**t)) for t, (a, b) in enumerate(zip(k1, k2), 1)]
    assert rates == pytest.approx(expected)
    # t = 1: the corrected EWMAs equal the first statistics themselves
    assert rates[0] == pytest.approx(math.sqrt(4.0) / 2.0)


def test_ewma_and_bias_correction_helpers():
    assert ewma(1.0, 3.0, 0.75) == pytest.approx(1.5)
    assert bias_corrected(0.19, 0.9, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bias_corrected(1.0, 0.9, 0)


def test_first_epoch_defaults_and_unknown_rule():
    assert default_first_epoch_lr("sgd") == "auto"
    assert default_first_epoch_lr("rmsprop") == "auto"
    assert default_first_epoch_lr("adamo") == 0.1
    assert default_first_epoch_lr("auto_adam") == 1e-3
    assert initial_state("auto_adam", 1e-3) == RuleState()
    with pytest.raises(ValueError, match="unknown rule"):
        next_rate("nesterov", RuleState(), EPOCHS[0], RuleHyper())


def test_adam_is_still_accepted_as_auto_adams_earlier_name():
    from lipschitz_lightning.math import RULE_ALIASES, canonical_rule, get_rule

    assert "adam" not in RULES and RULE_ALIASES == {"adam": "auto_adam"}
    assert canonical_rule("adam") == canonical_rule("auto_adam") == "auto_adam"
    assert get_rule("adam") is RULES["auto_adam"]
    hyper = RuleHyper(betas=(0.9, 0.999))
    assert next_rate("adam", RuleState(), EPOCHS[0], hyper) == next_rate("auto_adam", RuleState(), EPOCHS[0], hyper)
    assert default_first_epoch_lr("adam") == 1e-3
    # The callback's checkpointed state stays filed under the earlier name, so old checkpoints load.
    assert {name: rule.state_name for name, rule in RULES.items() if rule.state_name != name} == {"auto_adam": "adam"}
    with pytest.raises(ValueError, match=r"unknown rule 'nesterov'; expected one of \[.*'auto_adam'"):
        canonical_rule("nesterov")


def test_caps():
    assert apply_caps(5.0, 1.0) == (5.0, False)
    assert apply_caps(5.0, 1.0, max_lr=2.0) == (2.0, True)
    assert apply_caps(5.0, 1.0, max_growth=3.0) == (3.0, True)
    assert apply_caps(5.0, 1.0, max_lr=10.0, max_growth=10.0) == (5.0, False)
    assert apply_caps(5.0, None, max_growth=2.0) == (5.0, False)


def test_time_decay():
    assert time_decay(1.0, 0.0, 100) == 1.0
    assert time_decay(0.5, 1e-2, 100) == pytest.approx(0.25)


# --------------------------------------------------------------------------- the preconditioned edge rate

def test_preconditioned_terms_by_hand():
    from lipschitz_lightning.math.bounds import preconditioned_terms

    g = torch.tensor([3.0, -4.0])
    # First step (no v yet): v = (1-b2) g^2, bias-corrected v_hat = g^2, D g = g / (|g| + eps).
    q, p = preconditioned_terms(g, None, beta2=0.999, steps_done=0, eps=0.0).tolist()
    assert q == pytest.approx(7.0, rel=1e-5)  # ||g||_1
    assert p == pytest.approx(2.0, rel=1e-5)  # the number of weights
    # Later: v_prev = [1, 4], beta2 = 0.5, after 1 step: v = 0.5 v_prev + 0.5 g^2 = [5, 10],
    # bias 1 - 0.5^2 = 0.75, D = 1 / sqrt(v / 0.75).
    q, p = preconditioned_terms(g, torch.tensor([1.0, 4.0]), beta2=0.5, steps_done=1, eps=0.0).tolist()
    d = [1 / math.sqrt(5 / 0.75), 1 / math.sqrt(10 / 0.75)]
    assert q == pytest.approx(9 * d[0] + 16 * d[1], rel=1e-5)
    assert p == pytest.approx(9 * d[0] ** 2 + 16 * d[1] ** 2, rel=1e-5)


def test_identity_terms_are_the_squared_gradient_norm_twice():
    from lipschitz_lightning.math.bounds import identity_terms

    q, p = identity_terms(torch.tensor([[3.0, -4.0], [0.0, 12.0]])).tolist()
    assert q == p == pytest.approx(169.0)  # D = I: g^T g = ||g||^2, so the ratio is 1 and S = beta


def test_precond_rule_is_half_of_adams_edge_of_stability():
    stats = HeadStats(k_z=1.0, m=4.0, curvature=2.0, precond_ratio=0.5)
    bound = epoch_bound("precond", stats, "softmax_ce", 10, 0.0)
    assert bound.L == pytest.approx(4.0)  # S = beta / (g^T D g / ||D g||^2)
    lr, state = next_rate("precond", RuleState(), bound, RuleHyper(momentum=0.9, dampening=0.9))
    assert lr == pytest.approx(19.0 / 4.0)  # (1 + 0.9) / ((1 - 0.9) S): half of 38 / S
    assert state.t == 1
    plain, _ = next_rate("precond", RuleState(), bound, RuleHyper())
    assert plain == pytest.approx(0.25)  # the plain step 1 / S (the first-epoch checks' base)
    # No gradient seen yet: an unusable bound (the callback keeps its rate).
    assert epoch_bound("precond", HeadStats(k_z=1.0, m=4.0, curvature=2.0), "softmax_ce", 10, 0.0).L == math.inf
