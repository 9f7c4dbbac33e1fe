"""The text corpus at any size: bit-identical to the whole-file implementation it replaced,
chunked UTF-8 decoding, the memory-mapped cache (reuse, concurrent builders, damage), hostile
paths, and the data fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bptt_cli.tasks import TaskError, corpus, make_task


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Text files are cached under the test's own directory, never the user's ~/.cache."""
    monkeypatch.setenv("BPTT_CACHE_DIR", str(tmp_path / "cache"))


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


def test_a_vocabulary_over_256_characters_uses_uint16_and_stays_identical(tmp_path):
    alphabet = "".join(chr(c) for c in range(0x400, 0x400 + 300)) + " \n"  # Cyrillic and beyond: 302 symbols
    path = tmp_path / "wide.txt"
    path.write_text(random_text(6000, alphabet, seed=4), encoding="utf-8")
    new, old = make_task("text", {"path": str(path), "length": 20}, seed=2), OldText(path, 20, seed=2)
    assert new.corpus.ids.dtype == np.uint16 and new.vocab == old.vocab and new.n_in == 302
    assert batch_bytes(new.train_batch(3, 4)) == batch_bytes(old.train_batch(3, 4))
    assert batch_bytes(new.eval_batch(16)) == batch_bytes(old.eval_batch(16))
    assert new.chance() == old.chance()


# -- chunked reading -------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
@pytest.mark.parametrize("name", ["multibyte", "bom-multibyte", "bom-ascii"])
def test_utf8_sequences_cut_by_chunk_boundaries_decode_the_same(tmp_path, monkeypatch, name, chunk):
    """Every 2-, 3- and 4-byte sequence (and the BOM) gets cut somewhere by these chunk sizes."""
    path = tmp_path / "t.txt"
    data = CORPORA[name]
    bom = data[:3] if data.startswith(b"\xef\xbb\xbf") else b""
    path.write_bytes(bom + data[len(bom) :].decode("utf-8")[:500].encode("utf-8"))
    old = OldText(path, 10)
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(corpus, "STRIDE_MIN", 13)  # many rows of counts, split inside chunks
    new = make_task("text", {"path": str(path), "length": 10}, cache_dir=tmp_path / "c")
    assert new.vocab == old.vocab
    np.testing.assert_array_equal(np.concatenate([new._train_ids, new._eval_ids]), np.concatenate([old._train_ids, old._eval_ids]))
    assert new.decode() == path.read_bytes().decode("utf-8-sig")
    assert new.chance() == old.chance()


BAD_UTF8 = [
    (b"abc\xffdef", 3, 0xFF),  # never a UTF-8 byte
    ("h\u00e9llo".encode() + b"\xe2\x82", 6, 0xE2),  # a 3-byte sequence cut off by the end of the file
    ("\u20ac\u20ac".encode() + b"\xe2\x28\xa1", 6, 0xE2),  # a bad continuation byte
    (b"\xef\xbb\xbf" + "ab\u00e9".encode() + b"\x80", 7, 0x80),  # offsets count the BOM
    (b"\xef\xbb", 0, 0xEF),  # a BOM cut short is not text
    ("x\U0001f600".encode()[:-1] + b"y", 1, 0xF0),
]


@pytest.mark.parametrize("chunk", [1, 2, 4, 1 << 20])
@pytest.mark.parametrize(("data", "offset", "byte"), BAD_UTF8)
def test_invalid_utf8_names_the_byte_and_its_offset(tmp_path, monkeypatch, data, offset, byte, chunk):
    path = tmp_path / "bad.txt"
    path.write_bytes(data + b"z" * 200 if data != BAD_UTF8[1][0] else data)
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    with pytest.raises(TaskError) as e:
        make_task("text", {"path": str(path), "length": 5})
    assert e.value.param == "path"
    assert f"is not UTF-8 text: byte {byte:#04x} at offset {offset} cannot be decoded" in str(e.value), str(e.value)


# -- the cache -------------------------------------------------------------------------------


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "text").iterdir())


def text_file(tmp_path, name: str = "multibyte") -> Path:
    path = tmp_path / f"{name}.txt"
    path.write_bytes(CORPORA[name])
    return path


