import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from embtables.metrics import auc, logloss


def pairwise_auc(scores, labels) -> float:
    """The definition: P(score of a positive > score of a negative) + 0.5 P(tie), over all pairs."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1)), min_size=2, max_size=60))
def test_auc_matches_the_pairwise_definition_with_ties(pairs):
    scores = [float(s) for s, _ in pairs]
    labels = [y for _, y in pairs]
    got = auc(torch.tensor(scores), torch.tensor(labels))
    if len(set(labels)) < 2:
        assert math.isnan(got)
    else:
        assert abs(got - pairwise_auc(scores, labels)) < 1e-12


def test_auc_known_values():
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([0, 1])) == 1.0


def test_logloss_matches_direct_formula():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    labels = torch.tensor([0.0, 1.0, 1.0])
    p = torch.sigmoid(logits.double())
    direct = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    assert abs(logloss(logits, labels) - float(direct)) < 1e-12
