"""Arithmetic datasets of the paper's Section 4 and Appendix B.

Every number 0..n_numbers−1 is its own token and ``sep = n_numbers``; a sample
is the sequence ``a b sep c`` with c = f(a, b) mod p.  Sets are LongTensors of
shape (n, 4), all deterministic from a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .expressions import Computation, parse

DEFAULT_P = 7
DEFAULT_NUMBERS = 1000


@dataclass(frozen=True)
class Vocabulary:
    n_numbers: int = DEFAULT_NUMBERS
    p: int = DEFAULT_P

    def __post_init__(self):
        if not isinstance(self.p, int) or self.p < 2:
            raise ValueError(f"p must be an integer >= 2, got {self.p!r}")
        if not isinstance(self.n_numbers, int) or self.n_numbers < self.p:
            raise ValueError(f"n_numbers must be an integer >= p ({self.p}), got {self.n_numbers!r}")

    @property
    def sep(self) -> int:
        return self.n_numbers

    @property
    def size(self) -> int:
        return self.n_numbers + 1

    @property
    def n_pairs(self) -> int:
        return self.n_numbers ** 2


def _computation(expr) -> Computation:
    return expr if isinstance(expr, Computation) else parse(expr)


def sequences(a: Tensor, b: Tensor, expr, vocab: Vocabulary) -> Tensor:
    """Rows ``a b sep f(a, b)``."""
    c = _computation(expr)(a, b, vocab.p)
    return torch.stack([a, b, torch.full_like(a, vocab.sep), c], dim=1)


def _pairs_from_index(index: Tensor, vocab: Vocabulary) -> tuple[Tensor, Tensor]:
    return index // vocab.n_numbers, index % vocab.n_numbers


def random_pairs(n: int, vocab: Vocabulary, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n pairs drawn uniformly (with replacement) from all n_numbers² pairs."""
    index = torch.randint(0, vocab.n_pairs, (n,), generator=generator)
    return _pairs_from_index(index, vocab)


def base_training_set(expr, vocab: Vocabulary, fraction: float = 0.2, seed: int = 0) -> Tensor:
    """A random ``fraction`` of all pairs without repetition (200,000 of 10⁶ by
    default) in which every number token appears at least once as an input."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    n = max(vocab.n_numbers, round(fraction * vocab.n_pairs))
    # Coverage by construction: the pairs (i, π(i)) for a random permutation π
    # hold every token; the rest are distinct pairs drawn uniformly from the others.
    covering = torch.arange(vocab.n_numbers) * vocab.n_numbers + torch.randperm(
        vocab.n_numbers, generator=gen)
    taken = torch.zeros(vocab.n_pairs, dtype=torch.bool)
    taken[covering] = True
    others = torch.randperm(vocab.n_pairs, generator=gen)
    others = others[~taken[others]][: n - vocab.n_numbers]
    index = torch.cat([covering, others])
    index = index[torch.randperm(index.numel(), generator=gen)]
    return sequences(*_pairs_from_index(index, vocab), expr, vocab)


def random_set(expr, vocab: Vocabulary, n: int, seed: int) -> Tensor:
    """n samples over random pairs (test, subtask and evaluation sets)."""
    if n < 1:
        raise ValueError(f"the number of samples must be positive, got {n}")
    gen = torch.Generator().manual_seed(seed)
    a, b = random_pairs(n, vocab, gen)
    return sequences(a, b, expr, vocab)


def minimal_set(expr, vocab: Vocabulary) -> Tensor:
    """(i, i, sep, f(i, i)) for every token i: each token appears, the rule stays ambiguous."""
    i = torch.arange(vocab.n_numbers)
    return sequences(i, i, expr, vocab)


def transfer_sets(expr, vocab: Vocabulary, n_disambiguation: int, seed: int,
                  n_eval: int = 1000, n_test: int = 1000) -> dict[str, Tensor]:
    """The transfer task: the minimal set plus ``n_disambiguation`` random
    pairs for training, and independent evaluation and test sets."""
    if n_disambiguation < 0 or n_disambiguation > vocab.n_pairs:
        raise ValueError(f"n_disambiguation={n_disambiguation} must be between 0 and the "
                         f"{vocab.n_pairs} pairs available")
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(vocab.n_pairs, generator=gen)[:n_disambiguation]
    disamb = sequences(*_pairs_from_index(index, vocab), expr, vocab)
    return {
        "train": torch.cat([minimal_set(expr, vocab), disamb]),
        "eval": random_set(expr, vocab, n_eval, seed + 1_000_003),
        "test": random_set(expr, vocab, n_test, seed + 2_000_003),
    }


def agree_on(rows: Tensor, expressions, vocab: Vocabulary) -> bool:
    """Whether all computations give the same answers on these rows' inputs."""
    outs = [_computation(e)(rows[:, 0], rows[:, 1], vocab.p) for e in expressions]
    return all(torch.equal(outs[0], o) for o in outs[1:])