def test_second_load_maps_the_cache_without_encoding(tmp_path, monkeypatch):
    path, cache = text_file(tmp_path), tmp_path / "c"
    first = make_task("text", {"path": str(path), "length": 10}, cache_dir=cache)
    assert first.corpus.storage == "cache"
    key = first.corpus.sha256
    assert cache_files(cache) == [f"v1-{key}.ids.npy", f"v1-{key}.meta.npz"]

    def boom(*a, **k):
        raise AssertionError("the cached corpus was encoded again")

    monkeypatch.setattr(corpus, "scan", boom)
    monkeypatch.setattr(corpus, "encode", boom)
    again = make_task("text", {"path": str(path), "length": 10}, cache_dir=cache)
    assert again.corpus.storage == "cache" and isinstance(again.corpus.ids.base, np.memmap)
    assert not again.corpus.ids.flags.writeable
    assert batch_bytes(again.train_batch(5, 4)) == batch_bytes(first.train_batch(5, 4))
    assert batch_bytes(again.eval_batch(9)) == batch_bytes(first.eval_batch(9))
    # the same bytes under another name share the entry
    copy = tmp_path / "copy.txt"
    copy.write_bytes(path.read_bytes())
    assert make_task("text", {"path": str(copy), "length": 10}, cache_dir=cache).corpus.storage == "cache"


def _damage_truncate(ids: Path, meta: Path) -> None:
    ids.write_bytes(ids.read_bytes()[:-7])


def _damage_garbage_meta(ids: Path, meta: Path) -> None:
    meta.write_bytes(b"PK\x03\x04 not a zip at all")


def _damage_wrong_dtype(ids: Path, meta: Path) -> None:
    np.save(ids, np.zeros(len(np.load(ids)), dtype=np.int64))


def _damage_wrong_counts(ids: Path, meta: Path) -> None:
    with np.load(meta) as z:
        parts = dict(z)
    parts["cum"] = parts["cum"] + 1
    with open(meta, "wb") as f:
        np.savez(f, **parts)


def _damage_meta_is_a_directory(ids: Path, meta: Path) -> None:
    meta.unlink()
    meta.mkdir()


@pytest.mark.parametrize(
    "damage", [_damage_truncate, _damage_garbage_meta, _damage_wrong_dtype, _damage_wrong_counts, _damage_meta_is_a_directory]
)
def test_a_damaged_cache_entry_is_rebuilt(tmp_path, damage):
    path, cache = text_file(tmp_path), tmp_path / "c"
    key = make_task("text", {"path": str(path), "length": 10}, cache_dir=cache).corpus.sha256  # mapping dropped
    ids, meta = corpus.cache_paths(cache / "text", key)
    damage(ids, meta)  # in place: nothing may map these files now
    assert corpus.open_cached(cache / "text", key) is None
    if meta.is_dir():
        meta.rmdir()  # a directory in the way cannot be replaced (see the next test)
    again = make_task("text", {"path": str(path), "length": 10}, cache_dir=cache)
    assert again.corpus.storage == "cache"
    old = OldText(path, 10)
    assert batch_bytes(again.train_batch(2, 3)) == batch_bytes(old.train_batch(2, 3))
    assert again.chance() == old.chance()
    assert corpus.open_cached(cache / "text", key) is not None


def test_a_directory_in_the_way_falls_back_without_failing(tmp_path):
    path, cache = text_file(tmp_path), tmp_path / "c"
    key = make_task("text", {"path": str(path), "length": 10}, cache_dir=cache).corpus.sha256
    ids, meta = corpus.cache_paths(cache / "text", key)
    meta.unlink()
    meta.mkdir()
    task = make_task("text", {"path": str(path), "length": 10}, cache_dir=cache)
    assert task.corpus.storage == "temp"
    assert task.vocab == OldText(path, 10).vocab


