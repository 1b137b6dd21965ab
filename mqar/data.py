"""MQAR data as Zoology (Arora et al. 2023) defines it, in the Hugging Face label convention.

One example of length ``seq_len`` with ``N = n_pairs``::

    input_ids  k1 v1 k2 v2 ... kN vN | 0  k2  0  0  0  k1  0 ...      KV region (2N), query region
    labels     -100 ...          -100 | -100 -100 v2 -100 ... -100 v1 ...

- keys from the first half of the vocabulary (``1 .. V//2 - 1``; 0 is the filler), values from the
  second (``V//2 .. V-1``); keys are distinct within an example, and so are values;
- every key is queried once in the query region, at position ``2N + 2 g`` where the gaps ``g`` are
  drawn without replacement from ``0 .. (seq_len - 2N)//2 - 1`` with ``P(g) ~ (g + 1)^(a - 1)``
  (Zoology's power law, ``a = power_a``: small gaps are far likelier);
- the label of a query is its key's value, **one position after the query key**: the models shift
  (``logits[:, t]`` predicts ``labels[:, t + 1]``), so the prediction made *at* the query key is
  scored. (Zoology stores the unshifted form, the value at the query key's own position.)
- the filler between queries is 0, or a uniformly random token with ``random_non_queries``.

Train, valid and test come from independent streams of one seed; an example drawn again that is
already in an earlier split is redrawn, so the splits are disjoint.

    python -m mqar.data --n_pairs 32 --seq_len 128 --vocab_size 2048 --n_train 40000 --out data/
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cli import add_config_args, config_from_args, option

COLUMNS = ("input_ids", "labels", "n_pairs")
IGNORE_INDEX = -100
SPLITS = ("train", "valid", "test")


class MQARDataError(ValueError):
    """Bad MQAR settings or data. The message names the problem and the fix."""


@dataclass(frozen=True)
class MQARConfig:
    """What one MQAR example looks like; impossible settings raise at construction."""

    n_pairs: int = option(32, "key-value pairs per example (each key is queried once)")
    seq_len: int = option(128, "tokens per example: the KV region (2 n_pairs) plus the query region")
    vocab_size: int = option(2048, "token ids 0..vocab_size-1: keys from the first half, values from the second")
    power_a: float = option(0.01, "Zoology's power law of query gaps, P(g) ~ (g+1)^(a-1); 1.0 is uniform")
    random_non_queries: bool = option(False, "fill the query region between queries with random tokens, not 0")

    def __post_init__(self):
        N, L, V = self.n_pairs, self.seq_len, self.vocab_size
        if N < 1:
            raise MQARDataError(f"n_pairs={N}: need at least one key-value pair.")
        if L < 4 * N:
            raise MQARDataError(f"seq_len={L} is too short for n_pairs={N}: the KV region takes 2*n_pairs tokens "
                                f"and the query region 2*n_pairs more (each query key and its answer slot); "
                                f"use seq_len >= {4 * N} or fewer pairs.")
        if V <= L:
            raise MQARDataError(f"vocab_size={V} must exceed seq_len={L} (Zoology's setting); raise vocab_size.")
        if V // 2 - 1 < N:
            raise MQARDataError(f"vocab_size={V} gives {V // 2 - 1} distinct keys, fewer than n_pairs={N}.")
        if not self.power_a > 0:
            raise MQARDataError(f"power_a={self.power_a} must be > 0 (1.0 draws gaps uniformly).")

    @property
    def context_length(self) -> int:
        """Tokens of the KV region, which memory models WRITE."""
        return 2 * self.n_pairs

    @property
    def n_gaps(self) -> int:
        """Query slots in the query region."""
        return (self.seq_len - self.context_length) // 2

    @property
    def name(self) -> str:
        return (f"MQAR-N{self.n_pairs}-L{self.seq_len}-V{self.vocab_size}"
                + (f"-a{self.power_a:g}" if self.power_a != 0.01 else "") + ("-rnq" if self.random_non_queries else ""))


def gap_probabilities(cfg: MQARConfig) -> np.ndarray:
    """``[n_gaps]``: Zoology's power law ``P(g) ~ a (g + 1)^(a - 1)``, normalised."""
    p = cfg.power_a * np.arange(1, cfg.n_gaps + 1, dtype=np.float64) ** (cfg.power_a - 1)
    return p / p.sum()


