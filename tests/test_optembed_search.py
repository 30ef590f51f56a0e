"""OptEmbed's evolutionary dimension search: finds a planted optimum, never evaluates or returns a candidate over
budget, does not touch its parents, crosses over fields, is deterministic, and refuses an unreachable budget."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embtables.methods._optembed_search import SearchConfig, evolutionary_search

ROWS = [1000, 50, 300, 20, 4000, 7]  # rows kept per field: bytes = 4 sum_f rows_f d_f


def bytes_of(d: tuple[int, ...]) -> int:
    return 4 * sum(r * x for r, x in zip(ROWS, d))


def planted(target: tuple[int, ...]):
    return lambda d: -sum((x - t) ** 2 for x, t in zip(d, target))


def test_finds_a_planted_optimum_that_fits():
    target = (3, 12, 7, 16, 2, 9)
    best = evolutionary_search([16] * 6, planted(target), bytes_of, bytes_of(target), SearchConfig(generations=60))
    assert best.dims == target and best.fitness == 0 and best.bytes == bytes_of(target)
    assert list(best.history) == sorted(best.history) and len(best.history) == 61  # the best never gets worse


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(0.02, 1.0), seed=st.integers(0, 1000), fields=st.integers(1, 6))
def test_no_candidate_over_budget_is_evaluated_or_returned(fraction, seed, fields):
    widest = [16] * fields
    rows = ROWS[:fields]
    size = lambda d: 4 * sum(r * x for r, x in zip(rows, d))  # noqa: E731
    budget = max(size((1,) * fields), fraction * size(tuple(widest)))
    seen = []

    def fitness(d):
        seen.append(d)
        return sum(d)  # wider is better: the search presses against the budget

    best = evolutionary_search(widest, fitness, size, budget, SearchConfig(generations=5, seed=seed))
    assert seen and all(size(d) <= budget for d in seen) and best.bytes <= budget
    assert len(seen) == len(set(seen)) == best.evaluated  # each candidate scored once
    assert all(1 <= x <= 16 for d in seen for x in d)
    assert best.fitness == max(sum(d) for d in seen)


def test_parents_are_not_mutated_and_crosses_cut_between_fields(monkeypatch):
    """Every child is a new tuple that either copies a parent field by field (a mutant keeps each field with
    probability 0.9) or joins a prefix of one parent to the suffix of another at a field boundary."""
    scored: list[tuple[int, ...]] = []

    def fitness(d):
        scored.append(d)
        return -abs(sum(d) - 20)

    evolutionary_search([8] * 4, fitness, lambda d: sum(d), 32, SearchConfig(generations=3, mutation_probability=0.0))
    first, later = scored[:20], scored[20:]
    assert first == list(dict.fromkeys(first))  # evaluated candidates are distinct and were never changed
    pool = set(first)
    for child in later:  # with no mutation, every child is a cross of earlier candidates, cut between fields
        assert any(child[:c] in {p[:c] for p in pool} and child[c:] in {p[c:] for p in pool} for c in range(1, 4))
        pool.add(child)


def test_same_seed_same_search_and_another_seed_differs():
    args = ([16] * 6, lambda d: -sum((x - 5) ** 2 for x in d) + random.Random(sum(d)).random(), bytes_of, 1e9)
    a = evolutionary_search(*args, SearchConfig(seed=1, generations=4))
    b = evolutionary_search(*args, SearchConfig(seed=1, generations=4))
    c = evolutionary_search(*args, SearchConfig(seed=2, generations=4))
    assert a == b and a.history != c.history


def test_unreachable_budget_and_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"no architecture fits 100 bytes; every field at dim 1 takes 21,508"):
        evolutionary_search([16] * 6, planted((1,) * 6), bytes_of, 100)
    with pytest.raises(ValueError, match="max_dims must be one dim >= 1 per field"):
        evolutionary_search([16, 0], planted((1, 1)), bytes_of, 1e9)
    for name, value in [("mutations", -1), ("generations", 1.5), ("parents", 0), ("mutation_probability", 1.5),
                        ("seed", True)]:
        with pytest.raises(ValueError, match=f"optembed search option {name} must"):
            SearchConfig(**{name: value})
    with pytest.raises(ValueError, match="needs mutations \\+ crossovers >= 1"):
        SearchConfig(mutations=0, crossovers=0)
