"""SQuAD v1.1 extractive QA: a loader, the three READ/WRITE layouts, and an offline synthetic set.

``load_squad`` gives a ``DatasetDict`` with columns ``id``, ``title``, ``context`` (the paragraph),
``question`` and ``answers`` (every gold answer, in the source's order). ``squad_layout`` turns it
into text-task samples ``{id, context, query, target, answers}``:

    c_qa   WRITE  <paragraph>                                READ  Question: <question>\\nAnswer: <answer>
    cq_a   WRITE  <paragraph>\\nQuestion: <question>          READ  Answer: <answer>
    qc_a   WRITE  Question: <question>\\n<paragraph>          READ  Answer: <answer>

``target`` is the first gold answer. Scores are SQuAD exact match and F1 (``text_metrics``).

SQuAD v1.1 has no public test set: the official dev set (hub split ``validation``, file
``dev-v1.1.json``) becomes ``test``, the set the literature reports, and ``valid`` is carved out of
train whole paragraphs at a time, so model selection never sees the reported set.

Offline, ``write_synthetic_squad`` writes ``train-v1.1.json`` and ``dev-v1.1.json`` in the official
format: short factual paragraphs about invented people and towns, 3-5 questions each, answers as
character spans of the paragraph (dev questions carry alternative gold answers, e.g. "the X Academy"
beside "X Academy", as the official dev set carries several annotators' answers).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli import add_config_args, check_config, config_from_args, option
from kv_dataset_utils import format_count
from text_metrics import squad_scores
from text_qa_data import (ANSWER_PROMPT, OutputConfig, TextDataError, canonical_splits, ensure_absent,
                          load_source, question_query, require_columns, run_cli, save_text_dataset,
                          text_dataset)

SQUAD_HUB_NAME = "rajpurkar/squad"
SQUAD_COLUMNS = ("id", "title", "context", "question", "answers")
LAYOUTS = ("c_qa", "cq_a", "qc_a")
SQUAD_SPLIT_ALIASES = {"train": "train", "validation": "test", "dev": "test", "test": "test", "valid": "valid"}
GENERATOR_CLI = "python squad_utils.py --out data/"


# ---------------------------------------------------------------------------------------------
# Layouts and scores
# ---------------------------------------------------------------------------------------------

def layout_sample(context: str, question: str, answers: list[str], layout: str) -> dict:
    """One SQuAD sample in one of ``LAYOUTS`` (see the module docstring)."""
    question = question.strip()
    if layout == "c_qa":
        write, read = context, question_query(question)
    elif layout == "cq_a":
        write, read = f"{context}\nQuestion: {question}", ANSWER_PROMPT
    elif layout == "qc_a":
        write, read = f"Question: {question}\n{context}", ANSWER_PROMPT
    else:
        raise TextDataError(f"layout={layout!r} is not one of {LAYOUTS}.")
    return {"context": write, "query": read, "target": answers[0], "answers": list(answers)}


def squad_layout(data, layout: str = "c_qa"):
    """A ``Dataset`` or ``DatasetDict`` from ``load_squad`` -> text-task columns id/context/query/target/answers."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        return datasets.DatasetDict({s: squad_layout(ds, layout) for s, ds in data.items()})
    require_columns({"data": data}, ("id", "context", "question", "answers"), source="the dataset",
                    what="SQuAD")
    rows = [layout_sample(c, q, a, layout) for c, q, a in zip(data["context"], data["question"], data["answers"])]
    return text_dataset({"id": data["id"], **{k: [r[k] for r in rows] for k in ("context", "query", "target",
                                                                                   "answers")}})


def score_squad(predictions: list[str], answers: list[list[str]]) -> dict[str, list[float]]:
    """Per-sample SQuAD exact match and F1 (official normalisation, max over gold answers)."""
    return squad_scores(predictions, answers)


# ---------------------------------------------------------------------------------------------
# Loading: official JSON files, save_to_disk folders, or the hub
# ---------------------------------------------------------------------------------------------

