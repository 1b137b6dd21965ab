"""What the natural-language data modules share (``babi_utils``, ``squad_utils``, ``phonebook_utils``).

Every text task ends as a ``datasets.DatasetDict`` with splits ``train``, ``valid``, ``test`` and string
columns ``context`` (what WRITE sees), ``query`` (ends with "Answer:"), ``target`` (the bare gold answer)
and ``answers`` (every gold answer; ``answers[0] == target``). This module loads a source that is
either a local ``save_to_disk`` folder or a Hugging Face hub name, checks columns and empty fields,
maps split names (``validation`` -> ``valid``) and carves missing splits out of ``train``, reports
context overlap between splits, and saves a DatasetDict with its ``dataset_card.json`` atomically.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli import option

SPLITS = ("train", "valid", "test")
TEXT_COLUMNS = ("context", "query", "target", "answers")
ANSWER_PROMPT = "Answer:"
SPLIT_ALIASES = {"train": "train", "validation": "valid", "valid": "valid", "val": "valid", "dev": "valid",
                 "test": "test"}


class TextDataError(ValueError):
    """Bad text-data input. The message names the problem and the fix."""


def question_query(question: str) -> str:
    """``"Question: <question>\\nAnswer:"``: the query of the tasks that ask a question after the context."""
    return f"Question: {question.strip()}\n{ANSWER_PROMPT}"


def with_answer_prompt(query: str) -> str:
    """``query`` ending with "Answer:" (appended on a new line when absent; trailing spaces dropped)."""
    query = query.rstrip()
    return query if query.endswith(ANSWER_PROMPT) else f"{query}\n{ANSWER_PROMPT}"


def text_dataset(columns: dict[str, list]):
    """A ``datasets.Dataset`` held in memory with the text-task features (``answers``: a list of strings)."""
    import datasets

    features = {name: datasets.Value("string") for name in columns if name != "answers"}
    if "answers" in columns:
        features["answers"] = datasets.Sequence(datasets.Value("string"))
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# ---------------------------------------------------------------------------------------------
# Loading a source: a save_to_disk folder or a hub name
# ---------------------------------------------------------------------------------------------

def looks_like_local_path(source: str) -> bool:
    """Paths, not hub names (``name`` or ``owner/name``): absolute, ``.``/``~`` prefixed, several ``/``,
    or a data-file suffix."""
    s = str(source)
    return s.startswith(("/", ".", "~")) or s.count("/") > 1 or Path(s).suffix.lower() in (".json", ".arrow",
                                                                                          ".parquet")


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub cannot be reached (offline mode, or no TCP connection to its host), or None."""
    import socket
    from urllib.parse import urlparse

    import datasets
    from huggingface_hub import constants

    if datasets.config.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return f"no connection to {host}: {e}"
    return None


def load_source(source: str | os.PathLike, *, what: str, generator_cli: str, download_script: str):
    """A ``DatasetDict`` from a ``save_to_disk`` folder, else from the hub via ``datasets.load_dataset``.

    A saved single ``Dataset`` becomes ``{"train": ds}``. Every failure raises one ``TextDataError``
    that names the source and the two offline ways out: the generator CLI, or a saved folder. Without
    a connection to the hub it fails at once instead of retrying (a copy already in the datasets
    cache loads with HF_HUB_OFFLINE=1).
    """
    import datasets

    path = Path(source).expanduser()
    offline_help = (f"To work offline, generate the data with `{generator_cli}`, or point to a folder "
                    f"written by `datasets.load_dataset(...).save_to_disk(...)` (`{download_script}` "
                    f"does that on a machine with network).")
    if path.exists():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise TextDataError(f"{path} is not a folder saved with save_to_disk ({e}). {offline_help}") from None
        return ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict({"train": ds})
    if looks_like_local_path(str(source)):
        raise TextDataError(f"{what} source {source} does not exist (and is not a hub name of the form "
                            f"owner/name). {offline_help}")
    failure = hub_unreachable()
    if failure is None:
        try:
            return datasets.load_dataset(str(source))
        except Exception as e:  # unknown repo, gated, cut off midway: all the same way out
            failure = f"{type(e).__name__}: {e}"
    raise TextDataError(f"could not load {what} '{source}' from the Hugging Face hub ({failure}), and there "
                        f"is no local folder of that name. {offline_help}")


def require_columns(dd, columns, *, source, what: str) -> None:
    """Raise if any split of ``dd`` lacks one of ``columns``."""
    for split, ds in dd.items():
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise TextDataError(f"{what} source {source}, split '{split}', lacks columns {missing} "
                                f"(it has {ds.column_names}); {what} data needs columns {list(columns)}.")


def check_nonempty(dd, *, source, what: str) -> None:
    """Raise at the first row with an empty (or blank) context, query, target, or gold answer."""
    for split, ds in dd.items():
        for column in ("context", "query", "target"):
            for i, text in enumerate(ds[column]):
                if not text or not text.strip():
                    raise TextDataError(f"{what} source {source}, split '{split}', row {i} has an empty "
                                        f"{column}: drop such rows or fix the source.")
        for i, answers in enumerate(ds["answers"]):
            if not answers or not all(a and a.strip() for a in answers):
                raise TextDataError(f"{what} source {source}, split '{split}', row {i} has an empty gold "
                                    f"answer ({answers!r}): every sample needs non-empty answers.")


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------

