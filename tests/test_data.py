"""moelab.data: corpora, tokenizers, token shards and deterministic batches (checked against plain
references)."""

from __future__ import annotations

import json
import math
import sys
import types
from collections import Counter

import numpy as np
import pytest

from moelab.data import batches, corpus, prepare, shards, tokenizer
from moelab.errors import ConfigError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOELAB_CACHE_DIR", str(tmp_path / "cache"))


def _docs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "déjà", "vu", "λx", "return", "self", "(", ")", "\n", "    "]
    return [" ".join(rng.choice(words, size=int(rng.integers(5, 60)))) for _ in range(n)]


# ---------------------------------------------------------------- corpora
def test_default_corpus_files_exclude_tests_and_sort(tmp_path):
    root = tmp_path / "lib"
    for rel in [
        "b.py",
        "a.py",
        "pkg/c.py",
        "test/x.py",
        "pkg/tests/y.py",
        "pkg/test_z.py",
        "site-packages/s.py",
        "idlelib/idle_test/t.py",
        "pkg/__pycache__/q.py",
        "notes.txt",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    got = [p.relative_to(root).as_posix() for p in corpus.default_corpus_files(root)]
    assert got == ["a.py", "b.py", "pkg/c.py"]


def test_default_corpus_is_stdlib_with_fingerprint():
    c = corpus.default_corpus()
    assert c.meta["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert len(c.documents) > 100 and c.n_bytes > 1_000_000
    assert c.fingerprint == corpus.fingerprint(c.documents)
    assert any("def " in d for d in c.documents[:50])


def test_fingerprint_depends_on_order_and_boundaries():
    assert corpus.fingerprint(["ab", "c"]) != corpus.fingerprint(["a", "bc"])
    assert corpus.fingerprint(["a", "b"]) != corpus.fingerprint(["b", "a"])
    assert len(corpus.fingerprint(["x"])) == 64


def test_text_file_folder_jsonl_parquet(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("one\ntwo\n\n\nthree\n\n  \n")
    assert corpus.load_corpus(str(text)).documents == ("one\ntwo", "\nthree")
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("bee")
    (folder / "sub" / "a.md").write_text("ay")
    (folder / ".hidden").write_text("no")
    (folder / "bin.dat").write_bytes(b"\xff\xfe\x00")
    assert corpus.load_corpus(str(folder)).documents == ("bee", "ay")
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"body": f"doc {i}", "id": i}) for i in range(3)))
    c = corpus.load_corpus(str(jl), field_name="body")
    assert c.documents == ("doc 0", "doc 1", "doc 2")
    with pytest.raises(ConfigError, match=r"data.field: 'text' is not a field .*fields: body, id"):
        corpus.load_corpus(str(jl))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["x1", None, "x2"], "n": [1, 2, 3]}), pqf)
    assert corpus.load_corpus(str(pqf), field_name="content").documents == ("x1", "x2")
    with pytest.raises(ConfigError, match=r"'text' is not a column .*columns: content, n"):
        corpus.load_corpus(str(pqf))


def test_missing_and_empty_corpus(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        corpus.load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(ConfigError, match="holds no text"):
        corpus.load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ConfigError, match="holds no text"):
        corpus.load_corpus(str(tmp_path / "emptydir"))
    with pytest.raises(ConfigError, match="data.format"):
        corpus.load_corpus(str(tmp_path / "empty.txt"), fmt="csv")


def test_hf_loading_path_through_local_files(tmp_path, monkeypatch):
    """The hf: path through a local JSON file: the real `datasets` when installed, else a local stand-in."""
    jl = tmp_path / "hf.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(4)))
    try:
        import datasets  # noqa: F401

        name = "json"
        kwargs = {"data_files": str(jl)}
        monkeypatch.setattr(
            datasets, "load_dataset", lambda n, c, split: datasets.Dataset.from_json(str(jl))
        )  # no network
    except ImportError:
        calls = []

        class FakeDataset:
            def __init__(self, rows):
                self.column_names = list(rows[0])
                self._rows = rows

            def __getitem__(self, col):
                return [r[col] for r in self._rows]

        def load_dataset(name, config, split):
            calls.append((name, config, split))
            return FakeDataset([json.loads(line) for line in jl.read_text().splitlines()])

        monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
        name, kwargs = "some/dataset", {}
    del kwargs
    c = corpus.load_corpus(f"hf:{name}", hf_split="train")
    assert c.documents == tuple(f"row {i}" for i in range(4)) and c.meta["source"] == "hf"
    with pytest.raises(ConfigError, match="'body' is not a column of hf:"):
        corpus.load_corpus(f"hf:{name}", field_name="body")


def test_hf_without_datasets_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match="optional 'datasets' package"):
        corpus.load_corpus("hf:wikitext")


# ---------------------------------------------------------------- tokenizers
def test_byte_tokenizer_roundtrip_and_vocab_check():
    tok = tokenizer.get_tokenizer("byte", None, 256)
    s = "héllo, λ\n"
    ids = tok.encode(s)
    assert list(ids) == list(s.encode("utf-8")) and tok.decode(ids) == s
    with pytest.raises(ConfigError, match="model.vocab_size=512 does not match the byte tokenizer"):
        tokenizer.get_tokenizer("byte", None, 512)
    with pytest.raises(ConfigError, match="data.tokenizer"):
        tokenizer.get_tokenizer("wordpiece", None, 256)


