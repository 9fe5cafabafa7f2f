"""accept | review | reject from confidence, OOD score and gate flags."""

from __future__ import annotations

import numpy as np

from guardedmodel_sidecar.decision import DecisionPolicy, decide

POLICY = DecisionPolicy(review_below=0.6, ood_method="mahalanobis", ood_threshold=10.0, ood_action="reject")


def test_confident_in_distribution_batch_is_accepted() -> None:
    d = decide(np.array([0.9, 0.95]), np.array([1.0, 2.0]), [], POLICY)
    assert d.decision == "accept" and d.per_sample == ("accept", "accept")
    assert d.confidence == 0.9 and d.ood_score == 2.0 and not d.reasons


def test_low_confidence_asks_for_review_and_says_why() -> None:
    d = decide(np.array([0.9, 0.4]), np.array([1.0, 2.0]), [], POLICY)
    assert d.decision == "review" and d.per_sample == ("accept", "review")
    assert "0.4000 is below reviewBelow 0.6 (1 of 2 samples)" in d.reasons[0]


def test_ood_takes_the_configured_action_and_the_worst_sample_wins() -> None:
    confidence, ood = np.array([0.4, 0.99]), np.array([1.0, 50.0])
    d = decide(confidence, ood, [], POLICY)
    assert d.decision == "reject" and d.per_sample == ("review", "reject") and d.ood_flagged
    review = decide(confidence, ood, [], DecisionPolicy(0.6, "energy", 10.0, "review"))
    assert review.per_sample == ("review", "review")
    flag = decide(np.array([0.99]), np.array([50.0]), [], DecisionPolicy(0.6, "energy", 10.0, "flag"))
    assert flag.decision == "accept" and flag.ood_flagged and "action flag" in flag.reasons[0]


def test_gate_flags_ask_for_review_of_the_whole_request() -> None:
    d = decide(np.array([0.99, 0.99]), None, ["input 'X': brightness shift"], POLICY)
    assert d.decision == "review" and d.per_sample == ("review", "review")
    assert d.reasons == ("input 'X': brightness shift",) and d.ood_score is None


def test_no_threshold_means_scores_are_reported_not_acted_on() -> None:
    d = decide(np.array([0.99]), np.array([1e9]), [], DecisionPolicy(None, "knn", None, "reject"))
    assert d.decision == "accept" and d.ood_score == 1e9 and not d.ood_flagged


def test_a_row_the_guard_cannot_score_is_never_accepted() -> None:
    """NaN scores (a model answering NaN or inf logits) fail closed, whatever else the batch holds:
    a NaN OOD score is out of distribution, a NaN confidence asks for review."""
    nan = float("nan")
    for batch in (1, 2, 33):
        ood = np.ones(batch)
        ood[-1] = nan
        d = decide(np.full(batch, 0.99), ood, [], POLICY)
        assert d.per_sample[-1] == "reject" and d.per_sample[:-1] == ("accept",) * (batch - 1)
        confidence = np.full(batch, 0.99)
        confidence[0] = nan
        d = decide(confidence, np.ones(batch), [], POLICY)
        assert d.per_sample[0] == "review" and d.per_sample[1:] == ("accept",) * (batch - 1)
    all_nan = decide(np.array([nan, nan]), np.array([nan, nan]), [], POLICY)
    assert all_nan.per_sample == ("reject", "reject") and all_nan.ood_flagged