def _rows_from_json(obj, source) -> dict[str, list]:
    """Official SQuAD JSON (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``) -> columns."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise TextDataError(f"{source} is not SQuAD JSON: expected an object with a 'data' list of articles "
                            f"(the official train-v1.1.json / dev-v1.1.json format).")
    cols = {c: [] for c in SQUAD_COLUMNS}
    for a, article in enumerate(obj["data"]):
        try:
            for p, paragraph in enumerate(article["paragraphs"]):
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    where = f"{source}: article {a}, paragraph {p}, question {qa.get('id')!r}"
                    answers = [ans["text"] for ans in qa["answers"]]
                    if qa.get("is_impossible") or not answers:
                        raise TextDataError(f"{where} has no answer (SQuAD v2 unanswerable questions are not "
                                            f"supported): use SQuAD v1.1 or drop such questions.")
                    cols["id"].append(str(qa["id"]))
                    cols["title"].append(str(article.get("title", "")))
                    cols["context"].append(context)
                    cols["question"].append(qa["question"])
                    cols["answers"].append(answers)
        except (KeyError, TypeError) as e:
            raise TextDataError(f"{source}: article {a} lacks the SQuAD field {e} (each article needs "
                                f"'paragraphs', each paragraph 'context' and 'qas', each question 'id', "
                                f"'question' and 'answers' with 'text').") from None
    return cols


def _json_split_name(path: Path) -> str | None:
    name = path.name.lower()
    return "train" if "train" in name else "dev" if "dev" in name or "valid" in name else None


def _json_files(path: Path) -> dict[str, Path]:
    """``{"train": file, "dev": file}`` for a JSON file or a folder of them."""
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    found: dict[str, Path] = {}
    for f in files:
        split = _json_split_name(f)
        if split is None and path.is_file():
            raise TextDataError(f"cannot tell the split of {f}: name it like train-v1.1.json or dev-v1.1.json.")
        if split is not None:
            if split in found:
                raise TextDataError(f"{path} holds two {split} files ({found[split].name}, {f.name}): keep one.")
            found[split] = f
    return found


def _from_hub_format(ds) -> dict[str, list]:
    """HF ``squad`` rows (``answers: {text: [...], answer_start: [...]}``) or ours (a list of strings)."""
    answers = [a["text"] if isinstance(a, dict) else a for a in ds["answers"]]
    titles = ds["title"] if "title" in ds.column_names else [""] * len(ds)
    ids = ds["id"] if "id" in ds.column_names else [str(i) for i in range(len(ds))]
    return {"id": [str(i) for i in ids], "title": titles, "context": ds["context"], "question": ds["question"],
            "answers": answers}


def _check(dd, source) -> None:
    for split, ds in dd.items():
        for column in ("context", "question"):
            for i, text in enumerate(ds[column]):
                if not text or not text.strip():
                    raise TextDataError(f"SQuAD source {source}, split '{split}', row {i} has an empty "
                                        f"{column}: drop such rows or fix the source.")
        for i, answers in enumerate(ds["answers"]):
            if not answers or not all(a and a.strip() for a in answers):
                raise TextDataError(f"SQuAD source {source}, split '{split}', row {i} (id {ds['id'][i]}) has "
                                    f"an empty gold answer ({answers!r}): every question needs non-empty answers.")


def _raw_splits(source) -> dict:
    """Split name -> column dict, from JSON files, a save_to_disk folder, or the hub."""
    path = Path(str(source)).expanduser()
    is_saved_folder = path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json"))
    if path.exists() and not is_saved_folder:
        files = _json_files(path)
        if not files:
            raise TextDataError(f"{path} holds no SQuAD JSON (train-v1.1.json / dev-v1.1.json) and is not a "
                                f"save_to_disk folder. Generate one offline with `{GENERATOR_CLI}`.")
        out = {}
        for split, f in files.items():
            try:
                obj = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TextDataError(f"{f} is not valid JSON ({e}); download it again or regenerate it.") from None
            out[split] = _rows_from_json(obj, f)
        return out
    raw = load_source(source, what="SQuAD", generator_cli=GENERATOR_CLI, download_script="scripts/download_squad.sh")
    require_columns(raw, ("context", "question", "answers"), source=source, what="SQuAD")
    return {split: _from_hub_format(ds) for split, ds in raw.items()}


def _to_dataset_dict(columns_by_split: dict, source, n_carve: int, seed: int):
    import datasets

    dd = datasets.DatasetDict({s: text_dataset(c) for s, c in columns_by_split.items()})
    _check(dd, source)
    return canonical_splits(dd, source=source, what="SQuAD", n_carve=n_carve, seed=seed,
                            aliases=SQUAD_SPLIT_ALIASES)


def load_squad(source: str | None = SQUAD_HUB_NAME, *, n_carve: int = 1000, seed: int = 0):
    """SQuAD v1.1 as a ``DatasetDict`` (train/valid/test) with columns id, title, context, question, answers.

    ``source``: the hub name (default ``rajpurkar/squad``), an official JSON file or a folder of them
    (``*train*.json``, ``*dev*.json``), or a ``save_to_disk`` folder (hub columns, or ours).
    The official dev set is ``test``; ``valid`` is carved out of train (at most ``n_carve`` rows,
    whole paragraphs, seeded by ``seed``) unless the source has one.
    """
    source = SQUAD_HUB_NAME if source is None else source
    return _to_dataset_dict(_raw_splits(source), source, n_carve, seed)[0]


# ---------------------------------------------------------------------------------------------
# Synthetic SQuAD in the official format
# ---------------------------------------------------------------------------------------------

FIRST_NAMES = ("Anselm", "Brigida", "Corvin", "Delphine", "Evander", "Fenna", "Gideon", "Hester", "Ilario",
               "Johanna", "Kasimir", "Leonie", "Matthias", "Nerissa", "Oswin", "Philippa", "Rurik", "Solveig",
               "Theodor", "Ursula", "Valentin", "Wilhelmina")
SYLLABLES = ("ka", "lo", "mir", "ten", "va", "dor", "el", "bri", "sa", "nu", "ther", "gan", "ro", "vi", "les",
             "tor", "am", "qui", "zel", "por", "ban", "hal", "ost", "rin")
TOWN_ENDINGS = ("holm", "ford", "wick", "stad", "mere", "ton", "vik", "burg")
FIELDS = ("botany", "astronomy", "engineering", "law", "medicine", "music", "architecture", "geology",
          "chemistry", "painting")
PROFESSIONS = ("surveyor", "architect", "physician", "teacher", "engineer", "judge", "composer", "glassblower",
               "cartographer", "librarian")
ORG_WORDS = (("Northern", "Royal", "Free", "Coastal", "Silver", "Eastern"),
             ("Botanical", "Astronomical", "Weavers'", "Cartographers'", "Glassmakers'", "Choral"),
             ("Society", "Guild", "Circle", "Union"))
PRODUCTS = ("cheese", "woollen blankets", "clocks", "honey", "pottery", "glassware", "boats", "apples",
            "lace", "copper kettles")
COMPASS = ("north", "south", "east", "west")


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(n)).capitalize()


class _Paragraph:
    """Builds a paragraph and records answer spans: ``spans[key] = (char_start, text)``."""

    def __init__(self):
        self.parts: list[str] = []
        self.length = 0
        self.spans: dict[str, tuple[int, str]] = {}

    def text(self, s: str):
        self.parts.append(s)
        self.length += len(s)

    def slot(self, key: str, s: str, *, prefix: str = "", short: str | None = None):
        """Append ``prefix + s``; record ``s`` as ``key``, ``prefix + s`` as ``key+"_long"`` and the
        leading ``short`` part of ``s`` as ``key+"_short"``."""
        if prefix:
            self.spans[key + "_long"] = (self.length, prefix + s)
            self.text(prefix)
        if short is not None:
            assert s.startswith(short)
            self.spans[key + "_short"] = (self.length, short)
        self.spans[key] = (self.length, s)
        self.text(s)

    def __str__(self):
        return "".join(self.parts)


def _person_paragraph(rng: random.Random):
    """A biography; returns (title, paragraph, [(question, [answer keys: primary first])])."""
    last = _word(rng, rng.randint(2, 3))
    full = f"{rng.choice(FIRST_NAMES)} {last}"
    town, city = rng.sample([_word(rng, 2) + rng.choice(TOWN_ENDINGS) for _ in range(3)], 2)
    born = rng.randint(1700, 1940)
    founded = born + rng.randint(25, 60)
    org = " ".join(rng.choice(words) for words in ORG_WORDS)
    field_, profession = rng.choice(FIELDS), rng.choice(PROFESSIONS)
    years, members = rng.randint(2, 30), rng.randint(12, 9000)
    b = _Paragraph()
    b.text(f"{full} was born in ")
    b.slot("born", str(born))
    b.text(" in ")
    b.slot("town", town)
    b.text(", a town on ")
    b.slot("river", f"{_word(rng, 2)} River", prefix="the ")
    b.text(".")
    questions = [(f"In what year was {full} born?", ["born"]), (f"Where was {full} born?", ["town"]),
                 (f"On which river does {town} lie?", ["river", "river_long"])]
    optional = rng.sample(["study", "work", "found"], rng.randint(1, 3))
    if "study" in optional:
        b.text(" They studied ")
        b.slot("field", field_)
        b.text(" at ")
        b.slot("academy", f"{_word(rng, 2)} Academy", prefix="the ")
        b.text(".")
        questions += [(f"What did {full} study?", ["field"]),
                      (f"Where did {full} study {field_}?", ["academy", "academy_long"])]
    if "work" in optional:
        b.text(f" Later, {last} worked as a ")
        b.slot("profession", profession)
        b.text(" in ")
        b.slot("city", city)
        b.text(" for ")
        b.slot("years", f"{years} years", short=str(years))
        b.text(".")
        questions += [(f"What did {last} work as in {city}?", ["profession"]),
                      (f"In which city did {full} work as a {profession}?", ["city"]),
                      (f"How long did {full} work in {city}?", ["years", "years_short"])]
    if "found" in optional:
        b.text(" In ")
        b.slot("founded", str(founded))
        b.text(f", {last} founded ")
        b.slot("org", org, prefix="the ")
        b.text(", which now has ")
        b.slot("members", f"{members:,}")
        b.text(" members.")
        questions += [(f"What did {full} found in {founded}?", ["org", "org_long"]),
                      (f"When did {full} found the {org}?", ["founded"]),
                      (f"How many members does the {org} have?", ["members"])]
    return full, b, questions


def _town_paragraph(rng: random.Random):
    """A gazetteer entry; returns (title, paragraph, questions) as ``_person_paragraph``."""
    town, city = rng.sample([_word(rng, 2) + rng.choice(TOWN_ENDINGS) for _ in range(3)], 2)
    region, country = _word(rng, 2), _word(rng, 2) + rng.choice(("ia", "land", "ora"))
    km, direction, population = rng.randint(3, 400), rng.choice(COMPASS), rng.randint(200, 90_000)
    product, tower, built = rng.choice(PRODUCTS), _word(rng, 2), rng.randint(1100, 1900)
    b = _Paragraph()
    b.text(f"{town} is a town in ")
    b.slot("region", region, prefix="the ")
    b.text(" region of ")
    b.slot("country", country)
    b.text(".")
    questions = [(f"In which region is {town}?", ["region", "region_long"]),
                 (f"In which country is {town}?", ["country"])]
    for part in rng.sample(["distance", "people", "known", "tower"], rng.randint(2, 4)):
        if part == "distance":
            b.text(" It lies ")
            b.slot("km", f"{km} kilometres", short=str(km))
            b.text(" ")
            b.slot("direction", direction)
            b.text(f" of {city}.")
            questions += [(f"How far is {town} from {city}?", ["km", "km_short"]),
                          (f"In which direction from {city} does {town} lie?", ["direction"])]
        elif part == "people":
            b.text(" ")
            b.slot("population", f"{population:,}", prefix="About ")
            b.text(" people live there.")
            questions.append((f"How many people live in {town}?", ["population", "population_long"]))
        elif part == "known":
            b.text(" The town is known for ")
            b.slot("product", product, prefix="its ")
            b.text(".")
            questions.append((f"What is {town} known for?", ["product", "product_long"]))
        else:
            b.text(" Its oldest building, ")
            b.slot("tower", f"{tower} Tower", prefix="the ")
            b.text(", was built in ")
            b.slot("built", str(built))
            b.text(".")
            questions += [(f"When was the {tower} Tower built?", ["built"]),
                          (f"What is the oldest building in {town}?", ["tower", "tower_long"])]
    return town, b, questions


def synthetic_squad_article(rng: random.Random, prefix: str, *, alternatives: bool) -> dict:
    """One article (one paragraph, 3-5 questions) in the official JSON format."""
    title, paragraph, questions = (_person_paragraph if rng.random() < 0.5 else _town_paragraph)(rng)
    context = str(paragraph)
    qas = []
    for j, (question, keys) in enumerate(rng.sample(questions, min(len(questions), rng.randint(3, 5)))):
        used = keys if alternatives else keys[:1]
        answers = [{"text": paragraph.spans[k][1], "answer_start": paragraph.spans[k][0]} for k in used]
        qas.append({"id": f"{prefix}-q{j}", "question": question, "answers": answers})
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def synthetic_squad_json(n_train_paragraphs: int = 2000, n_dev_paragraphs: int = 200, seed: int = 0) -> dict:
    """``{"train": obj, "dev": obj}``, official SQuAD v1.1 JSON objects; no paragraph is in both,
    dev questions list alternative gold answers, and the same arguments give identical output."""
    if min(n_train_paragraphs, n_dev_paragraphs) < 0:
        raise TextDataError("n_train_paragraphs and n_dev_paragraphs must be >= 0.")
    streams = [random.Random(int(s.generate_state(1)[0])) for s in np.random.SeedSequence(seed).spawn(2)]
    seen: set[str] = set()
    out = {}
    for (split, n), rng in zip((("train", n_train_paragraphs), ("dev", n_dev_paragraphs)), streams):
        articles = []
        while len(articles) < n:
            article = synthetic_squad_article(rng, f"{split}-{len(articles):06d}", alternatives=split == "dev")
            context = article["paragraphs"][0]["context"]
            if split == "dev" and context in seen:
                continue
            seen.add(context)
            articles.append(article)
        out[split] = {"version": "1.1", "data": articles}
    return out


@dataclass(frozen=True)
class SquadConfig:
    """The synthetic SQuAD generator, and how much of train becomes ``valid``."""

    n_train_paragraphs: int = option(2000, "synthetic training paragraphs (3-5 questions each)")
    n_dev_paragraphs: int = option(200, "synthetic dev paragraphs: the test split")
    n_valid: int = option(1000, "most questions carved out of train (whole paragraphs) as the valid split")
    seed: int = option(0, "seed; the same arguments and seed give identical data")

    def __post_init__(self):
        check_config("SquadConfig", [
            (min(self.n_train_paragraphs, self.n_dev_paragraphs, self.n_valid) >= 0,
             "n_train_paragraphs, n_dev_paragraphs and n_valid must be >= 0"),
        ])

    @property
    def name(self) -> str:
        return f"squad-synthetic_{format_count(self.n_train_paragraphs)}p"


def generate_squad(n_train_paragraphs: int = 2000, n_dev_paragraphs: int = 200, seed: int = 0, *,
                   n_carve: int = 1000):
    """The synthetic set, in memory, exactly as ``load_squad`` reads it from ``write_synthetic_squad``'s files."""
    objs = synthetic_squad_json(n_train_paragraphs, n_dev_paragraphs, seed)
    cols = {split: _rows_from_json(obj, f"synthetic {split}") for split, obj in objs.items()}
    return _to_dataset_dict(cols, "synthetic SQuAD", n_carve, seed)[0]


