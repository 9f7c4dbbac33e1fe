"""A small probabilistic grammar whose sentences need long-range subject-verb agreement.

The lecture's example in a form anyone can regenerate: no download, no copied text, the same
corpus for the same seed. Every noun is singular or plural at random, and every verb agrees
with its subject, so in a centre-embedded sentence the main verb must remember the number of
a noun many words back::

    the dog that the cats that the bird sees chase runs .
        dog -------------------------------------- runs    (singular, 8 words apart)
                     cats ------------------ chase         (plural)
                                   bird sees               (singular)

Grammar (n, m: number, sg or pl; d: the nesting depth still allowed)::

    S       -> NP[n, D] VP[n] "."
    NP[n,d] -> "the" N[n]                                 always when d = 0
             | "the" N[n] "that" VT[n] NP[m, d-1]          subject relative  } with probability
             | "the" N[n] "that" NP[m, d-1] VT[m]          object relative   } clause_prob
    VP[n]   -> VI[n] | VT[n] "the" N[m]

Sentences are separated by newlines.
"""

from __future__ import annotations

import numpy as np

# (singular, plural) pairs; a few irregular plurals so number is not always a final "s".
NOUNS = (
    ("dog", "dogs"),
    ("cat", "cats"),
    ("bird", "birds"),
    ("fox", "foxes"),
    ("horse", "horses"),
    ("teacher", "teachers"),
    ("child", "children"),
    ("mouse", "mice"),
)
TRANSITIVE = (
    ("chases", "chase"),
    ("sees", "see"),
    ("likes", "like"),
    ("follows", "follow"),
    ("feeds", "feed"),
    ("watches", "watch"),
)
INTRANSITIVE = (
    ("runs", "run"),
    ("sleeps", "sleep"),
    ("waits", "wait"),
    ("sings", "sing"),
    ("falls", "fall"),
)


def _pick(rng: np.random.Generator, pairs: tuple[tuple[str, str], ...], number: int) -> str:
    return pairs[int(rng.integers(len(pairs)))][number]


def _noun_phrase(rng: np.random.Generator, number: int, depth: int, probs: tuple[float, float]) -> list[str]:
    words = ["the", _pick(rng, NOUNS, number)]
    clause_prob, object_prob = probs
    if depth > 0 and rng.random() < clause_prob:
        inner = int(rng.integers(2))
        embedded = _noun_phrase(rng, inner, depth - 1, probs)
        if rng.random() < object_prob:
            # Object relative: the embedded subject separates the head noun from the main verb.
            words += ["that", *embedded, _pick(rng, TRANSITIVE, inner)]
        else:
            words += ["that", _pick(rng, TRANSITIVE, number), *embedded]
    return words


def sentence(rng: np.random.Generator, depth: int, clause_prob: float = 0.7, object_prob: float = 0.5) -> str:
    """One sentence with relative clauses nested at most ``depth`` deep, ending in " ."."""
    number = int(rng.integers(2))
    words = _noun_phrase(rng, number, depth, (clause_prob, object_prob))
    if rng.random() < 0.5:
        words.append(_pick(rng, INTRANSITIVE, number))
    else:
        words += [_pick(rng, TRANSITIVE, number), "the", _pick(rng, NOUNS, int(rng.integers(2)))]
    return " ".join(words + ["."])


def sentences(
    rng: np.random.Generator, n: int, depth: int, clause_prob: float = 0.7, object_prob: float = 0.5
) -> list[str]:
    """``n`` sentences drawn from ``rng`` (see the module docstring for the grammar)."""
    return [sentence(rng, depth, clause_prob, object_prob) for _ in range(n)]


def corpus(rng: np.random.Generator, n: int, depth: int) -> str:
    """The text of ``n`` sentences, one per line (with a final newline)."""
    return "\n".join(sentences(rng, n, depth)) + "\n"


def corpus_bytes(rng: np.random.Generator, n: int, depth: int, batch: int = 10_000) -> bytes:
    """``corpus(rng, n, depth)`` as UTF-8, drawn ``batch`` sentences at a time: the same bytes
    (one generator, the same draws in the same order) without a list of all ``n`` sentences."""
    out = bytearray()
    for start in range(0, n, batch):
        out += ("\n".join(sentences(rng, min(batch, n - start), depth)) + "\n").encode("utf-8")
    return bytes(out)
