"""The evolutionary search of OptEmbed's per-field dimensions (Lyu et al., "OptEmbed: Learning Optimal Embedding
Table for Click-through Rate Prediction", CIKM 2022), under a memory budget.

A candidate is one dim per field, d_f in 1..D_f. With the supernet's weights fixed, `fitness(d)` scores a
candidate (validation AUC of the model whose field f reads only the first d_f columns). Each generation:

    parents   = the `parents` fittest candidates evaluated so far (a running top list, so the fittest are never
                lost: the reference's `keep`, default 0, which carries candidates over unchanged, adds nothing here)
    children  = `mutations` mutants:   a copy of a random parent, each d_f redrawn uniformly in 1..D_f with
                                       probability `mutation_probability`
              + `crossovers` crosses:  a[:c] + b[c:] of two distinct parents, c uniform in 1..F-1 (over fields)

The first population is `mutations + crossovers` uniform random candidates; `generations` rounds follow the
first. Reference defaults (fuyuanlyu/OptEmbed): mutations 10, crossovers 10, probability 0.1, 30 generations. Two slips of the reference are not copied: its crossover point is drawn over the embedding width
instead of the number of fields, and it mutates parents in place (here a child is always a new list). Beyond
the reference, a candidate whose `bytes_of(d)` exceeds `budget` is never evaluated: it is redrawn, so the
search returns the fittest candidate that fits. A candidate is evaluated once (fitness is cached).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from embtables.options import check_options, option

__all__ = ["SearchConfig", "SearchResult", "evolutionary_search"]

_DRAWS = 1000  # redraws of an over-budget or already-seen child before a generation gives up on it


@dataclass(frozen=True)
class SearchConfig:
    """Options of the evolutionary search (reference defaults).

    Args:
        mutations: mutants per generation (and half the first population).
        crossovers: crosses per generation (and the other half of the first population).
        mutation_probability: chance that a mutant redraws each field's dim.
        generations: rounds after the first population.
        parents: how many of the fittest candidates so far breed.
        seed: seeds the draws.
    """

    mutations: int = option(10, minimum=0)
    crossovers: int = option(10, minimum=0)
    mutation_probability: float = option(0.1, minimum=0)
    generations: int = option(30, minimum=0)
    parents: int = option(10, minimum=1)
    seed: int = option(0, minimum=0)

    def __post_init__(self) -> None:
        check_options(self, "optembed search")
        if self.mutation_probability > 1:
            raise ValueError(f"optembed search option mutation_probability must be <= 1, got {self.mutation_probability!r}")
        if self.mutations + self.crossovers < 1:
            raise ValueError("optembed search needs mutations + crossovers >= 1 (the first population's size)")


@dataclass(frozen=True)
class SearchResult:
    """The fittest candidate that fits, its fitness and bytes, and the best fitness after each generation
    (`history[0]` after the first population)."""

    dims: tuple[int, ...]
    fitness: float
    bytes: int
    history: tuple[float, ...]
    evaluated: int


def evolutionary_search(
    max_dims: Sequence[int],
    fitness: Callable[[tuple[int, ...]], float],
    bytes_of: Callable[[tuple[int, ...]], int],
    budget: float,
    config: SearchConfig = SearchConfig(),
) -> SearchResult:
    """The fittest per-field dims found whose bytes fit `budget` (see the module docstring).

    Args:
        max_dims: (F,) D_f, the widest dim of each field.
        fitness: higher is better (validation AUC); called once per distinct candidate.
        bytes_of: the exported bytes of a candidate; must not decrease when a dim grows.
        budget: bytes a candidate may take.
        config: the search's options.

    Raises:
        ValueError: no candidate fits (every field at dim 1 is over budget), naming both byte counts.

    Example:
        >>> best = evolutionary_search([8, 8], lambda d: -abs(d[0] - 5) - abs(d[1] - 2), lambda d: sum(d), 9,
        ...                            SearchConfig(generations=10))
        >>> best.dims, best.bytes <= 9
        ((5, 2), True)
    """
    widest = [int(d) for d in max_dims]
    if not widest or min(widest) < 1:
        raise ValueError(f"optembed search: max_dims must be one dim >= 1 per field, got {list(max_dims)}")
    narrowest = tuple(1 for _ in widest)
    if bytes_of(narrowest) > budget:
        raise ValueError(
            f"optembed search: no architecture fits {budget:,.0f} bytes; every field at dim 1 takes "
            f"{bytes_of(narrowest):,} (prune more rows, or give a larger budget)"
        )
    rng = random.Random(config.seed)
    scores: dict[tuple[int, ...], float] = {}

    def draw(make: Callable[[], list[int]]) -> tuple[int, ...] | None:
        """A new candidate within budget from `make`, or None after _DRAWS tries."""
        for _ in range(_DRAWS):
            child = tuple(make())
            if child not in scores and bytes_of(child) <= budget:
                return child
        return None

    def uniform() -> list[int]:
        return [rng.randint(1, d) for d in widest]

    def mutant(parents: list[tuple[int, ...]]) -> list[int]:
        parent = rng.choice(parents)
        return [rng.randint(1, d) if rng.random() < config.mutation_probability else x for x, d in zip(parent, widest)]

    def cross(parents: list[tuple[int, ...]]) -> list[int]:
        if len(parents) < 2 or len(widest) < 2:
            return mutant(parents)  # nothing to cross
        a, b = rng.sample(parents, 2)
        cut = rng.randint(1, len(widest) - 1)  # a point between fields
        return list(a[:cut] + b[cut:])

    def evaluate(candidates: list[tuple[int, ...] | None]) -> None:
        for c in candidates:
            if c is not None and c not in scores:
                scores[c] = float(fitness(c))

    def ranked() -> list[tuple[int, ...]]:
        return sorted(scores, key=lambda c: (-scores[c], c))  # ties: the narrower candidate first

    evaluate([draw(uniform) for _ in range(config.mutations + config.crossovers)])
    if not scores:  # the budget admits candidates, but the draws missed them: the narrowest always fits
        evaluate([narrowest])
    history = [scores[ranked()[0]]]
    for _ in range(config.generations):
        best = ranked()
        parents = best[: config.parents]
        children = [draw(lambda: mutant(parents)) for _ in range(config.mutations)]
        children += [draw(lambda: cross(parents)) for _ in range(config.crossovers)]
        evaluate(children)
        history.append(scores[ranked()[0]])
    top = ranked()[0]
    return SearchResult(top, scores[top], bytes_of(top), tuple(history), len(scores))
