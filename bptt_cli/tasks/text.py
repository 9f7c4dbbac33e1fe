"""``text``: character-level language modelling, the hidden state carried across windows.

The text is a UTF-8 file (``path``) or, with no path, a corpus generated from the grammar in
``grammar.py`` (``n_sentences`` sentences with relative clauses nested up to ``depth`` deep,
drawn from the seed's own corpus stream). The vocabulary is the sorted set of its characters:
I = O = V. The first 1 - ``eval_fraction`` of the characters is for training, the rest is
held out; ``eval_fraction: 0`` holds nothing out (``held_out`` is False) and the trainer
skips evaluation, as min-char-rnn trains on the whole text.

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
and the stale state only costs the first few steps of that window. With
``reset_state_at_end: true`` the state is zeroed there instead (``resets_state``), as
min-char-rnn does when its pointer wraps. (min-char-rnn reads windows at p = 0, 25, ...
while p + T + 1 < N, one window fewer than here when (N - 1) is a multiple of T.)

Evaluation. ``eval_batch(size)`` is ``size`` windows of T + 1 characters of the held-out
text at offsets drawn from the evaluation stream, each read from a zero initial state (so
its first steps are a little harder than in a stateful pass).

Chance: the best input-blind predictor is the unigram distribution p of the training text:
loss H(p) = -sum_c p_c ln p_c nats, bpc H(p) / ln 2, accuracy max_c p_c.

Size. The text is never held as a str: ``corpus.py`` reads a file in chunks, encodes it to ids
in the smallest unsigned dtype and memory-maps it from a cache keyed by the file's sha256
(``cache_dir``, shared by every process), so a file larger than memory trains in bounded
memory and batches are cut from the ids on demand. ``fingerprint()`` is that sha256 (of the
generated text for the generated corpus), for resume to check the data did not change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bptt_cli.tasks import corpus, grammar
from bptt_cli.tasks.base import CORPUS_STREAM, MAX_LENGTH, Batch, Param, Task, TaskError, _check_batch_size

# A sentence takes 25-45 us to generate at depth 2-10 on an idle core and 3x that on a busy
# one (measured: 500,000 sentences took 41-74 s on a loaded machine); 200,000 stays under ~30 s.
MAX_SENTENCES = 200_000


class TextTask(Task):
    """x ``(T, B, V)`` one-hot, targets ``(T, B)`` int64 next characters, mask ``(T, B)`` all ones."""

    name = "text"
    description = "Character-level language model over a text file or a generated agreement corpus (stateful)."
    params = (
        Param("path", None, "UTF-8 text file; null for the generated corpus", str, optional=True),
        Param("length", 50, "window length T (characters per training step)", int, low=1, high=MAX_LENGTH),
        Param("eval_fraction", 0.1, "share of the text, at its end, held out; 0 = none (no evaluation)", float, low=0.0, high=0.5),
        Param("reset_state_at_end", False, "zero the carried hidden state when the windows wrap to the start", bool),
        Param("depth", 2, "generated corpus only: deepest nesting of relative clauses", int, low=0, high=10),
        Param(
            "n_sentences",
            2000,
            "generated corpus only: number of sentences (the most take up to ~30 s to generate)",
            int,
            low=1,
            high=MAX_SENTENCES,
        ),
    )
    loss = "cross_entropy"
    stateful = True
    quiet_defaults = ("reset_state_at_end",)  # left out of a dumped config at its default (schema.py)

    path: Path | None  # the text file, resolved to an absolute path (None: the generated corpus)
    data_hash: str  # "sha256:<hex>" of the text's bytes

    def __init__(self, params=None, *, seed=0, dtype=np.float32, cache_dir: Path | None = None) -> None:
        super().__init__(params, seed=seed, dtype=dtype, cache_dir=cache_dir)
        self.length = T = self.p["length"]
        if self.p["path"] is None:
            data = grammar.corpus_bytes(self.rng(CORPUS_STREAM), self.p["n_sentences"], self.p["depth"])
            self.path = None
            self.source = f"the generated corpus ({self.p['n_sentences']} sentences)"
            self._culprit = "n_sentences"  # the parameter to blame when the text is too short
            self.corpus = corpus.load_bytes(data, f"task 'text': {self.source}")
        else:
            given = self.p["path"]
            self.path = _resolve(Path(given))
            self.source = f"text file {given!r}" + ("" if str(self.path) == given else f" ({self.path})")
            self._culprit = "path"
            cache = self.cache_dir if self.cache_dir is not None else corpus.default_cache_dir()
            self.corpus = corpus.load_file(self.path, f"task 'text' parameter 'path': {self.source}", cache)
        self.data_hash = f"sha256:{self.corpus.sha256}"
        self.vocab = self.corpus.vocab  # sorted by code point
        self.n_in = self.n_out = len(self.vocab)
        ids = self.corpus.ids  # (N,), a read-only memory map when cached
        n_eval = int(round(len(ids) * self.p["eval_fraction"]))
        n_train = len(ids) - n_eval
        self.held_out = self.p["eval_fraction"] > 0  # False: no evaluation set at all
        if n_train < T + 1 or (self.held_out and n_eval < T + 1):
            raise TaskError(
                f"task 'text' parameter {self._culprit!r}: {self.source} has {len(ids)} characters, "
                f"{n_train} for training and {n_eval} held out (eval_fraction {self.p['eval_fraction']:g}), "
                f"but each part needs at least one window of length + 1 = {T + 1}",
                self._culprit,
            )
        self._train_ids = ids[:n_train]  # views: batches read only the windows they need
        self._eval_ids = ids[n_train:]

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the text read (the file's bytes, or the generated corpus's)."""
        return self.data_hash

    def decode(self, start: int = 0, stop: int | None = None) -> str:
        """Characters ``start:stop`` of the whole text (training part first)."""
        return self.corpus.decode(start, stop)

    def _onehot(self, chunk: np.ndarray) -> Batch:
        """The batch of a ``(T+1, B)`` block of character ids."""
        ids = chunk.astype(np.int64)  # (T+1, B)
        x = np.zeros((*ids[:-1].shape, self.n_in), dtype=self.dtype)  # (T, B, V)
        np.put_along_axis(x, ids[:-1, :, None], 1, axis=-1)
        mask = np.ones(ids[1:].shape, dtype=self.dtype)
        return Batch(x, ids[1:].copy(), mask)


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

    def resets_state(self, step: int, batch_size: int) -> bool:
        """Whether step ``step`` starts from a zero state: it reads window 0 again after a wrap
        and ``reset_state_at_end`` is set."""
        return bool(self.p["reset_state_at_end"]) and step > 0 and step % self.windows_per_epoch(batch_size) == 0

    def eval_batch(self, size: int) -> Batch:
        if not self.held_out:
            raise TaskError("task 'text' has no held-out text (eval_fraction is 0), so nothing to evaluate", "eval_fraction")
        return super().eval_batch(size)

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
        p = self.corpus.counts(len(self._train_ids)) / len(self._train_ids)  # (V,), no pass over the text
        p = p[p > 0]
        h = float(-(p * np.log(p)).sum())
        return {"loss": h, "bpc": float(h / np.log(2)), "accuracy": float(p.max())}


def _resolve(path: Path) -> Path:
    """``path`` made absolute with symlinks resolved, as far as it exists."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: name it as given, the open reports it
        return path.absolute()