def rename_splits(dd, *, source, what: str, aliases: dict[str, str] | None = None):
    """``validation``/``dev``/``val`` -> ``valid`` (or as ``aliases`` says); unknown names raise."""
    import datasets

    aliases = SPLIT_ALIASES if aliases is None else aliases
    unknown = [s for s in dd if s not in aliases]
    if unknown:
        raise TextDataError(f"{what} source {source} has splits {list(dd)}; {unknown} are not understood. "
                            f"Expected some of {sorted(aliases)} (train is required to carve missing splits).")
    renamed = {}
    for split, ds in dd.items():
        name = aliases[split]
        if name in renamed:
            raise TextDataError(f"{what} source {source} has two splits that both mean '{name}': {list(dd)}.")
        renamed[name] = ds
    return datasets.DatasetDict(renamed)


def carve_split(ds, n: int, seed: int, *, group_column: str = "context"):
    """``(rest, carved)``: about ``n`` rows moved out of ``ds``, whole groups of equal ``group_column``
    at a time (so no context is in both), chosen by a permutation seeded with ``seed``."""
    rows_of: dict[str, list[int]] = {}
    for i, key in enumerate(ds[group_column]):
        rows_of.setdefault(key, []).append(i)
    groups = list(rows_of.values())
    carved: list[int] = []
    for g in np.random.default_rng(seed).permutation(len(groups)):
        if len(carved) >= n:
            break
        carved.extend(groups[g])
    taken = np.zeros(len(ds), dtype=bool)
    taken[carved] = True
    return ds.select(np.flatnonzero(~taken)), ds.select(sorted(carved))


def canonical_splits(dd, *, source, what: str, n_carve: int = 1000, seed: int = 0,
                     aliases: dict[str, str] | None = None):
    """``(DatasetDict(train, valid, test), notes)``: split names mapped, missing ``valid``/``test``
    carved out of ``train`` (``min(n_carve, len(train) // 10)`` rows each, whole contexts at a time).
    The carve is deterministic in ``seed``; ``notes`` says what was carved. A source without train
    (e.g. only an evaluation file) keeps just the splits it has."""
    import datasets

    dd = rename_splits(dd, source=source, what=what, aliases=aliases)
    missing = [s for s in ("valid", "test") if s not in dd]
    notes = [f"no train split: {missing} not carved"] if missing and "train" not in dd else []
    for k, split in enumerate(missing if "train" in dd else []):
        n = min(n_carve, len(dd["train"]) // 10)
        if n < 1:
            raise TextDataError(f"{what} source {source}: train has {len(dd['train'])} rows, too few to carve a "
                                f"'{split}' split from; provide a {split} split or more training data.")
        dd["train"], dd[split] = carve_split(dd["train"], n, seed + k)
        notes.append(f"{split}: {len(dd[split])} rows carved out of the source's train split (seed {seed + k}), "
                     f"whole contexts at a time")
    return datasets.DatasetDict({s: dd[s] for s in SPLITS if s in dd}), notes


def split_report(dd) -> dict:
    """Rows per split and how many contexts of each split also occur in an earlier split (in ``dd``'s order)."""
    seen: set[str] = set()
    report = {}
    for split in dd:
        contexts = dd[split]["context"]
        report[split] = {"n_samples": len(contexts), "n_distinct_contexts": len(set(contexts)),
                         "rows_whose_context_is_in_an_earlier_split": sum(c in seen for c in contexts)}
        seen.update(contexts)
    return report


# ---------------------------------------------------------------------------------------------
# Saving and the shared CLI pieces
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OutputConfig:
    """Where a data CLI writes, and whether it converts a source instead of generating."""

    source: str | None = option(None, "hub name or save_to_disk folder to convert instead of generating "
                                      "offline (needs network for a hub name)")
    out: str = option("data/", "parent folder; the dataset goes to OUT/<name encoding the parameters>")
    overwrite: bool = option(False, "replace an existing dataset folder")


def ensure_absent(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise TextDataError(f"output folder {path} already exists: pass --overwrite to replace it, "
                            f"or choose another --out.")


def save_text_dataset(dd, card: dict, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``save_to_disk`` plus ``dataset_card.json`` (``card`` and the split report), written to a
    temporary sibling folder and renamed to ``path``."""
    from kv_dataset_utils import save_dataset_atomically

    path = Path(path)
    ensure_absent(path, overwrite)
    return save_dataset_atomically(dd, dict(card, splits=split_report(dd)), path, overwrite=overwrite)


def generate_or_convert(cfg, out: OutputConfig, generate, convert, converted_by: str, **card_fields):
    """The body of a data CLI: ``generate(cfg) -> (dd, card)`` into ``OUT/<cfg.name>_<n_train>``, or, with
    ``out.source``, ``convert(source) -> (dd, split notes)`` into ``OUT/<source name>``. The output folder is
    checked before any work. Returns (path, dd)."""
    from kv_dataset_utils import format_count

    if out.source is None:
        path = Path(out.out) / f"{cfg.name}_{format_count(cfg.n_train)}"
        ensure_absent(path, out.overwrite)
        dd, card = generate(cfg)
    else:
        path = Path(out.out) / Path(out.source).name
        ensure_absent(path, out.overwrite)
        dd, notes = convert(out.source)
        card = {"name": path.name, "source": out.source, **card_fields, "converted_by": converted_by,
                "split_notes": notes}
    return save_text_dataset(dd, card, path, overwrite=out.overwrite), dd


def run_cli(main_body, argv) -> int:
    """Run a data CLI body; bad input prints one ``error:`` line and exits with 2."""
    try:
        path, dd = main_body(argv)
    except (TextDataError, ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({', '.join(f'{k}: {len(v)}' for k, v in dd.items())})")
    return 0