def write_synthetic_squad(path, n_train_paragraphs: int = 2000, n_dev_paragraphs: int = 200, seed: int = 0, *,
                          overwrite: bool = False) -> Path:
    """Write ``train-v1.1.json``, ``dev-v1.1.json`` and ``dataset_card.json`` into the folder ``path``
    (a temporary sibling renamed at the end)."""
    from io_utils import atomic_directory

    path = Path(path)
    ensure_absent(path, overwrite)
    t0 = time.perf_counter()
    objs = synthetic_squad_json(n_train_paragraphs, n_dev_paragraphs, seed)
    card = {"name": path.name, "generator": "squad_utils.write_synthetic_squad",
            "config": {"n_train_paragraphs": n_train_paragraphs, "n_dev_paragraphs": n_dev_paragraphs, "seed": seed},
            "n_questions": {s: sum(len(a["paragraphs"][0]["qas"]) for a in o["data"]) for s, o in objs.items()},
            "format": "official SQuAD v1.1 JSON; load with squad_utils.load_squad(path)",
            "generation_seconds": round(time.perf_counter() - t0, 3)}
    with atomic_directory(path, overwrite=overwrite) as tmp:
        for split, obj in objs.items():
            (tmp / f"{split}-v1.1.json").write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "dataset_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write a synthetic SQuAD v1.1 set (official JSON) offline, or "
                                            "convert SQuAD (--source: hub name, JSON files or a saved "
                                            "folder) into a save_to_disk DatasetDict with every gold answer.")
    add_config_args(p, SquadConfig)
    add_config_args(p, OutputConfig)
    return p


def _main(argv):
    args = build_arg_parser().parse_args(argv)
    cfg, out = config_from_args(SquadConfig, args), config_from_args(OutputConfig, args)
    if out.source is None:
        path = write_synthetic_squad(Path(out.out) / cfg.name, cfg.n_train_paragraphs, cfg.n_dev_paragraphs,
                                     cfg.seed, overwrite=out.overwrite)
        return path, load_squad(path, n_carve=cfg.n_valid, seed=cfg.seed)
    path = Path(out.out) / Path(out.source).name.removesuffix(".json")
    ensure_absent(path, out.overwrite)
    dd, notes = _to_dataset_dict(_raw_splits(out.source), out.source, cfg.n_valid, cfg.seed)
    card = {"name": path.name, "source": out.source, "converted_by": "squad_utils.load_squad",
            "split_notes": notes + ["test: the source's official dev/validation split"]}
    return save_text_dataset(dd, card, path, overwrite=out.overwrite), dd


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
