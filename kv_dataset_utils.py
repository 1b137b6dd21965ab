"""Associative key-value retrieval data: samples, tokenizer, collate, and a CLI to dump datasets.

A sample is ``{context, query, target}``::

    context  !ab:x1!!Qz:7f!...|        one or more segments, each ending with '|'
    query    ?!Qz:
    target   7f!|

The context holds ``n_pairs`` ``!key:value!`` pairs at random positions, optionally inside
random-character noise (segments of bounded length, or a set fraction of the context). Keys are
unique within a sample; values may repeat. With ``n_pairs=0`` (the copy task) the query is ``?`` and
the target is the context itself.

Generation is vectorised with numpy over chunks of samples and writes Arrow string buffers
directly, so a million samples take seconds, not minutes.

``load_kv_dataset`` reads these datasets and the published ones (``yurakuratov/`` on the hub), which
``download_published`` fetches.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

RESERVED_CHARS = "!?:|"
BASE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# Letters appended, in this order, beyond the 62 ASCII ones: Latin-1 supplement and Latin
# extended A/B, then Greek, then Cyrillic. Every one is a single UTF-16 code unit (< U+0800).
EXTRA_ALPHABET_RANGES = ((0x00C0, 0x024F), (0x0391, 0x03C9), (0x0410, 0x044F))
MAX_VOCAB_SIZE = 512
MAX_CONTEXT_LEN = 1 << 16  # characters; the row hash has this many position multipliers
SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
PAD_ID = 0
COLUMNS = ("context", "query", "target")


class KVDataError(ValueError):
    """Bad data input. The message names the problem and the fix."""


def kv_alphabet(vocab_size: int = 62) -> str:
    """The first ``vocab_size`` key/value characters: ``[a-zA-Z0-9]`` then fixed Unicode letters."""
    if not 1 <= vocab_size <= MAX_VOCAB_SIZE:
        raise KVDataError(f"vocab_size={vocab_size} is out of range: choose 1..{MAX_VOCAB_SIZE}.")
    chars = list(BASE_ALPHABET)
    for lo, hi in EXTRA_ALPHABET_RANGES:
        chars.extend(c for c in map(chr, range(lo, hi + 1)) if c.isalpha() and c.isprintable())
    return "".join(chars[:vocab_size])


def format_count(n: int) -> str:
    """1000000 -> '1M', 100000 -> '100K', 1500 -> '1500'."""
    for unit, scale in (("M", 1_000_000), ("K", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


@dataclass(frozen=True)
class KVTaskConfig:
    """Parameters of one KV-retrieval task; invalid combinations raise at construction."""

    n_pairs: int = 16
    key_len: int = 2
    value_len: int = 2
    vocab_size: int = 62
    n_segments: int = 1
    min_segment_len: int = 0  # noise characters per segment, drawn uniformly in [min, max]
    max_segment_len: int = 0
    noise_ratio: float = 0.0  # or: noise characters as this fraction of the context (one segment)
    # ':' between key and value (the paper's '!k:v!'); without it ('!kv!') the value follows its key directly
    key_value_separator: bool = True

    def __post_init__(self):
        kv_alphabet(self.vocab_size)  # range check
        if self.n_pairs < 0 or self.key_len < 1 or self.value_len < 1 or self.n_segments < 1:
            raise KVDataError(
                f"need n_pairs >= 0, key_len >= 1, value_len >= 1, n_segments >= 1; got {self}.")
        if not 0 <= self.min_segment_len <= self.max_segment_len:
            raise KVDataError(f"need 0 <= min_segment_len <= max_segment_len; got "
                              f"{self.min_segment_len} and {self.max_segment_len}.")
        if self.n_pairs > self.n_distinct_keys:
            raise KVDataError(
                f"n_pairs={self.n_pairs} but only {self.n_distinct_keys} distinct keys exist "
                f"(vocab_size={self.vocab_size} ** key_len={self.key_len}); keys are unique within "
                f"a sample, so lower n_pairs or raise key_len or vocab_size.")
        if self.n_pairs == 0 and self.max_segment_len == 0:
            raise KVDataError("the copy task (n_pairs=0) needs noise to copy: set max_segment_len > 0.")
        if not 0 <= self.noise_ratio < 1:
            raise KVDataError(f"noise_ratio={self.noise_ratio} is out of range: choose 0 <= noise_ratio < 1.")
        if self.noise_ratio and (self.n_pairs == 0 or self.n_segments != 1 or self.max_segment_len):
            raise KVDataError(
                f"noise_ratio={self.noise_ratio} sets the noise of a one-segment context around its pairs: "
                f"use it with n_pairs >= 1 and leave n_segments, min_segment_len and max_segment_len at "
                f"their defaults (got n_pairs={self.n_pairs}, n_segments={self.n_segments}, "
                f"max_segment_len={self.max_segment_len}).")
        if self.noise_ratio and self.noise_chars == 0:
            raise KVDataError(f"noise_ratio={self.noise_ratio} rounds to no noise character for {self.n_pairs} "
                              f"pairs: raise noise_ratio.")
        if self.max_context_len > MAX_CONTEXT_LEN:
            raise KVDataError(f"contexts of up to {self.max_context_len} characters exceed the limit of "
                              f"{MAX_CONTEXT_LEN}: lower n_pairs, the segment lengths or noise_ratio.")

    @property
    def n_distinct_keys(self) -> int:
        return self.vocab_size ** self.key_len

    @property
    def pair_len(self) -> int:
        return self.key_len + self.value_len + 2 + self.key_value_separator  # '!' key [':'] value '!'

    @property
    def noise_chars(self) -> int:
        """Noise characters per context under ``noise_ratio`` r: with C = n_pairs * pair_len + 1
        other characters (the pairs and the closing '|'), the integer nearest r C / (1 - r), so
        noise / len(context) is within 1 / (2 len(context) - 1) of r."""
        r = Fraction(repr(float(self.noise_ratio)))
        return math.floor(r * (self.n_pairs * self.pair_len + 1) / (1 - r) + Fraction(1, 2))

    @property
    def segment_len_range(self) -> tuple[int, int]:
        """(min, max) noise characters per segment."""
        if self.noise_ratio:
            return self.noise_chars, self.noise_chars
        return self.min_segment_len, self.max_segment_len

    @property
    def max_context_len(self) -> int:
        return self.n_pairs * self.pair_len + self.n_segments * (self.segment_len_range[1] + 1)

    @property
    def has_noise(self) -> bool:
        return self.segment_len_range[1] > 0 or self.n_segments > 1

    @property
    def name(self) -> str:
        """Folder-name stem: ``N16-K2V2-V62``, ``N8-K2V2-V62_S2(100-200)``, ``N16-K2V2-V62_noise_0.5``;
        ``_nosep`` follows the vocabulary size when pairs have no ':'."""
        stem = f"N{self.n_pairs}-K{self.key_len}V{self.value_len}-V{self.vocab_size}"
        if not self.key_value_separator:
            stem += "_nosep"
        if self.noise_ratio:
            stem += f"_noise_{float(self.noise_ratio)!r}"
        elif self.has_noise:
            stem += f"_S{self.n_segments}({self.min_segment_len}-{self.max_segment_len})"
        return stem

    def log10_n_contexts(self) -> float:
        """log10 of the number of distinct contexts, ignoring noise (a lower bound with noise)."""
        v = math.log10(self.vocab_size)
        ordered_keys = sum(math.log10(self.n_distinct_keys - i) for i in range(self.n_pairs))
        noise = 0.0 if self.n_pairs else self.max_segment_len * self.n_segments * v
        return ordered_keys + self.n_pairs * self.value_len * v + noise


# ---------------------------------------------------------------------------------------------
# Vectorised sampling. Strings are built as arrays of code points, 0 meaning "no character".
# ---------------------------------------------------------------------------------------------

def _distinct_integers(rng: np.random.Generator, n_rows: int, k: int, space: int) -> np.ndarray:
    """``[n_rows, k]`` ordered samples without replacement from ``range(space)``, exactly uniform.

    Whole-row rejection where collisions are rare; otherwise a vectorised partial Fisher-Yates
    shuffle over a dense ``[n_rows, space]`` permutation.
    """
    p_no_collision = math.exp(-k * (k - 1) / (2 * space)) if k else 1.0
    if p_no_collision > 0.05 or space > 1 << 16:
        out = rng.integers(0, space, size=(n_rows, k))
        todo = np.arange(n_rows)
        while todo.size:
            rows = np.sort(out[todo], axis=1)
            todo = todo[(rows[:, 1:] == rows[:, :-1]).any(axis=1)]
            out[todo] = rng.integers(0, space, size=(todo.size, k))
        return out
    perm = np.broadcast_to(np.arange(space, dtype=np.int32), (n_rows, space)).copy()
    rows = np.arange(n_rows)
    for i in range(k):
        j = rng.integers(i, space, size=n_rows)
        perm[rows, i], perm[rows, j] = perm[rows, j], perm[rows, i]
    return perm[:, :k].astype(np.int64)


def _digits(index: np.ndarray, base: int, length: int) -> np.ndarray:
    """Integer -> ``length`` base-``base`` digits, most significant first: ``[..., length]``."""
    powers = base ** np.arange(length - 1, -1, -1)
    return (index[..., None] // powers) % base


def _sample_codes(cfg: KVTaskConfig, rng: np.random.Generator, n: int):
    """Draw ``n`` samples as code-point arrays ``(context [n, Lc], query [n, Lq], target [n, Lt])``."""
    alphabet = np.array([ord(c) for c in kv_alphabet(cfg.vocab_size)], dtype=np.uint32)
    excl, colon, quest, bar = (np.uint32(ord(c)) for c in "!:?|")
    N = cfg.n_pairs

    key_index = _distinct_integers(rng, n, N, cfg.n_distinct_keys)  # [n, N]
    if cfg.n_distinct_keys <= 1 << 20:  # gather from a table of all keys: faster than division
        keys = alphabet[_digits(np.arange(cfg.n_distinct_keys), cfg.vocab_size, cfg.key_len)][key_index]
    else:
        keys = alphabet[_digits(key_index, cfg.vocab_size, cfg.key_len)]  # [n, N, key_len]
    values = alphabet[rng.integers(0, cfg.vocab_size, size=(n, N, cfg.value_len))]
    col = lambda c: np.full((n, N, 1), c, dtype=np.uint32)  # noqa: E731
    sep = [col(colon)] if cfg.key_value_separator else []
    pairs = np.concatenate([col(excl), keys, *sep, values, col(excl)], axis=2)  # [n, N, pair_len]

    if cfg.has_noise:
        context = _place_in_noise(cfg, rng, pairs, alphabet)
    else:
        context = np.concatenate([pairs.reshape(n, -1), np.full((n, 1), bar, np.uint32)], axis=1)

    if N == 0:
        return context, np.full((n, 1), quest, np.uint32), context
    asked = rng.integers(0, N, size=n)
    rows = np.arange(n)
    query = np.concatenate([np.full((n, 1), quest, np.uint32), np.full((n, 1), excl, np.uint32),
                            keys[rows, asked], *[s[:, 0] for s in sep]], axis=1)
    target = np.concatenate([values[rows, asked], np.full((n, 1), excl, np.uint32),
                             np.full((n, 1), bar, np.uint32)], axis=1)
    return context, query, target


def _place_in_noise(cfg: KVTaskConfig, rng, pairs: np.ndarray, alphabet: np.ndarray) -> np.ndarray:
    """Scatter pairs into random segments at random positions inside random-character noise.

    Every unit (a noise character, a whole pair, a segment's closing '|') gets a sort key
    ``segment * stride + slot``; a stable argsort per row lays the units out in order.
    """
    n, N, W = pairs.shape
    S, (L_min, L) = cfg.n_segments, cfg.segment_len_range
    stride = 2 * L + 4
    seg_len = rng.integers(L_min, L + 1, size=(n, S))
    seg_of_pair = rng.integers(0, S, size=(n, N))
    # a pair inserted before noise position q (0..seg_len) sorts at 2q, noise position p at 2p+1
    slot_of_pair = 2 * (rng.random((n, N)) * (np.take_along_axis(seg_len, seg_of_pair, 1) + 1)).astype(np.int64)
    pos = np.arange(L)
    noise_key = np.where(pos < seg_len[..., None], np.arange(S)[:, None] * stride + 2 * pos + 1,
                         np.iinfo(np.int64).max)  # [n, S, L]; past the segment's end sorts last
    keys = np.concatenate([noise_key.reshape(n, S * L), seg_of_pair * stride + slot_of_pair,
                           np.broadcast_to(np.arange(S) * stride + 2 * L + 2, (n, S))], axis=1)

    units = np.zeros((n, S * L + N + S, W), dtype=np.uint32)
    units[:, : S * L, 0] = alphabet[rng.integers(0, len(alphabet), size=(n, S * L))]
    units[:, S * L: S * L + N] = pairs
    units[:, S * L + N:, 0] = ord("|")
    units[:, : S * L, 0] *= (noise_key.reshape(n, S * L) != np.iinfo(np.int64).max)
    order = np.argsort(keys, axis=1, kind="stable")
    return np.take_along_axis(units, order[..., None], axis=1).reshape(n, -1)


# Position-dependent odd multipliers for a 64-bit row hash (fixed, so hashes are reproducible).
_HASH_MULTIPLIERS = np.random.default_rng(0x6B76).integers(1, 2**63, size=MAX_CONTEXT_LEN, dtype=np.uint64) | np.uint64(1)


class _StringChunk:
    """Rows of code points (0-padded) packed as flat code points plus row offsets."""

    def __init__(self, codes: np.ndarray):
        mask = codes != 0
        self.flat = codes[mask]  # row-major: rows stay contiguous and in order
        self.offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)

    def __len__(self):
        return len(self.offsets) - 1

    def row_hashes(self) -> np.ndarray:
        """64-bit hash per row, a function of the string alone (not of the chunk it sits in):

            hash(s) = len(s) * C + sum_p code(s[p]) * M[p]   (mod 2**64)

        with fixed odd multipliers ``M``. Rows are laid out as a zero-padded ``[rows, width]``
        matrix; padding adds zero terms, so the width of the chunk does not change a row's hash.
        """
        lengths = np.diff(self.offsets)
        width = int(lengths.max(initial=0))
        if (lengths == width).all():  # equal lengths: the flat buffer already is the matrix
            padded = self.flat.reshape(len(self), width)
        else:
            padded = np.zeros((len(self), width), self.flat.dtype)
            padded[np.arange(width) < lengths[:, None]] = self.flat  # row-major fill, row by row
        with np.errstate(over="ignore"):
            return (padded.astype(np.uint64) @ _HASH_MULTIPLIERS[:width]
                    + lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))

    def to_arrow(self):
        """Vectorised UTF-8 encoding (code points below U+10000) into a ``pyarrow.StringArray``."""
        import pyarrow as pa

        c = self.flat
        if not len(c) or c.max() < 0x80:  # ASCII: one byte per character
            return pa.StringArray.from_buffers(len(self), pa.py_buffer(self.offsets.astype(np.int32)),
                                               pa.py_buffer(c.astype(np.uint8)))
        n_bytes = 1 + (c >= 0x80) + (c >= 0x800)
        byte_end = np.cumsum(n_bytes)
        start = byte_end - n_bytes
        out = np.empty(int(byte_end[-1]) if len(c) else 0, dtype=np.uint8)
        for width, lead in ((1, 0x00), (2, 0xC0), (3, 0xE0)):
            sel = n_bytes == width
            s, v = start[sel], c[sel]
            out[s] = lead | (v >> (6 * (width - 1)))
            for k in range(1, width):
                out[s + k] = 0x80 | ((v >> (6 * (width - 1 - k))) & 0x3F)
        byte_offsets = np.concatenate([[0], byte_end])[self.offsets].astype(np.int32)
        return pa.StringArray.from_buffers(len(self), pa.py_buffer(byte_offsets), pa.py_buffer(out))


@dataclass
class SplitReport:
    n_samples: int
    n_regenerated_for_overlap: int = 0  # drawn, found in an earlier split, and replaced
    overlap_with_earlier_splits: int = 0  # left in the final split (only when unavoidable)


def generate_split(cfg: KVTaskConfig, n: int, rng: np.random.Generator, *, exclude_hashes=None,
                   exclude_contexts=None, chunk_size: int = 32768, progress=None, max_refills: int = 20):
    """Generate ``n`` samples as a ``pyarrow.Table`` plus the row hashes of its contexts.

    Contexts found in ``exclude_contexts`` (earlier splits; candidates located by 64-bit hash,
    then confirmed by string comparison) are dropped and redrawn from the same stream.
    """
    import pyarrow as pa

    tables, hashes, report = [], [], SplitReport(n)
    remaining, rounds = n, 0
    while remaining > 0:
        take = min(chunk_size, remaining)
        codes = _sample_codes(cfg, rng, take)
        chunks = [_StringChunk(c) for c in codes]
        h = chunks[0].row_hashes()
        keep = np.ones(take, dtype=bool)
        if exclude_hashes is not None and rounds < max_refills:
            candidates = np.flatnonzero(np.isin(h, exclude_hashes))
            if candidates.size:
                ctx = chunks[0].to_arrow()
                keep[candidates] = [not _contains(exclude_contexts, ctx[int(i)].as_py()) for i in candidates]
                report.n_regenerated_for_overlap += int((~keep).sum())
                rounds += not keep.all()
        elif exclude_hashes is not None:
            report.overlap_with_earlier_splits += int(np.isin(h, exclude_hashes).sum())
        table = pa.table({name: chunk.to_arrow() for name, chunk in zip(COLUMNS, chunks)})
        tables.append(table.filter(pa.array(keep)) if not keep.all() else table)
        hashes.append(h[keep])
        remaining -= int(keep.sum())
        if progress is not None:
            progress.update(int(keep.sum()))
    if not tables:  # n == 0
        return pa.table({c: pa.array([], pa.string()) for c in COLUMNS}), np.zeros(0, np.uint64), report
    return pa.concat_tables(tables), np.concatenate(hashes), report


def _contains(tables, context: str) -> bool:
    import pyarrow.compute as pc

    return any(pc.any(pc.equal(t["context"], context)).as_py() for t in tables)


def generate_kv_dataset(cfg: KVTaskConfig, n_train: int, n_valid: int, n_test: int, seed: int = 0,
                        *, show_progress: bool = False, chunk_size: int = 32768):
    """A ``datasets.DatasetDict`` (train/valid/test) and a card (dict) describing it.

    The three splits draw from independent streams spawned from ``seed``; no valid or test
    context appears in an earlier split unless the task's context space is too small.
    """
    import datasets
    from tqdm.auto import tqdm

    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    splits, reports, seen_hashes, seen_tables = {}, {}, [], []
    t0 = time.perf_counter()
    with tqdm(total=sum(sizes.values()), desc=f"generating {cfg.name}", unit="sample",
              disable=not show_progress) as bar:
        for (split, n), rng in zip(sizes.items(), streams):
            excl = np.concatenate(seen_hashes) if seen_hashes else None
            table, hashes, report = generate_split(cfg, n, rng, exclude_hashes=excl,
                                                   exclude_contexts=seen_tables, chunk_size=chunk_size,
                                                   progress=bar)
            splits[split] = datasets.Dataset(datasets.table.InMemoryTable(table))
            reports[split] = asdict(report)
            seen_hashes.append(hashes)
            seen_tables.append(table)
    log10_space = cfg.log10_n_contexts()
    card = {
        "name": cfg.name, "task": asdict(cfg), "seed": seed,
        "splits": reports, "generation_seconds": round(time.perf_counter() - t0, 3),
        "log10_distinct_contexts": round(log10_space, 2),
        "overlap_note": ("none: no valid/test context appears in an earlier split"
                         if not any(r["overlap_with_earlier_splits"] for r in reports.values()) else
                         "the context space is too small to keep the splits disjoint; "
                         "overlap_with_earlier_splits counts the shared contexts"),
    }
    return datasets.DatasetDict(splits), card


def dataset_folder_name(cfg: KVTaskConfig, n_train: int) -> str:
    return f"{cfg.name}_{format_count(n_train)}"


def save_dataset_atomically(dataset, card: dict, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``save_to_disk`` plus ``dataset_card.json`` into a temporary sibling folder, then rename it to ``path``."""
    from io_utils import atomic_directory

    path = Path(path)
    if path.exists() and not overwrite:
        raise KVDataError(f"output folder {path} already exists: pass --overwrite to replace it, "
                          f"or choose another --out.")
    with atomic_directory(path, overwrite=overwrite) as tmp:
        dataset.save_to_disk(str(tmp))
        card = dict(card, size_on_disk_bytes=sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()))
        (tmp / "dataset_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return path


def load_kv_dataset(path: str | os.PathLike, *, cache_dir: str | None = None):
    """Load KV data from ``path``: a folder written by this module or by ``save_to_disk`` (the
    download script's copies of the published datasets), or a copy of a hub dataset repository
    (``data/<split>-*.parquet``, read with ``datasets.load_dataset``, which caches in ``cache_dir``).

    Splits named ``validation``/``val``/``dev`` become ``valid``; a split holding
    ``input_sequence`` (context + query, as the reference generator writes it) instead of
    ``context`` and ``query`` is split at the context's last '|'. Other columns are kept.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise KVDataError(f"dataset path {path} does not exist: generate one with "
                          f"`python kv_dataset_utils.py --out data/ ...`, fetch the published ones with "
                          f"scripts/download_kv_retrieval.sh, or fix --data_path.")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        ds = datasets.load_from_disk(str(path))
    elif any(path.rglob("*.parquet")):
        ds = datasets.load_dataset(str(path), cache_dir=cache_dir)
    else:
        raise KVDataError(f"{path} is not a saved dataset (no dataset_dict.json, state.json or parquet "
                          f"files); point --data_path at a folder written by kv_dataset_utils.py or "
                          f"scripts/download_kv_retrieval.sh.")
    if not isinstance(ds, datasets.DatasetDict):
        return _with_kv_columns(ds, path, "")
    return datasets.DatasetDict({name: _with_kv_columns(split, path, name)
                                 for name, split in _canonical_splits(ds, path).items()})


SPLIT_ALIASES = {"validation": "valid", "val": "valid", "dev": "valid"}


def _canonical_splits(ds, path) -> dict:
    """Split name -> split, with hub-style names mapped to ours (``validation`` -> ``valid``)."""
    out = {}
    for name, split in ds.items():
        canonical = SPLIT_ALIASES.get(name, name)
        if canonical in out:
            raise KVDataError(f"dataset {path} has two splits that both mean '{canonical}' ({sorted(ds)}): "
                              f"keep one of them.")
        out[canonical] = split
    return out


def _with_kv_columns(split, path, split_name: str):
    """``split`` with the ``context``, ``query`` and ``target`` columns, or a KVDataError."""
    have = set(split.column_names)
    if {"context", "query"} - have and "input_sequence" in have:
        split = split.map(_split_input_sequence, batched=True, keep_in_memory=True,
                          remove_columns=[c for c in ("context", "query") if c in have])
    missing = [c for c in COLUMNS if c not in split.column_names]
    if missing:
        raise KVDataError(f"dataset {path} split '{split_name}' lacks columns {missing} "
                          f"(has {split.column_names}); KV data needs columns {list(COLUMNS)}.")
    return split


def _split_input_sequence(batch: dict) -> dict:
    """``input_sequence`` = context + query, where the context ends with its last '|' (the query has none)."""
    for s in batch["input_sequence"]:
        if "|" not in s:
            raise KVDataError(f"input_sequence {s!r} has no '|' ending a context, so it cannot be split "
                              f"into context and query: give the data context and query columns.")
    cut = [s.rindex("|") + 1 for s in batch["input_sequence"]]
    return {"context": [s[:i] for s, i in zip(batch["input_sequence"], cut)],
            "query": [s[i:] for s, i in zip(batch["input_sequence"], cut)]}


# ---------------------------------------------------------------------------------------------
# The published datasets (https://huggingface.co/yurakuratov)
# ---------------------------------------------------------------------------------------------

PUBLISHED_NAMESPACE = "yurakuratov"
PUBLISHED_DATASETS = (tuple(f"N{n}-K2V2-V62_1M" for n in (4, 8, 16, 32, 64, 96, 128))
                      + tuple(f"N{n}-K2V2-V62_noise_{r}_1M" for n in (8, 16) for r in (0.25, 0.5, 0.75)))
_PUBLISHED_NAME = re.compile(r"N(\d+)-K(\d+)V(\d+)-V(\d+)(?:_noise_([0-9.]+))?_1M")


def generator_args(name: str) -> list[str] | None:
    """The generator flags that make a dataset with this published folder name, or None."""
    match = _PUBLISHED_NAME.fullmatch(name)
    if match is None:
        return None
    n_pairs, key_len, value_len, vocab_size, noise_ratio = match.groups()
    args = ["--n_pairs", n_pairs, "--key_len", key_len, "--value_len", value_len, "--vocab_size", vocab_size]
    if noise_ratio:
        args += ["--noise_ratio", noise_ratio]
    return args + ["--n_train", "1000000", "--n_valid", "5000", "--n_test", "5000"]


def download_published(name: str, out: str | os.PathLike = "data/", *, overwrite: bool = False) -> Path:
    """``datasets.load_dataset("yurakuratov/NAME")`` saved to ``OUT/NAME`` with a ``dataset_card.json``
    naming its source; written to a temporary folder, checked with ``load_kv_dataset``, then renamed."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    from io_utils import atomic_directory

    path, repo = Path(out) / name, f"{PUBLISHED_NAMESPACE}/{name}"
    if path.exists() and not overwrite:
        raise KVDataError(f"output folder {path} already exists: pass --overwrite to replace it.")
    try:
        ds = datasets.load_dataset(repo)
    except ConnectionError as e:
        one = generator_args(name)
        one = f"`python kv_dataset_utils.py {' '.join(one)} --out {out}`, or " if one else ""
        raise KVDataError(
            f"cannot reach the Hugging Face hub for {repo} ({e}). Without hub access, generate it here "
            f"with {one}the whole family with scripts/make_kv_datasets.sh: the same folder names and task "
            f"parameters, other samples.") from None
    except DatasetNotFoundError:
        raise KVDataError(f"{repo} is not on the hub: the published datasets are "
                          f"{', '.join(PUBLISHED_DATASETS)}.") from None
    with atomic_directory(path, overwrite=overwrite) as tmp:
        ds.save_to_disk(str(tmp))
        sizes = {split: len(rows) for split, rows in load_kv_dataset(tmp).items()}
        card = {"name": name, "source": f"https://huggingface.co/datasets/{repo}", "splits": sizes}
        (tmp / "dataset_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def download_main(argv=None) -> int:
    """What scripts/download_kv_retrieval.sh runs."""
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    p = argparse.ArgumentParser(description="Fetch the published KV-retrieval datasets into OUT/NAME.")
    p.add_argument("names", nargs="*", default=list(PUBLISHED_DATASETS),
                   help="datasets to fetch (default: all of them)")
    p.add_argument("--out", default="data/", help="parent folder of the datasets")
    p.add_argument("--overwrite", action="store_true", help="fetch again datasets already in OUT")
    args = p.parse_args(argv)
    datasets.logging.set_verbosity_error()  # hub retries would bury the one message that matters
    hub_logging.set_verbosity_error()
    for name in args.names:
        if (Path(args.out) / name).exists() and not args.overwrite:
            print(f"{Path(args.out) / name} exists, skipped (--overwrite fetches it again)")
            continue
        try:
            path = download_published(name, args.out, overwrite=args.overwrite)
        except KVDataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------
# Tokenizer: one token per character.
# ---------------------------------------------------------------------------------------------

def create_tokenizer(vocab_size: int = 62):
    """A ``PreTrainedTokenizerFast`` with ``[PAD]=0, [BOS], [EOS], [UNK]``, the reserved
    characters ``! ? : |`` and the first ``vocab_size`` KV characters, one token each."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = list(SPECIAL_TOKENS) + list(RESERVED_CHARS) + list(kv_alphabet(vocab_size))
    backend = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", unk_token="[UNK]")


def load_tokenizer(path: str | os.PathLike):
    from transformers import PreTrainedTokenizerFast

    if not (Path(path) / "tokenizer.json").is_file():
        raise KVDataError(f"no tokenizer at {path} (tokenizer.json missing): use "
                          f"tokenizers/kv_alphabet_62 or tokenizers/kv_alphabet_512, or save one "
                          f"with create_tokenizer(vocab_size).save_pretrained(path).")
    return PreTrainedTokenizerFast.from_pretrained(str(path))


class CharEncoder:
    """Fast character -> id lookup that agrees with a one-token-per-character tokenizer."""

    def __init__(self, tokenizer):
        vocab = {tok: i for tok, i in tokenizer.get_vocab().items() if len(tok) == 1}
        self.table = np.full(max(map(ord, vocab)) + 1, -1, dtype=np.int64)
        for tok, i in vocab.items():
            self.table[ord(tok)] = i
        self.pad_id = tokenizer.pad_token_id

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
        ids = np.where(codes < len(self.table), self.table[np.minimum(codes, len(self.table) - 1)], -1)
        if (ids < 0).any():
            unknown = sorted(set(chr(c) for c in codes[ids < 0]))
            raise KVDataError(f"the tokenizer lacks characters {unknown[:20]}: use a tokenizer built "
                              f"for this data's alphabet (e.g. tokenizers/kv_alphabet_512) or "
                              f"regenerate the data with a smaller --vocab_size.")
        return np.split(ids, np.cumsum([len(t) for t in texts])[:-1])


@dataclass
class KVCollator:
    """Samples -> ``context_input_ids [B, S]``, ``query_input_ids [B, Q]``, ``labels [B, Q]``.

    Contexts are right-padded to a multiple of ``pad_to_multiple_of``. ``query_input_ids`` holds
    query + target; ``labels`` is -100 except on target tokens (the model shifts, HF-style).
    """

    tokenizer: object
    max_context_length: int | None = None
    pad_to_multiple_of: int = 8
    n_truncated: int = field(default=0, init=False)  # contexts cut so far
    n_tokens_cut: int = field(default=0, init=False)

    def __post_init__(self):
        self.encoder = CharEncoder(self.tokenizer)

    def __call__(self, samples: list[dict]) -> dict:
        import torch

        try:
            contexts = self.encoder.encode([s["context"] for s in samples])
            queries = self.encoder.encode([s["query"] for s in samples])
            targets = self.encoder.encode([s["target"] for s in samples])
        except KeyError as e:
            raise KVDataError(f"a sample lacks the {e} field; KV samples need {list(COLUMNS)}.") from None
        if self.max_context_length is not None:
            cut = [max(0, len(c) - self.max_context_length) for c in contexts]
            if any(cut):
                self.n_truncated += sum(c > 0 for c in cut)
                self.n_tokens_cut += sum(cut)
                warnings.warn(f"truncated contexts to max_context_length={self.max_context_length}: "
                              f"{self.n_truncated} contexts and {self.n_tokens_cut} tokens cut so far; "
                              f"raise max_context_length to keep whole contexts.", stacklevel=2)
                contexts = [c[: self.max_context_length] for c in contexts]
        S = max(len(c) for c in contexts)
        S = -(-S // self.pad_to_multiple_of) * self.pad_to_multiple_of
        Q = max(len(q) + len(t) for q, t in zip(queries, targets))
        B = len(samples)
        ctx = torch.full((B, S), self.encoder.pad_id, dtype=torch.long)
        qry = torch.full((B, Q), self.encoder.pad_id, dtype=torch.long)
        labels = torch.full((B, Q), -100, dtype=torch.long)
        for b, (c, q, t) in enumerate(zip(contexts, queries, targets)):
            ctx[b, : len(c)] = torch.from_numpy(c)
            qry[b, : len(q) + len(t)] = torch.from_numpy(np.concatenate([q, t]))
            labels[b, len(q): len(q) + len(t)] = torch.from_numpy(t)
        return {"context_input_ids": ctx, "query_input_ids": qry, "labels": labels}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate a KV-retrieval DatasetDict (train/valid/test) "
                                            "with columns context, query, target.")
    d = KVTaskConfig()
    p.add_argument("--n_pairs", type=int, default=d.n_pairs, help="key-value pairs per context (0: copy task)")
    p.add_argument("--key_len", type=int, default=d.key_len, help="characters per key")
    p.add_argument("--value_len", type=int, default=d.value_len, help="characters per value")
    p.add_argument("--vocab_size", type=int, default=d.vocab_size,
                   help=f"size of the key/value alphabet (62 = [a-zA-Z0-9], up to {MAX_VOCAB_SIZE})")
    p.add_argument("--n_segments", type=int, default=d.n_segments, help="context segments, each ending with '|'")
    p.add_argument("--min_segment_len", type=int, default=d.min_segment_len, help="min noise characters per segment")
    p.add_argument("--max_segment_len", type=int, default=d.max_segment_len, help="max noise characters per segment")
    p.add_argument("--noise_ratio", type=float, default=d.noise_ratio,
                   help="instead of the segment flags: noise characters make up this fraction r of each "
                        "context (0 <= r < 1), around whole pairs at random positions; adds _noise_{r} to the name")
    p.add_argument("--key_value_separator", action=argparse.BooleanOptionalAction, default=d.key_value_separator,
                   help="':' between key and value, as in the paper ('!k:v!'); with --no-key_value_separator "
                        "the value follows its key directly ('!kv!', query '?!k') and _nosep is added to the name")
    p.add_argument("--n_train", type=int, default=100_000, help="training samples")
    p.add_argument("--n_valid", type=int, default=5_000, help="validation samples")
    p.add_argument("--n_test", type=int, default=5_000, help="test samples")
    p.add_argument("--seed", type=int, default=0, help="seed; the same arguments and seed give identical data")
    p.add_argument("--out", default="data/", help="parent folder; the dataset goes to OUT/<name encoding the parameters>")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.add_argument("--chunk_size", type=int, default=32768, help="samples generated per vectorised chunk")
    return p


def main(argv=None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        cfg = KVTaskConfig(n_pairs=args.n_pairs, key_len=args.key_len, value_len=args.value_len,
                           vocab_size=args.vocab_size, n_segments=args.n_segments,
                           min_segment_len=args.min_segment_len, max_segment_len=args.max_segment_len,
                           noise_ratio=args.noise_ratio, key_value_separator=args.key_value_separator)
        path = Path(args.out) / dataset_folder_name(cfg, args.n_train)
        if path.exists() and not args.overwrite:  # fail before spending time generating
            raise KVDataError(f"output folder {path} already exists: pass --overwrite to replace it, "
                              f"or choose another --out.")
        ds, card = generate_kv_dataset(cfg, args.n_train, args.n_valid, args.n_test, args.seed,
                                       show_progress=True, chunk_size=args.chunk_size)
        save_dataset_atomically(ds, card, path, overwrite=args.overwrite)
    except KVDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({', '.join(f'{k}: {len(v)}' for k, v in ds.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