def test_an_unusable_cache_dir_falls_back_to_a_temp_file_then_memory(tmp_path, monkeypatch):
    path = text_file(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    reference = OldText(path, 10)
    task = make_task("text", {"path": str(path), "length": 10}, cache_dir=blocker / "cache")
    assert task.corpus.storage == "temp" and isinstance(task.corpus.ids.base, np.memmap)
    assert batch_bytes(task.train_batch(1, 2)) == batch_bytes(reference.train_batch(1, 2))

    def no_temp(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(corpus.tempfile, "TemporaryFile", no_temp)
    task = make_task("text", {"path": str(path), "length": 10}, cache_dir=blocker / "cache")
    assert task.corpus.storage == "memory"
    assert batch_bytes(task.train_batch(1, 2)) == batch_bytes(reference.train_batch(1, 2))
    assert task.chance() == reference.chance()


BUILDER = """
import sys, time
from pathlib import Path
from bptt_cli.tasks import corpus, make_task
corpus.CHUNK_BYTES = 97  # many small writes: the two builders overlap
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
task = make_task("text", {"path": sys.argv[1], "length": 10}, cache_dir=sys.argv[2])
b = task.train_batch(7, 3)
print(task.corpus.storage, task.fingerprint(), b.x.sum(), b.targets.sum(), task.chance()["loss"])
"""


def test_two_processes_building_one_entry_at_once_both_succeed_and_agree(tmp_path):
    import subprocess
    import sys

    path, cache, go = text_file(tmp_path), tmp_path / "c", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", BUILDER, str(path), str(cache), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out.split())
    assert outs[0] == outs[1] and outs[0][0] == "cache"
    key = outs[0][1].removeprefix("sha256:")
    assert cache_files(cache) == [f"v1-{key}.ids.npy", f"v1-{key}.meta.npz"]  # no temp file left behind
    here = make_task("text", {"path": str(path), "length": 10}, cache_dir=cache)
    b = here.train_batch(7, 3)
    assert [here.corpus.storage, here.fingerprint(), str(b.x.sum()), str(b.targets.sum())] == outs[0][:4]


def test_a_file_that_changes_while_it_is_encoded_is_refused(tmp_path, monkeypatch):
    path = text_file(tmp_path, "ascii")
    real_scan = corpus.scan

    def scan_then_edit(chunks, where):
        out = real_scan(chunks, where)
        with open(path, "ab") as f:
            f.write(b"more")
        return out

    monkeypatch.setattr(corpus, "scan", scan_then_edit)
    with pytest.raises(TaskError, match="changed while it was being read") as e:
        make_task("text", {"path": str(path), "length": 10}, cache_dir=tmp_path / "c")
    assert e.value.param == "path"
    assert not list((tmp_path / "c" / "text").iterdir())  # nothing half-built published


# -- the data fingerprint --------------------------------------------------------------------


def test_fingerprint_is_the_content_hash(tmp_path):
    import hashlib

    path = text_file(tmp_path, "bom-ascii")
    task = make_task("text", {"path": str(path), "length": 10})
    assert task.fingerprint() == task.data_hash == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert task.path == path.resolve() and task.path.is_absolute()
    path.write_bytes(path.read_bytes().replace(b"a", b"b", 1))
    changed = make_task("text", {"path": str(path), "length": 10})
    assert changed.fingerprint() != task.fingerprint()
    generated = make_task("text", {"n_sentences": 50}, seed=3)
    assert generated.fingerprint() == make_task("text", {"n_sentences": 50}, seed=3).fingerprint()
    assert generated.fingerprint() != make_task("text", {"n_sentences": 50}, seed=4).fingerprint()
    assert generated.path is None
    assert make_task("delay").fingerprint() is None


def test_a_relative_path_is_stored_resolved(tmp_path, monkeypatch):
    text_file(tmp_path, "ascii")
    monkeypatch.chdir(tmp_path)
    task = make_task("text", {"path": "ascii.txt", "length": 10})
    assert task.path == (tmp_path / "ascii.txt").resolve()
    assert task.p["path"] == "ascii.txt"  # the config keeps what the user wrote


# -- hostile paths ---------------------------------------------------------------------------

LOADER = """
import sys
from bptt_cli.tasks import TaskError, make_task
try:
    make_task("text", {"path": sys.argv[1], "length": 5}, cache_dir=sys.argv[2])
except TaskError as e:
    print(e.param, str(e), sep="\\n")
    sys.exit(2)
print("loaded")
"""


def load_in_subprocess(path, cache) -> tuple[int, str]:
    """Load ``path`` in a fresh process; a hang fails the test at the timeout instead of stalling it."""
    import subprocess
    import sys

    try:
        r = subprocess.run([sys.executable, "-c", LOADER, str(path), str(cache)], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path} hung for 20 s")
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout


def _fifo(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe")
    return tmp_path / "pipe", "a FIFO (named pipe)"


def _dev_zero(tmp_path):
    return Path("/dev/zero"), "a character device"


def _directory(tmp_path):
    return tmp_path, "a directory"


def _link_to_dev_zero(tmp_path):
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    return tmp_path / "zero.txt", "a character device"


def _link_to_fifo(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "pipe.txt").symlink_to(tmp_path / "pipe")
    return tmp_path / "pipe.txt", "a FIFO (named pipe)"


@pytest.mark.parametrize("make", [_fifo, _dev_zero, _directory, _link_to_dev_zero, _link_to_fifo])
def test_only_regular_files_are_read(tmp_path, make):
    path, kind = make(tmp_path)
    code, out = load_in_subprocess(path, tmp_path / "c")
    param, message = out.split("\n", 1)
    assert code == 2 and param == "path", out
    assert str(path) in message and f"is {kind}, not a regular file; a regular UTF-8 text file is needed" in message


def test_random_bytes_and_empty_files_are_refused(tmp_path):
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, size=100_000, dtype=np.uint8).tobytes())
    code, out = load_in_subprocess(noise, tmp_path / "c")
    assert code == 2 and "is not UTF-8 text: byte 0x" in out and "at offset" in out, out
    empty = tmp_path / "empty.txt"
    empty.touch()
    code, out = load_in_subprocess(empty, tmp_path / "c")
    assert code == 2 and out.endswith("is empty\n"), out
    bom_only = tmp_path / "bom.txt"
    bom_only.write_bytes(b"\xef\xbb\xbf")
    code, out = load_in_subprocess(bom_only, tmp_path / "c")
    assert code == 2 and "has 0 characters" in out, out
    assert not (tmp_path / "c" / "text").exists() or not list((tmp_path / "c" / "text").iterdir())


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    sparse = tmp_path / "sparse.txt"
    with open(sparse, "wb") as f:
        f.truncate(corpus.MAX_TEXT_BYTES + 1)  # takes no disk space
    code, out = load_in_subprocess(sparse, tmp_path / "c")
    assert code == 2 and "is 17,179,869,185 bytes; text files up to 17,179,869,184 bytes (16 GiB) are supported" in out


def test_oversized_files_and_vocabularies_are_refused(tmp_path, monkeypatch):
    """A file that reports no size (like those in /proc) or grows while it is read is cut off too."""
    proc = Path("/proc/self/status")
    if not proc.is_file() or proc.stat().st_size != 0:
        pytest.skip("needs a /proc file that reports size 0")
    monkeypatch.setattr(corpus, "MAX_TEXT_BYTES", 100)
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 64)
    with pytest.raises(TaskError, match=r"has more than 100 bytes; text files up to 100 bytes \(9.31323e-08 GiB\) are supported"):
        make_task("text", {"path": str(proc)})
    path = text_file(tmp_path, "multibyte")
    monkeypatch.setattr(corpus, "MAX_TEXT_BYTES", 1 << 30)
    monkeypatch.setattr(corpus, "MAX_VOCAB", 5)
    with pytest.raises(TaskError, match=r"has 12 distinct characters; at most 5 are supported") as e:
        make_task("text", {"path": str(path)})
    assert e.value.param == "path"


def test_the_generated_corpus_stays_in_memory_and_out_of_the_cache(tmp_path):
    task = make_task("text", {"n_sentences": 100}, cache_dir=tmp_path / "c")
    assert task.corpus.storage == "memory" and task.corpus.ids.dtype == np.uint8
    assert not (tmp_path / "c").exists()
    assert not hasattr(task, "text")  # no whole decoded str is kept
