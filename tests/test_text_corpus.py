"""The text corpus at any size: bit-identical to the whole-file implementation it replaced,
chunked UTF-8 decoding, the memory-mapped cache (reuse, concurrent builders, damage), hostile
paths, and the data fingerprint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bptt_cli.tasks import TaskError, make_task

# -- the implementation this replaces, kept verbatim as the reference ---------------------------


class OldText:
    """The whole-file text task before issue 10: ``bytes.decode`` + ``np.unique(return_inverse)``.

    Its batches are what every existing run on a text file saw, so the new loader must give
    the same vocabulary, the same training windows, the same evaluation set and the same chance.
    """

    def __init__(self, path: Path, length: int = 50, eval_fraction: float = 0.1, seed: int = 0, dtype=np.float32):
        text = path.read_bytes().decode("utf-8-sig")
        self.length, self.seed, self.dtype = length, seed, np.dtype(dtype)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        uniq, ids = np.unique(codes, return_inverse=True)
        self.vocab = "".join(map(chr, uniq))
        self.n_in = len(self.vocab)
        n_eval = int(round(len(ids) * eval_fraction))
        n_train = len(ids) - n_eval
        self._train_ids = ids[:n_train].astype(np.int64)
        self._eval_ids = ids[n_train:].astype(np.int64)

    def _onehot(self, chunk):
        x = np.eye(self.n_in, dtype=self.dtype)[chunk[:-1]]
        return x, chunk[1:].copy(), np.ones(chunk[1:].shape, dtype=self.dtype)

    def windows_per_epoch(self, B):
        return (len(self._train_ids) // B - 1) // self.length

    def train_batch(self, step, B):
        T = self.length
        i = step % self.windows_per_epoch(B)
        L = len(self._train_ids) // B
        streams = self._train_ids[: B * L].reshape(B, L).T
        return self._onehot(streams[i * T : i * T + T + 1])

    def eval_batch(self, size):
        rng = np.random.default_rng([self.seed, 1])  # EVAL_STREAM
        starts = rng.integers(0, len(self._eval_ids) - self.length, size=size)
        return self._onehot(self._eval_ids[np.arange(self.length + 1)[:, None] + starts])

    def chance(self):
        p = np.bincount(self._train_ids, minlength=self.n_in) / len(self._train_ids)
        p = p[p > 0]
        h = float(-(p * np.log(p)).sum())
        return {"loss": h, "bpc": float(h / np.log(2)), "accuracy": float(p.max())}


def random_text(n: int, alphabet: str, seed: int = 0) -> str:
    letters = np.array(list(alphabet))
    return "".join(letters[np.random.default_rng(seed).integers(len(letters), size=n)])


ASCII = "abcdefgh \n.,"
MULTI = "ab \n\u00e9\u00fc\u20ac\u4e2d\u6587\U0001d11e\U0001f600\ufeff"  # 1- to 4-byte sequences, U+FEFF inside
CORPORA = {
    "ascii": random_text(5000, ASCII).encode("utf-8"),
    "multibyte": random_text(4000, MULTI, seed=1).encode("utf-8"),
    "bom-ascii": b"\xef\xbb\xbf" + random_text(3000, ASCII, seed=2).encode("utf-8"),
    "bom-multibyte": b"\xef\xbb\xbf" + random_text(3000, MULTI, seed=3).encode("utf-8"),
}


def batch_bytes(b) -> tuple[bytes, ...]:
    x, targets, mask = (b.x, b.targets, b.mask) if hasattr(b, "x") else b
    assert targets.dtype == np.int64
    return x.tobytes(), targets.tobytes(), mask.tobytes(), x.shape


@pytest.mark.parametrize("name", list(CORPORA))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batches_are_bit_identical_to_the_old_loader(tmp_path, name, dtype):
    path = tmp_path / f"{name}.txt"
    path.write_bytes(CORPORA[name])
    for length, eval_fraction, seed in ((10, 0.1, 0), (37, 0.25, 5)):
        old = OldText(path, length, eval_fraction, seed, dtype)
        new = make_task("text", {"path": str(path), "length": length, "eval_fraction": eval_fraction}, seed=seed, dtype=dtype)
        assert new.vocab == old.vocab and new.n_in == new.n_out == old.n_in
        for B in (1, 3, 8):
            assert new.windows_per_epoch(B) == old.windows_per_epoch(B)
            for step in (0, 1, 2, old.windows_per_epoch(B) - 1, old.windows_per_epoch(B), 10**9 + 7):
                assert batch_bytes(new.train_batch(step, B)) == batch_bytes(old.train_batch(step, B)), (B, step)
        assert batch_bytes(new.eval_batch(64)) == batch_bytes(old.eval_batch(64))
        assert new.chance() == old.chance()  # the same floats, not just close
