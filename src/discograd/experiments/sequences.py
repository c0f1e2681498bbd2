r"""Discrete-sequence data made by the library, and the metrics of generated sequences.

Two sources, each with exact ways to score what a generator produces:

- :class:`Grammar`: a context-free grammar (CFG) with a recognizer (``accepts``) and a sampler
  that draws derivations of a given length uniformly (counting derivations by dynamic
  programming, then sampling each choice in proportion to its count). :data:`ARITHMETIC` is the
  grammar of Kusner & Hernandez-Lobato (2016, "GANs for sequences of discrete elements with the
  Gumbel-softmax distribution"): ``S -> x | S+S | S-S | S*S | S/S``, strings such as ``x+x*x``,
  padded to a fixed length with ``_``. :data:`PARENTHESES` adds ``S -> (S)``, which no finite
  automaton recognizes.
- :class:`MarkovOracle`: a random first-order Markov chain, the "oracle" of SeqGAN (Yu et al.,
  2017, there an LSTM), whose likelihood of any sequence is exact. Started from its stationary
  distribution :math:`\pi`, the expected negative log-likelihood per token of its own sequences
  of length L is

  .. math:: \frac{1}{L}\Big(H(\pi) + (L-1)\,h\Big),\qquad h = \sum_i \pi_i H(P_{i\cdot}),

  h being the chain's entropy rate.

Metrics: the fraction of sequences the grammar accepts (:func:`grammatical_fraction`), the
oracle NLL (:meth:`MarkovOracle.nll`), and diversity: distinct sequences and distinct n-grams
(:func:`distinct_ngrams`; "distinct-n" of Li et al. 2016 is their ratio).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "ARITHMETIC",
    "PARENTHESES",
    "PAD",
    "Grammar",
    "GrammarData",
    "MarkovData",
    "MarkovOracle",
    "SequenceData",
    "distinct_ngrams",
    "distinct_sequences",
    "diversity",
    "grammatical_fraction",
    "make_data",
]

PAD = "_"

Production = Tuple[str, ...]


class Grammar:
    """A context-free grammar without empty or unit productions.

    Args:
        rules: nonterminal -> list of productions, each a string or a sequence of symbols; a
            symbol that is not a nonterminal is a terminal (one character).
        start: the start symbol.

    Without empty productions every symbol yields at least one character, and without unit
    productions (``A -> B``) every derivation step lengthens the sentential form, so both the
    recognizer and the derivation counts terminate.
    """

    def __init__(self, rules: Mapping[str, Sequence[Sequence[str]]], start: str = "S") -> None:
        if start not in rules:
            raise ValueError(f"start symbol {start!r} has no rules")
        self.start = start
        self.rules: Dict[str, List[Production]] = {}
        for head, prods in rules.items():
            if not prods:
                raise ValueError(f"nonterminal {head!r} has no productions")
            self.rules[head] = [tuple(p) for p in prods]
        for head, prods in self.rules.items():
            for p in prods:
                if len(p) == 0:
                    raise ValueError(f"empty production for {head!r}: not supported")
                if len(p) == 1 and p[0] in self.rules:
                    raise ValueError(f"unit production {head} -> {p[0]}: not supported")
                for sym in p:
                    if sym not in self.rules and len(sym) != 1:
                        raise ValueError(f"terminal {sym!r} in {head!r} must be one character")
        symbols = {s for ps in self.rules.values() for p in ps for s in p}
        self.terminals = sorted(symbols - set(self.rules))
        if PAD in self.terminals:
            raise ValueError(f"{PAD!r} is the padding symbol and cannot be a terminal")
        self._counts: Dict[Tuple[object, int], int] = {}

    # -- recognition --------------------------------------------------------------------------

    def accepts(self, text: str) -> bool:
        """Whether the start symbol derives ``text`` exactly (memoized top-down parse, O(n^3))."""
        # Keys (symbol, i, j) for derives and (production, k, i, j) for seq.
        memo: Dict[Tuple[object, ...], bool] = {}

        def derives(sym: str, i: int, j: int) -> bool:
            if sym not in self.rules:
                return j == i + 1 and text[i] == sym
            key = (sym, i, j)
            if key not in memo:
                memo[key] = any(seq(p, 0, i, j) for p in self.rules[sym])
            return memo[key]

        def seq(p: Production, k: int, i: int, j: int) -> bool:
            # Symbols p[k:] derive text[i:j]; each symbol takes at least one character.
            rest = len(p) - k
            if rest == 1:
                return derives(p[k], i, j)
            key = (p, k, i, j)
            if key not in memo:
                memo[key] = any(
                    derives(p[k], i, m) and seq(p, k + 1, m, j) for m in range(i + 1, j - rest + 2)
                )
            return memo[key]

        return len(text) > 0 and derives(self.start, 0, len(text))

    # -- counting and uniform sampling of derivations -----------------------------------------

    def count(self, sym: str, n: int) -> int:
        """Number of derivations of ``sym`` whose yield has n characters (exact integer)."""
        if sym not in self.rules:
            return 1 if n == 1 else 0
        key = (sym, n)
        if key not in self._counts:
            self._counts[key] = sum(self._count_seq(p, n) for p in self.rules[sym])
        return self._counts[key]

    def _count_seq(self, p: Production, n: int) -> int:
        # Derivations of the symbol sequence p yielding n characters (memoized with count's).
        if len(p) == 1:
            return self.count(p[0], n)
        key = (p, n)
        if key not in self._counts:
            self._counts[key] = sum(
                self.count(p[0], m) * self._count_seq(p[1:], n - m)
                for m in range(1, n - len(p) + 2)
            )
        return self._counts[key]

    def lengths(self, max_len: int) -> List[int]:
        """The yield lengths 1..max_len that some derivation reaches."""
        return [n for n in range(1, max_len + 1) if self.count(self.start, n) > 0]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> str:
        """A string of length n from a derivation drawn uniformly among those of that length.

        One 62-bit seed is drawn from ``generator`` (torch's global one if None) and the
        derivation's choices from a ``random.Random`` seeded with it: exact integer draws, and
        far fewer calls into torch than one per choice.
        """
        if self.count(self.start, n) == 0:
            raise ValueError(f"the grammar derives no string of length {n}")
        rng = random.Random(int(torch.randint(2**62, (), generator=generator)))
        return "".join(self._sample(self.start, n, rng))

    def _sample(self, sym: str, n: int, gen: random.Random) -> List[str]:
        if sym not in self.rules:
            return [sym]
        prods = self.rules[sym]
        p = prods[_choose([self._count_seq(q, n) for q in prods], gen)]
        out: List[str] = []
        for _ in range(len(p) - 1):  # split off the first symbol until one is left
            splits = range(1, n - len(p) + 2)
            weights = [self.count(p[0], m) * self._count_seq(p[1:], n - m) for m in splits]
            m = splits[_choose(weights, gen)]
            out += self._sample(p[0], m, gen)
            p, n = p[1:], n - m
        return out + self._sample(p[0], n, gen)


def _choose(weights: Sequence[int], rng: random.Random) -> int:
    """Index i with probability weights[i] / sum (exact integer arithmetic)."""
    r = rng.randrange(sum(weights))
    for i, w in enumerate(weights):
        if r < w:
            return i
        r -= w
    raise AssertionError("unreachable: r < sum(weights)")


ARITHMETIC = Grammar({"S": ["x", "S+S", "S-S", "S*S", "S/S"]})
PARENTHESES = Grammar({"S": ["x", "S+S", "S*S", "(S)"]})
GRAMMARS = {"arithmetic": ARITHMETIC, "parentheses": PARENTHESES}


# ---------------------------------------------------------------------------------------------
# Metrics.


def grammatical_fraction(texts: Sequence[str], grammar: Grammar) -> float:
    """Fraction of ``texts`` that are ``expression`` + padding with the grammar accepting it.

    Padding is allowed only at the end: ``x+x__`` is grammatical, ``x_+x`` and ``_____`` are
    not.
    """
    if not texts:
        raise ValueError("texts is empty")
    return sum(_grammatical(t, grammar) for t in texts) / len(texts)


def _grammatical(text: str, grammar: Grammar) -> bool:
    body = text.rstrip(PAD)
    return PAD not in body and grammar.accepts(body)


def distinct_ngrams(seqs: Sequence[Sequence[object]], n: int) -> Tuple[int, int]:
    """(number of distinct n-grams, total number of n-grams) over all sequences.

    A sequence shorter than n contributes none. Their ratio is "distinct-n" (Li et al., 2016).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen, total = set(), 0
    for s in seqs:
        s = tuple(s)
        for i in range(len(s) - n + 1):
            seen.add(s[i : i + n])
            total += 1
    return len(seen), total


def distinct_sequences(seqs: Sequence[Sequence[object]]) -> int:
    """Number of distinct sequences."""
    return len({tuple(s) for s in seqs})


def diversity(seqs: Sequence[Sequence[object]], ns: Sequence[int] = (2, 3)) -> Dict[str, float]:
    """distinct_seqs, and for each n: distinct_{n}grams (count) and distinct_{n} (ratio)."""
    out: Dict[str, float] = {"distinct_seqs": distinct_sequences(seqs)}
    for n in ns:
        d, t = distinct_ngrams(seqs, n)
        out[f"distinct_{n}grams"] = d
        out[f"distinct_{n}"] = d / t if t else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# Markov oracle.


class MarkovOracle:
    r"""A random first-order Markov chain on V tokens, started at its stationary distribution.

    Transition logits are ``scale`` times standard normal draws (seeded), so larger ``scale``
    gives a more predictable chain (lower entropy rate).
    """

    def __init__(self, vocab_size: int = 10, scale: float = 2.0, seed: int = 0) -> None:
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        if not (scale >= 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be finite and >= 0, got {scale!r}")
        g = torch.Generator().manual_seed(seed)
        logits = scale * torch.randn(vocab_size, vocab_size, generator=g, dtype=torch.float64)
        self.log_transition = torch.log_softmax(logits, -1)  # [i, j] = log P(j | i)
        self.stationary = _stationary(self.log_transition.exp())
        self.vocab_size, self.scale, self.seed = vocab_size, scale, seed

    def sample(self, n: int, length: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n sequences of ``length`` tokens, (n, length) int64."""
        p = self.log_transition.exp()
        x = torch.multinomial(self.stationary.expand(n, -1), 1, generator=generator)
        out = [x]
        for _ in range(length - 1):
            x = torch.multinomial(p[x.squeeze(1)], 1, generator=generator)
            out.append(x)
        return torch.cat(out, 1)

    def nll(self, tokens: Tensor) -> Tensor:
        """Negative log-likelihood per token of each sequence (n, L) -> (n,), in nats."""
        tokens = tokens.long()
        first = -self.stationary.log()[tokens[:, 0]]
        steps = -self.log_transition[tokens[:, :-1], tokens[:, 1:]].sum(1)
        return (first + steps) / tokens.shape[1]

    def entropy_rate(self) -> float:
        """h = sum_i pi_i H(P(. | i)), nats per token."""
        p = self.log_transition.exp()
        row_entropy = -(p * self.log_transition).sum(1)
        return float((self.stationary * row_entropy).sum())

    def expected_nll(self, length: int) -> float:
        """E[nll] of the chain's own sequences of ``length``: (H(pi) + (L - 1) h) / L."""
        h_pi = float(-(self.stationary * self.stationary.log()).sum())
        return (h_pi + (length - 1) * self.entropy_rate()) / length


def _stationary(p: Tensor) -> Tensor:
    """pi with pi P = pi, sum pi = 1 (P strictly positive, so pi is unique)."""
    v = p.shape[0]
    a = p.T - torch.eye(v, dtype=p.dtype)
    a[-1] = 1.0  # replace one (redundant) balance equation by the normalization
    b = torch.zeros(v, dtype=p.dtype)
    b[-1] = 1.0
    return torch.linalg.solve(a, b).clamp_min(0.0)


# ---------------------------------------------------------------------------------------------
# Data sets: token tensors plus the metrics of generated sequences.


@dataclass
class SequenceData:
    """Training and held-out sequences as token ids (n, L), and how to score generated ones."""

    name: str
    vocab: Tuple[str, ...]
    train: Tensor
    valid: Tensor
    description: str = ""
    settings: Dict[str, object] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.train.shape[1])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, tokens: Tensor) -> List[str]:
        """Token ids (n, L) -> n strings (a token a character, or space-separated words)."""
        sep = "" if all(len(v) == 1 for v in self.vocab) else " "
        return [sep.join(self.vocab[i] for i in row) for row in tokens.tolist()]

    def metrics(self, tokens: Tensor) -> Dict[str, float]:
        """Quality and diversity of generated token ids (n, L)."""
        raise NotImplementedError


@dataclass
class GrammarData(SequenceData):
    grammar: Grammar = ARITHMETIC

    def units(self, tokens: Tensor) -> List[List[int]]:
        """Sequences without their trailing padding (diversity is measured on these)."""
        pad = self.vocab.index(PAD)
        out = []
        for row in tokens.tolist():
            while row and row[-1] == pad:
                row = row[:-1]
            out.append(row)
        return out

    def metrics(self, tokens: Tensor) -> Dict[str, float]:
        texts = self.decode(tokens)
        return {
            "grammatical": grammatical_fraction(texts, self.grammar),
            **diversity(self.units(tokens)),
        }


@dataclass
class MarkovData(SequenceData):
    oracle: Optional[MarkovOracle] = None

    def metrics(self, tokens: Tensor) -> Dict[str, float]:
        assert self.oracle is not None
        return {
            "oracle_nll": float(self.oracle.nll(tokens).mean()),
            "oracle_entropy_rate": self.oracle.entropy_rate(),
            **diversity(tokens.tolist()),
        }


def make_data(
    kind: str = "grammar",
    *,
    n_train: int = 5000,
    n_valid: int = 1000,
    length: int = 12,
    seed: int = 0,
    grammar: str = "arithmetic",
    vocab_size: int = 10,
    oracle_scale: float = 2.0,
) -> SequenceData:
    """Build the ``grammar`` or ``markov`` data set (all draws from ``seed``).

    grammar: for each sequence a length uniform over those the grammar reaches up to
    ``length``, then a derivation uniform among those of that length, padded with ``_``.
    markov: sequences of ``length`` tokens from :class:`MarkovOracle` (seeded with ``seed``).
    """
    for name, value in (("n_train", n_train), ("n_valid", n_valid), ("length", length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    gen = torch.Generator().manual_seed(seed)
    if kind == "grammar":
        if grammar not in GRAMMARS:
            raise ValueError(f"grammar must be one of {sorted(GRAMMARS)}, got {grammar!r}")
        g = GRAMMARS[grammar]
        vocab = tuple(g.terminals) + (PAD,)
        lengths = g.lengths(length)
        if not lengths:
            raise ValueError(f"the {grammar} grammar derives no string of length <= {length}")
        index = {c: i for i, c in enumerate(vocab)}

        def draw(n: int) -> Tensor:
            picks = torch.randint(len(lengths), (n,), generator=gen).tolist()
            rows = []
            for k in picks:
                text = g.sample(lengths[k], gen).ljust(length, PAD)
                rows.append([index[c] for c in text])
            return torch.tensor(rows, dtype=torch.long)

        return GrammarData(
            name=f"grammar-{grammar}",
            vocab=vocab,
            train=draw(n_train),
            valid=draw(n_valid),
            description=(
                f"{grammar} CFG strings of length <= {length} over {''.join(g.terminals)}, "
                f"padded with {PAD!r}"
            ),
            settings={
                "kind": kind,
                "grammar": grammar,
                "length": length,
                "seed": seed,
                "n_train": n_train,
                "n_valid": n_valid,
            },
            grammar=g,
        )
    if kind == "markov":
        oracle = MarkovOracle(vocab_size, oracle_scale, seed)
        return MarkovData(
            name="markov-oracle",
            vocab=tuple(str(i) for i in range(vocab_size)),
            train=oracle.sample(n_train, length, gen),
            valid=oracle.sample(n_valid, length, gen),
            description=(
                f"random Markov chain on {vocab_size} tokens (logit scale {oracle_scale}), "
                f"length {length}; entropy rate {oracle.entropy_rate():.3f} nats/token"
            ),
            settings={
                "kind": kind,
                "vocab_size": vocab_size,
                "oracle_scale": oracle_scale,
                "length": length,
                "seed": seed,
                "n_train": n_train,
                "n_valid": n_valid,
            },
            oracle=oracle,
        )
    raise ValueError(f"kind must be 'grammar' or 'markov', got {kind!r}")