def _ordered_subset(rng: np.random.Generator, n: int, k: int, space: int) -> np.ndarray:
    """``[n, k]``: k distinct integers of ``range(space)`` per row, in uniformly random order."""
    return rng.permuted(np.broadcast_to(np.arange(space), (n, space)), axis=1)[:, :k]


def _weighted_subset(rng: np.random.Generator, n: int, k: int, p: np.ndarray) -> np.ndarray:
    """``[n, k]``: k draws without replacement by weights ``p``, in draw order. Exponential race
    (Efraimidis-Spirakis): the k smallest of ``E_i / p_i`` come out as successive weighted draws."""
    return np.argsort(rng.exponential(size=(n, len(p))) / p, axis=1)[:, :k]


def sample_examples(cfg: MQARConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples: ``input_ids [n, seq_len]`` and HF-convention ``labels [n, seq_len]`` (int32)."""
    N, V, C = cfg.n_pairs, cfg.vocab_size, cfg.context_length
    keys = 1 + _ordered_subset(rng, n, N, V // 2 - 1)  # [n, N] in 1 .. V//2 - 1
    values = V // 2 + _ordered_subset(rng, n, N, V - V // 2)  # [n, N] in V//2 .. V-1
    gaps = _weighted_subset(rng, n, N, gap_probabilities(cfg))  # [n, N]: query slot of key j
    ids = np.zeros((n, cfg.seq_len), dtype=np.int32)
    ids[:, 0:C:2], ids[:, 1:C:2] = keys, values
    rows = np.arange(n)[:, None]
    ids[rows, C + 2 * gaps] = keys
    labels = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int32)
    labels[rows, C + 2 * gaps + 1] = values  # scored at the query key: logits[t] vs labels[t + 1]
    if cfg.random_non_queries:
        filler = ids == 0
        ids[filler] = rng.integers(0, V, size=int(filler.sum()), dtype=np.int32)
    return ids, labels


def _generate_split(cfg: MQARConfig, n: int, rng: np.random.Generator, seen: set, chunk_size: int,
                    max_rounds: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples none of which is in ``seen`` (earlier splits' rows as bytes)."""
    ids_parts, label_parts, have, rounds = [], [], 0, 0
    while have < n:
        if rounds == max_rounds:
            raise MQARDataError(f"after {max_rounds} rounds only {have} of {n} examples differ from the earlier "
                                f"splits: {cfg.name} has too few distinct examples for disjoint splits; raise "
                                f"vocab_size, n_pairs or seq_len, or ask for fewer examples.")
        ids, labels = sample_examples(cfg, rng, min(chunk_size, n - have))
        rows = [r.tobytes() for r in ids]
        keep = np.array([r not in seen for r in rows], dtype=bool)
        rounds += not keep.all()
        ids_parts.append(ids[keep])
        label_parts.append(labels[keep])
        have += int(keep.sum())
    return np.concatenate(ids_parts), np.concatenate(label_parts)


def _to_dataset(ids: np.ndarray, labels: np.ndarray, n_pairs: int):
    import datasets
    import pyarrow as pa

    def fixed(a):
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])

    table = pa.table({"input_ids": fixed(ids), "labels": fixed(labels),
                      "n_pairs": pa.array(np.full(len(ids), n_pairs, dtype=np.int32))})
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def generate_mqar_dataset(cfg: MQARConfig, n_train: int, n_valid: int, n_test: int, seed: int = 0,
                          chunk_size: int = 8192):
    """A ``datasets.DatasetDict`` (train/valid/test), pairwise disjoint, from three independent
    streams spawned from ``seed``."""
    import datasets

    sizes = dict(zip(SPLITS, (n_train, n_valid, n_test)))
    if any(n < 0 for n in sizes.values()):
        raise MQARDataError(f"split sizes must be >= 0, got {sizes}.")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(SPLITS))]
    seen, splits = set(), {}
    for (split, n), rng in zip(sizes.items(), streams):
        ids, labels = _generate_split(cfg, n, rng, seen, chunk_size)
        seen.update(r.tobytes() for r in ids)
        splits[split] = _to_dataset(ids, labels, cfg.n_pairs)
    return datasets.DatasetDict(splits)


