"""Phonebook retrieval: a loader for ``booydar/phonebook_N{2..64}``-style hub data and an offline generator.

A sample is ``{context, query, target, answers}``::

    context  Ines Belford: 472-9013\\nOsric Lindholt: 385-2270\\n...      N entries, one per line
    query    Question: What is Osric Lindholt's phone number?\\nAnswer:
    target   385-2270                                                   (answers: ["385-2270"])

Generated books hold N distinct invented names (a first name and a composed surname) with N distinct
7-digit numbers in random order; the query names one of them. The splits draw from independent
seeded streams and a valid/test book equal to one in an earlier split is redrawn.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from cli import add_config_args, check_config, config_from_args, option
from text_qa_data import (TEXT_COLUMNS, OutputConfig, canonical_splits, check_nonempty, generate_or_convert,
                          load_source, question_query, require_columns, run_cli, text_dataset, with_answer_prompt)

FIRST_NAMES = ("Ada", "Bram", "Celia", "Dorian", "Edda", "Felix", "Gemma", "Hale", "Ines", "Joren",
               "Katya", "Lio", "Maren", "Nico", "Osric", "Perla", "Quinn", "Rosalind", "Silas", "Tove",
               "Ulla", "Viggo", "Wren", "Xavi", "Yara", "Zeno", "Anouk", "Basil", "Clio", "Desmond",
               "Elin", "Florian")
SURNAME_STEMS = ("Ash", "Bel", "Cor", "Dun", "El", "Fen", "Gar", "Hal", "Ives", "Kel", "Lind", "Mar",
                 "Nor", "Orm", "Pell", "Quen", "Ros", "Sel", "Tam", "Vey")
SURNAME_ENDINGS = ("ford", "ridge", "wick", "ton", "mere", "holt", "by", "stead")
MIN_ENTRIES, MAX_ENTRIES = 2, 64
NUMBER_RANGE = (2_000_000, 10_000_000)  # 7 digits, written ddd-dddd; no leading 0 or 1


def full_names() -> list[str]:
    """Every name a generated book may hold (32 first names x 160 surnames)."""
    surnames = [s + e.lower() for s in SURNAME_STEMS for e in SURNAME_ENDINGS]
    return [f"{f} {s}" for f in FIRST_NAMES for s in surnames]


@dataclass(frozen=True)
class PhonebookConfig:
    """What the phonebook generator draws; invalid values raise at construction."""

    n_entries: int = option(16, f"entries per phonebook ({MIN_ENTRIES}..{MAX_ENTRIES})")
    n_train: int = option(100_000, "training samples")
    n_valid: int = option(1_000, "validation samples (with --source: the most rows carved out of train "
                                 "when the source has no validation split)")
    n_test: int = option(1_000, "test samples (with --source: as --n_valid, for a missing test split)")
    seed: int = option(0, "seed; the same arguments and seed give identical data")

    def __post_init__(self):
        check_config("PhonebookConfig", [
            (MIN_ENTRIES <= self.n_entries <= MAX_ENTRIES,
             f"n_entries={self.n_entries} is out of range: choose {MIN_ENTRIES}..{MAX_ENTRIES}"),
            (min(self.n_train, self.n_valid, self.n_test) >= 0, "n_train, n_valid and n_test must be >= 0"),
        ])

    @property
    def name(self) -> str:
        return f"phonebook-N{self.n_entries}"


def phonebook_sample(n_entries: int, rng: random.Random, names: list[str]) -> dict:
    people = rng.sample(names, n_entries)
    numbers = [f"{n // 10_000:03d}-{n % 10_000:04d}" for n in rng.sample(range(*NUMBER_RANGE), n_entries)]
    asked = rng.randrange(n_entries)
    return {"context": "\n".join(f"{p}: {n}" for p, n in zip(people, numbers)),
            "query": question_query(f"What is {people[asked]}'s phone number?"),
            "target": numbers[asked], "answers": [numbers[asked]]}


def _generate(cfg: PhonebookConfig):
    """``(DatasetDict, card)``; the splits draw from three streams spawned from ``(seed, n_entries)``."""
    import datasets

    t0 = time.perf_counter()
    names = full_names()
    root = np.random.SeedSequence([cfg.seed, cfg.n_entries])
    streams = [random.Random(int(s.generate_state(1)[0])) for s in root.spawn(3)]
    seen: set[str] = set()
    splits, redrawn = {}, {}
    for (split, n), rng in zip((("train", cfg.n_train), ("valid", cfg.n_valid), ("test", cfg.n_test)), streams):
        rows, redrawn[split] = [], 0
        while len(rows) < n:
            sample = phonebook_sample(cfg.n_entries, rng, names)
            if split != "train" and sample["context"] in seen:  # astronomically rare: the space is huge
                redrawn[split] += 1
                continue
            rows.append(sample)
        columns = {c: [r[c] for r in rows] for c in TEXT_COLUMNS}
        splits[split] = text_dataset(columns)
        seen.update(columns["context"])
    card = {"name": cfg.name, "generator": "phonebook_utils.generate_phonebook", "config": asdict(cfg),
            "redrawn_for_overlap_with_earlier_splits": redrawn, "n_names": len(names),
            "generation_seconds": round(time.perf_counter() - t0, 3)}
    return datasets.DatasetDict(splits), card


def generate_phonebook(n_entries: int = 16, n_train: int = 100_000, n_valid: int = 1_000, n_test: int = 1_000,
                       seed: int = 0):
    """A ``DatasetDict`` (train/valid/test) of generated phonebooks; no book is shared between splits,
    and the same arguments give identical data."""
    return _generate(PhonebookConfig(n_entries, n_train, n_valid, n_test, seed))[0]


def phonebook_hub_name(n_entries: int) -> str:
    return f"booydar/phonebook_N{n_entries}"


def _load(source, n_carve: int, seed: int):
    import datasets

    what = "phonebook"
    raw = load_source(source, what=what, generator_cli="python phonebook_utils.py --n_entries 16 --out data/",
                      download_script="scripts/download_phonebook.sh")
    require_columns(raw, ("context", "query", "target"), source=source, what=what)
    dd = {}
    for split, ds in raw.items():
        targets = [t.strip() for t in ds["target"]]
        answers = ds["answers"] if "answers" in ds.column_names else [[t] for t in targets]
        dd[split] = text_dataset({"context": ds["context"], "query": [with_answer_prompt(q) for q in ds["query"]],
                                  "target": targets, "answers": answers})
    dd = datasets.DatasetDict(dd)
    check_nonempty(dd, source=source, what=what)
    return canonical_splits(dd, source=source, what=what, n_carve=n_carve, seed=seed)


def load_phonebook(source: str | None = None, n_entries: int = 16, *, n_carve: int = 1000, seed: int = 0):
    """Phonebook data as a ``DatasetDict`` (train/valid/test) of text-task columns.

    ``source``: a hub name (default ``booydar/phonebook_N{n_entries}``) or a ``save_to_disk`` folder
    with columns ``context``, ``query``, ``target`` (``answers`` optional). A query that does not end
    with "Answer:" gets "\\nAnswer:" appended; targets are stripped. A missing valid or test split is
    carved out of train (at most ``n_carve`` rows, whole contexts, seeded by ``seed``).
    """
    return _load(phonebook_hub_name(n_entries) if source is None else source, n_carve, seed)[0]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate phonebooks offline, or convert hub phonebook data "
                                            "(--source) into a DatasetDict with columns context, query, "
                                            "target, answers.")
    add_config_args(p, PhonebookConfig)
    add_config_args(p, OutputConfig)
    return p


def _main(argv):
    args = build_arg_parser().parse_args(argv)
    cfg, out = config_from_args(PhonebookConfig, args), config_from_args(OutputConfig, args)
    return generate_or_convert(cfg, out, _generate, lambda source: _load(source, cfg.n_valid, cfg.seed),
                               "phonebook_utils.load_phonebook")


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