def test_bpe_trains_caches_and_counts_bytes():
    c = corpus.Corpus("t", tuple(_docs(60)), corpus.fingerprint(_docs(60)))
    tok = tokenizer.get_tokenizer("bpe", c, 300)
    path = tokenizer.bpe_cache_path(300, c.fingerprint)
    assert path.exists() and tok.vocab_size <= 300 and tok.eod_id == 0
    mtime = path.stat().st_mtime_ns
    tok2 = tokenizer.get_tokenizer("bpe", c, 300)
    assert path.stat().st_mtime_ns == mtime  # loaded, not retrained
    tb = tok.token_bytes()
    for doc in c.documents[:10]:
        ids = tok.encode(doc)
        assert list(ids) == list(tok2.encode(doc))
        assert tok.decode(ids) == doc
        assert int(tb[ids].sum()) == len(doc.encode("utf-8"))
        assert len(ids) < len(doc.encode("utf-8"))  # merges happened
    with pytest.raises(ConfigError, match="too small for BPE"):
        tokenizer.get_tokenizer("bpe", c, 200)


# ---------------------------------------------------------------- shards
def test_val_split_by_document_is_deterministic():
    m = shards.val_documents(1000, 0.1)
    assert np.array_equal(m, shards.val_documents(1000, 0.1))
    assert 60 < m.sum() < 140
    assert shards.val_documents(2, 0.01).sum() == 1 and shards.val_documents(2, 0.99).sum() == 1
    with pytest.raises(ConfigError, match="at least 2"):
        shards.val_documents(1, 0.1)


@pytest.mark.parametrize("kind,vocab", [("byte", 256), ("bpe", 320)])
def test_store_matches_reference_across_shards(monkeypatch, kind, vocab):
    monkeypatch.setattr(shards, "SHARD_TOKENS", 97)  # many small shards
    docs = _docs(50, seed=1)
    c = corpus.Corpus("t", tuple(docs), corpus.fingerprint(docs))
    tok = tokenizer.get_tokenizer(kind, c, vocab)
    store = shards.build_token_store(c, tok, val_fraction=0.2)
    mask = shards.val_documents(len(docs), 0.2)
    pairs = list(zip(docs, mask, strict=True))
    ref = {
        s: np.concatenate([np.append(tok.encode(d), 0) for d, v in pairs if v == (s == "val")])
        for s in ("train", "val")
    }
    assert len(store.train.shards) > 3
    for s in ("train", "val"):
        stream = getattr(store, s)
        assert len(stream) == len(ref[s])
        assert np.array_equal(stream.window(0, len(stream)), ref[s])
        rng = np.random.default_rng(0)
        for _ in range(20):
            n = int(rng.integers(1, min(250, len(stream)) + 1))
            a = int(rng.integers(0, len(stream) - n + 1))
            assert np.array_equal(stream.window(a, n), ref[s][a : a + n])
    assert store.meta["splits"]["val"]["documents"] == mask.sum()
    with pytest.raises(IndexError):
        store.train.window(len(store.train) - 1, 2)
    # unigram entropy against a Counter reference
    cnt = Counter(ref["train"].tolist())
    p = np.array(list(cnt.values()), float) / len(ref["train"])
    assert math.isclose(store.unigram_entropy(vocab), float(-(p * np.log(p)).sum()), rel_tol=1e-12)


def test_store_written_once(tmp_path):
    docs = _docs(10)
    c = corpus.Corpus("t", tuple(docs), corpus.fingerprint(docs))
    tok = tokenizer.ByteTokenizer()
    s1 = shards.build_token_store(c, tok, 0.3)
    stamp = (s1.path / "meta.json").stat().st_mtime_ns
    s2 = shards.build_token_store(c, tok, 0.3)
    assert s2.path == s1.path and (s2.path / "meta.json").stat().st_mtime_ns == stamp
    leftovers = [p for p in s1.path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# ---------------------------------------------------------------- batches
def test_batches_pure_function_of_seed_and_step():
    docs = _docs(30)
    c = corpus.Corpus("t", tuple(docs), corpus.fingerprint(docs))
    store = shards.build_token_store(c, tokenizer.ByteTokenizer(), 0.2)
    flat = store.train.window(0, len(store.train))
    b = batches.train_batch(store.train, 3, 7, 4, 16)
    assert b.shape == (4, 17) and b.dtype == np.int32
    assert np.array_equal(b, batches.train_batch(store.train, 3, 7, 4, 16))
    assert not np.array_equal(b, batches.train_batch(store.train, 3, 8, 4, 16))
    assert not np.array_equal(b, batches.train_batch(store.train, 4, 7, 4, 16))
    s = flat.tobytes()
    for row in b:  # every row is a contiguous window of the training stream
        assert row.astype(np.int32).tobytes() in s
    with pytest.raises(ConfigError, match="train.seq_len"):
        batches.train_batch(store.train, 0, 0, 1, len(store.train))


def test_eval_windows_fixed_and_cover_val():
    docs = _docs(30)
    c = corpus.Corpus("t", tuple(docs), corpus.fingerprint(docs))
    store = shards.build_token_store(c, tokenizer.ByteTokenizer(), 0.3)
    starts = batches.eval_windows(store.val, eval_tokens=100, seq_len=8, batch_size=4)
    assert len(starts) == 16 and starts[0] == 0 and starts[-1] == len(store.val) - 9
    got = list(batches.eval_batches(store.val, starts, 8, 4))
    assert len(got) == 4 and all(g.shape == (4, 9) for g in got)
    with pytest.raises(ConfigError, match="held-out tokens"):
        batches.eval_windows(store.val, 10, len(store.val), 1)


def test_prepare_default_corpus_byte():
    d = prepare("default", tokenizer="byte", vocab_size=256)
    assert d.store.meta["corpus_fingerprint"] == d.fingerprint
    assert len(d.store.train) + len(d.store.val) == d.corpus.n_bytes + len(d.corpus.documents)
    h = d.store.unigram_entropy(256)
    assert 2.0 < h < math.log(256)
