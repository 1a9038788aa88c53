"""Corpora: the embedded default corpus and user corpora, as an ordered list of documents.

The default corpus needs no download: it is the running Python's standard-library sources (``*.py`` files
under ``sysconfig.get_paths()["stdlib"]``; test suites, ``site-packages`` and ``__pycache__`` excluded), one
document per file, in sorted order of relative path. Its sha256 fingerprint and the Python version are
recorded in every run.

User corpora (``DataConfig.corpus``):

- a text file: split into documents at blank lines (runs of ``\\n\\n``);
- a folder: every non-hidden regular file below it that decodes as UTF-8 is one document (sorted by path);
- a JSONL file (``.jsonl`` / ``.json``): one document per line, the text in ``DataConfig.field``;
- a Parquet file (``.parquet``): one document per row, the text in column ``DataConfig.field``;
- ``hf:NAME``: a Hugging Face dataset (needs the optional ``datasets`` package and, for a hub name, a
  network); ``DataConfig.field`` is the text column and ``DataConfig.hf_split`` the split.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from moelab.errors import ConfigError

FORMATS = ("auto", "text", "jsonl", "parquet", "hf")
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}


@dataclass(frozen=True)
class Corpus:
    """An ordered tuple of documents and the sha256 fingerprint of their contents (order included)."""

    name: str
    documents: tuple[str, ...]
    fingerprint: str
    meta: dict = field(default_factory=dict)

    @property
    def n_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.documents)


def fingerprint(documents) -> str:
    """sha256 over the documents, each as its 8-byte little-endian UTF-8 length followed by its bytes."""
    h = hashlib.sha256()
    for doc in documents:
        b = doc.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def default_corpus_files(root: Path | None = None) -> list[Path]:
    """The standard-library source files of the default corpus, sorted by path relative to ``root``."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in _EXCLUDED_DIRS or part.startswith(("test_", ".")) for part in rel.parts):
            continue
        if path.is_file():
            files.append(rel)
    return [root / rel for rel in sorted(files, key=lambda r: r.as_posix())]


def default_corpus() -> Corpus:
    files = default_corpus_files()
    docs = tuple(d for d in (p.read_bytes().decode("utf-8", errors="replace") for p in files) if d.strip())
    if not docs:
        raise ConfigError(
            f"data.corpus: the default corpus found no sources under {sysconfig.get_paths()['stdlib']}"
        )
    return Corpus(
        name="default",
        documents=docs,
        fingerprint=fingerprint(docs),
        meta={"source": "python-stdlib", "python_version": python_version(), "n_files": len(docs)},
    )


def _text_file_documents(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [d for d in text.split("\n\n") if d.strip()]


def _folder_documents(path: Path) -> list[str]:
    docs = []
    for p in sorted(
        (p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()
    ):
        if any(part.startswith(".") for part in p.relative_to(path).parts):
            continue
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text.strip():
            docs.append(text)
    return docs


def _jsonl_documents(path: Path, field_name: str) -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"data.corpus: {path} line {lineno} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or field_name not in row:
                keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                raise ConfigError(
                    f"data.field: '{field_name}' is not a field of {path} line {lineno} (fields: {keys})"
                )
            docs.append(str(row[field_name]))
    return docs


def _parquet_documents(path: Path, field_name: str) -> list[str]:
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001  (pyarrow raises several types for a bad file)
        raise ConfigError(
            f"data.corpus: {path} is not a readable Parquet file ({type(exc).__name__})"
        ) from None
    if field_name not in schema.names:
        raise ConfigError(
            f"data.field: '{field_name}' is not a column of {path} (columns: {', '.join(schema.names)})"
        )
    column = pq.read_table(path, columns=[field_name]).column(field_name)
    return [str(v) for v in column.to_pylist() if v is not None]


def _hf_documents(name: str, field_name: str, split: str, config_name: str | None) -> list[str]:
    try:
        import datasets  # optional dependency: pip install 'moelab[hf]'
    except ImportError:
        raise ConfigError(
            f"data.corpus: hf:{name} needs the optional 'datasets' package (pip install 'moelab[hf]')"
        ) from None
    try:
        ds = datasets.load_dataset(name, config_name, split=split)
    except Exception as exc:  # noqa: BLE001  (network, missing dataset, bad split)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"data.corpus: could not load Hugging Face dataset {name!r} split {split!r}: {msg}"
        ) from None
    columns = list(ds.column_names)
    if field_name not in columns:
        raise ConfigError(
            f"data.field: '{field_name}' is not a column of hf:{name} (columns: {', '.join(columns)})"
        )
    return [str(v) for v in ds[field_name] if v is not None]


def resolve_format(corpus: str, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"data.format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    if corpus.startswith("hf:"):
        return "hf"
    suffix = Path(corpus).suffix.lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}.get(suffix, "text")


def load_corpus(
    corpus: str = "default",
    fmt: str = "auto",
    field_name: str = "text",
    hf_split: str = "train",
    hf_config: str | None = None,
) -> Corpus:
    """Load a corpus as ordered documents. Raises ConfigError (one line) for a missing or empty corpus."""
    if corpus == "default":
        return default_corpus()
    kind = resolve_format(corpus, fmt)
    if kind == "hf":
        name = corpus[3:] if corpus.startswith("hf:") else corpus
        docs = _hf_documents(name, field_name, hf_split, hf_config)
        meta = {"source": "hf", "name": name, "split": hf_split}
    else:
        path = Path(corpus).expanduser()
        if not path.exists():
            raise ConfigError(f"data.corpus: {path} does not exist")
        if kind == "text":
            docs = _folder_documents(path) if path.is_dir() else _text_file_documents(path)
        elif path.is_dir():
            raise ConfigError(f"data.corpus: {path} is a folder; format {kind} needs a file")
        elif kind == "jsonl":
            docs = _jsonl_documents(path, field_name)
        else:
            docs = _parquet_documents(path, field_name)
        meta = {"source": kind, "path": str(path)}
    docs = tuple(d for d in docs if d.strip())
    if not docs:
        raise ConfigError(f"data.corpus: {corpus} holds no text")
    return Corpus(name=corpus, documents=docs, fingerprint=fingerprint(docs), meta=meta)