def dataset_card(cfg: MQARConfig, ds, seed: int) -> dict:
    return {"name": cfg.name, "task": "mqar", "config": asdict(cfg), "seed": seed,
            "splits": {k: len(v) for k, v in ds.items()},
            "label_convention": "Hugging Face: labels[t + 1] is the value of the query key at input_ids[t]; "
                                "the first 2*n_pairs tokens are the KV region (the context)"}


def load_mqar_dataset(path: str | os.PathLike):
    """A DatasetDict written by this module; checks the folder and the MQAR columns."""
    import datasets

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        raise MQARDataError(f"{path} is not a saved MQAR dataset (no dataset_dict.json): write one with "
                            f"`python -m mqar.data --out data/ ...` or fix --data_path.")
    ds = datasets.load_from_disk(str(path))
    for split, part in ds.items():
        missing = [c for c in COLUMNS if c not in part.column_names]
        if missing:
            raise MQARDataError(f"{path} split '{split}' lacks columns {missing} (has {part.column_names}): "
                                f"it is not MQAR data.")
    return ds


class MQARCollator:
    """Examples -> ``{"context_input_ids": [B, 2N], "query_input_ids": [B, L - 2N], "labels": [B, L - 2N]}``.

    The context is the KV region (what memory models WRITE), the query the rest, with its labels (the
    first is always -100: the context's last token is a value, never a query). Reading
    ``[context; query]``, a full-context model sees the original sequence.
    """

    def __call__(self, samples: list[dict]) -> dict:
        import torch

        n_pairs = {int(s["n_pairs"]) for s in samples}
        if len(n_pairs) != 1:
            raise MQARDataError(f"a batch mixes pair counts {sorted(n_pairs)}: batch examples of one n_pairs.")
        C = 2 * n_pairs.pop()
        ids = torch.tensor([s["input_ids"] for s in samples], dtype=torch.long)  # [B, L]
        labels = torch.tensor([s["labels"] for s in samples], dtype=torch.long)
        return {"context_input_ids": ids[:, :C], "query_input_ids": ids[:, C:], "labels": labels[:, C:]}


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, MQARConfig, "MQAR")
    g = p.add_argument_group("output")
    g.add_argument("--n_train", type=int, default=40_000, help="training examples (default: %(default)s)")
    g.add_argument("--n_valid", type=int, default=3_000, help="validation examples (default: %(default)s)")
    g.add_argument("--n_test", type=int, default=3_000, help="test examples (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of all three splits (default: %(default)s)")
    g.add_argument("--out", default="data", help="parent folder; the dataset goes to OUT/<name>_<n_train> "
                                                 "(default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    return p


def main(argv=None) -> int:
    from kv_dataset_utils import format_count, save_dataset_atomically

    args = build_arg_parser().parse_args(argv)
    try:
        cfg = config_from_args(MQARConfig, args)
        path = Path(args.out) / f"{cfg.name}_{format_count(args.n_train)}"
        if path.exists() and not args.overwrite:  # fail before generating
            raise MQARDataError(f"output folder {path} already exists: pass --overwrite to replace it, or choose "
                                f"another --out.")
        ds = generate_mqar_dataset(cfg, args.n_train, args.n_valid, args.n_test, args.seed)
        save_dataset_atomically(ds, dataset_card(cfg, ds, args.seed), path, overwrite=args.overwrite)
    except MQARDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({', '.join(f'{k}: {len(v)}' for k, v in ds.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
