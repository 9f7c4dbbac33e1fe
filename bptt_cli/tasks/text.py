"""``text``: character-level language modelling, the hidden state carried across windows.

The text is a UTF-8 file (``path``) or, with no path, a corpus generated from the grammar in
``grammar.py`` (``n_sentences`` sentences with relative clauses nested up to ``depth`` deep,
drawn from the seed's own corpus stream). The vocabulary is the sorted set of its characters:
I = O = V. The first 1 - ``eval_fraction`` of the characters is for training, the rest is
held out.

Training (stateful). For batch size B the training text of N characters is cut into B
contiguous streams of L = N // B characters (the tail is dropped), read side by side in
consecutive windows of T = ``length`` steps; the targets are the next characters, so window i
reads T + 1 characters and shares one with the next window::

    stream 0: | c_0      ... c_T      | c_T+1     ... c_2T      | ...   (L characters)
    stream 1: | c_L      ... c_L+T    | ...
    ...
    step i:   x = streams[iT : iT+T]      targets = streams[iT+1 : iT+T+1]    (T, B)
              with i taken modulo the W = (L - 1) // T windows of an epoch

The batch of step i is a pure function of (text, B, i). The trainer carries the hidden
state from one step to the next (``stateful``), the lecture's "feed x forward as usual";
at the wrap from window W-1 to window 0 the text jumps back to the start of each stream,
and the stale state only costs the first few steps of that window.

Evaluation. ``eval_batch(size)`` is ``size`` windows of T + 1 characters of the held-out
text at offsets drawn from the evaluation stream, each read from a zero initial state (so
its first steps are a little harder than in a stateful pass).

Chance: the best input-blind predictor is the unigram distribution p of the training text:
loss H(p) = -sum_c p_c ln p_c nats, bpc H(p) / ln 2, accuracy max_c p_c.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bptt_cli.tasks import grammar
from bptt_cli.tasks.base import CORPUS_STREAM, Batch, Param, Task, TaskError, _check_batch_size


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``, or a TaskError naming the file and the ``path`` parameter."""
    where = f"task 'text' parameter 'path': {str(path)!r}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TaskError(f"{where} does not exist", "path") from None
    except IsADirectoryError:
        raise TaskError(f"{where} is a directory, not a text file", "path") from None
    except OSError as e:
        raise TaskError(f"{where} cannot be read ({e.strerror})", "path") from None
    if not data:
        raise TaskError(f"{where} is empty", "path")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaskError(
            f"{where} is not UTF-8 text: byte {data[e.start]:#04x} at offset {e.start} cannot be decoded",
            "path",
        ) from None


class TextTask(Task):
    """x ``(T, B, V)`` one-hot, targets ``(T, B)`` int64 next characters, mask ``(T, B)`` all ones."""

    name = "text"
    description = "Character-level language model over a text file or a generated agreement corpus (stateful)."
    params = (
        Param("path", None, "UTF-8 text file; null for the generated corpus", str, optional=True),
        Param("length", 50, "window length T (characters per training step)", int, low=1),
        Param("eval_fraction", 0.1, "share of the text, at its end, held out", float, low=0.01, high=0.5),
        Param("depth", 2, "generated corpus only: deepest nesting of relative clauses", int, low=0, high=10),
        Param("n_sentences", 2000, "generated corpus only: number of sentences", int, low=1),
    )
    loss = "cross_entropy"
    stateful = True

    def __init__(self, params=None, *, seed=0, dtype=np.float32) -> None:
        super().__init__(params, seed=seed, dtype=dtype)
        self.length = T = self.p["length"]
        if self.p["path"] is None:
            text = grammar.corpus(self.rng(CORPUS_STREAM), self.p["n_sentences"], self.p["depth"])
            self.source = f"the generated corpus ({self.p['n_sentences']} sentences)"
            self._culprit = "n_sentences"  # the parameter to blame when the text is too short
        else:
            text = read_text(Path(self.p["path"]))
            self.source = f"text file {self.p['path']!r}"
            self._culprit = "path"
        self.text = text
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # (N,) code points
        uniq, ids = np.unique(codes, return_inverse=True)
        self.vocab = "".join(map(chr, uniq))  # sorted by code point
        self.n_in = self.n_out = len(self.vocab)
        n_eval = int(round(len(ids) * self.p["eval_fraction"]))
        n_train = len(ids) - n_eval
        if min(n_train, n_eval) < T + 1:
            raise TaskError(
                f"task 'text' parameter {self._culprit!r}: {self.source} has {len(ids)} characters, "
                f"{n_train} for training and {n_eval} held out (eval_fraction {self.p['eval_fraction']:g}), "
                f"but each part needs at least one window of length + 1 = {T + 1}",
                self._culprit,
            )
        self._train_ids = ids[:n_train].astype(np.int64)
        self._eval_ids = ids[n_train:].astype(np.int64)

    def _onehot(self, chunk: np.ndarray) -> Batch:
        """The batch of a ``(T+1, B)`` block of character ids."""
        x = np.eye(self.n_in, dtype=self.dtype)[chunk[:-1]]  # (T, B, V)
        mask = np.ones(chunk[1:].shape, dtype=self.dtype)
        return Batch(x, chunk[1:].copy(), mask)

    def windows_per_epoch(self, batch_size: int) -> int:
        """W: the number of distinct training windows for ``batch_size`` streams."""
        _check_batch_size(batch_size)
        L = len(self._train_ids) // batch_size
        if L < self.length + 1:
            raise TaskError(
                f"task 'text' parameter {self._culprit!r}: {self.source} has {len(self._train_ids)} training "
                f"characters, too few for {batch_size} streams of one window of length + 1 = {self.length + 1} "
                "characters each; use a smaller batch size or length, or a longer text",
                self._culprit,
            )
        return (L - 1) // self.length

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """Window ``step mod W`` of the B training streams (see the module docstring)."""
        T, B = self.length, batch_size
        i = step % self.windows_per_epoch(B)
        L = len(self._train_ids) // B
        streams = self._train_ids[: B * L].reshape(B, L).T  # (L, B)
        return self._onehot(streams[i * T : i * T + T + 1])

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """``batch_size`` held-out windows at random offsets (the evaluation set)."""
        T = self.length
        starts = rng.integers(0, len(self._eval_ids) - T, size=batch_size)  # (B,)
        idx = np.arange(T + 1)[:, None] + starts  # (T+1, B)
        return self._onehot(self._eval_ids[idx])

    def metrics(self, y: np.ndarray, batch: Batch) -> dict[str, float]:
        """Accuracy and ``bpc`` (mean cross-entropy in bits) from logits ``y (T, B, V)``."""
        out = super().metrics(y, batch)
        z = y - y.max(axis=-1, keepdims=True)  # (T, B, V)
        logz = np.log(np.exp(z).sum(axis=-1))  # (T, B)
        logp = np.take_along_axis(z, batch.targets[..., None], -1)[..., 0] - logz  # (T, B)
        m = batch.mask
        out["bpc"] = float(-(m * logp).sum(dtype=np.float64) / m.sum(dtype=np.float64) / np.log(2))
        return out

    def chance(self) -> dict[str, float]:
        p = np.bincount(self._train_ids, minlength=self.n_out) / len(self._train_ids)
        p = p[p > 0]
        h = float(-(p * np.log(p)).sum())
        return {"loss": h, "bpc": float(h / np.log(2)), "accuracy": float(p.max())}
