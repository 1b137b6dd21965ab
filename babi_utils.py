"""bAbI-style question answering (tasks qa1-qa5): the BABILong "0k" loader and an offline generator.

A sample is ``{context, query, target, answers}``::

    context  Alma went to the attic.\\nAlma picked up the lantern.\\nAlma moved to the porch.
    query    Question: Where is the lantern?\\nAnswer:
    target   porch                                  (answers: ["porch"])

The context holds the story's facts, one per line. The five tasks:

- qa1 single supporting fact: people move; "Where is P?" -> P's last place.
- qa2 two supporting facts: people also pick up and drop objects; "Where is the O?" -> where O lies,
  or where its carrier is.
- qa3 three supporting facts: "Where was the O before the L?" -> the place O was in just before it
  came to L (asked only when O has been at L exactly once, and not first).
- qa4 two-argument relations: two facts "The A is <dir> of the B."; "What is <dir> of the B?" or
  "What is the A <dir> of?".
- qa5 three-argument relations: people also hand objects to each other; "What did P give to Q?",
  "Who gave the O to Q?", "Who did P give the O to?", "Who gave the O?", "Who received the O?"
  (asked only when the story's hand-overs give exactly one answer).

The generator uses its own people, places and objects, simulates a consistent world (an object is
picked up only where it lies, handed over only between people in the same place, and is always
where its carrier is), and asks a question only when the facts determine its answer. The splits
draw from independent seeded streams; a valid or test story whose context occurs in an earlier split
is redrawn, so no context is shared across splits.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from cli import add_config_args, check_config, config_from_args, option
from text_qa_data import (TEXT_COLUMNS, OutputConfig, TextDataError, canonical_splits, check_nonempty,
                          generate_or_convert, load_source, question_query, require_columns, run_cli, text_dataset)

BABI_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
BABILONG_COLUMNS = ("input", "question", "target")
PEOPLE = ("Alma", "Boris", "Cleo", "Dario", "Esme", "Farid", "Greta", "Hugo",
          "Ines", "Jonas", "Kira", "Lorenzo", "Mina", "Nils", "Olga", "Pavel")
PLACES = ("attic", "cellar", "library", "pantry", "porch", "studio", "workshop", "greenhouse",
          "lobby", "garage", "balcony", "nursery", "chapel", "stable", "laundry", "gallery")
OBJECTS = ("lantern", "violin", "compass", "teapot", "umbrella", "notebook", "basket", "hammer",
           "kettle", "scarf", "candle", "globe")
MOVE_VERBS = ("went to", "moved to", "walked to", "travelled to", "headed to", "ran to")
PICK_VERBS = ("picked up", "grabbed", "took")
DROP_VERBS = ("dropped", "put down", "left")
GIVE_VERBS = ("gave", "handed", "passed")
DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
MIN_FACTS_FOR_A_QUESTION = {"qa3": 3, "qa5": 4}  # move+pick+move; move+pick+move(other)+give
DEFAULT_FACTS = {"qa1": (2, 10), "qa2": (4, 20), "qa3": (6, 24), "qa4": (2, 2), "qa5": (4, 20)}
CAST = {"people": 4, "places": 6, "objects": 4}  # drawn per story from the lists above
ACTION_WEIGHTS = {"qa1": {"move": 1.0}, "qa2": {"move": 0.5, "pick": 0.3, "drop": 0.2},
                  "qa3": {"move": 0.55, "pick": 0.3, "drop": 0.15},
                  "qa5": {"move": 0.35, "pick": 0.25, "drop": 0.1, "give": 0.3}}


@dataclass(frozen=True)
class BabiConfig:
    """What the bAbI generator draws; invalid combinations raise at construction."""

    task: str = option("qa1", "bAbI task: qa1 (one supporting fact) ... qa5 (three-argument relations)",
                       choices=BABI_TASKS)
    n_train: int = option(10_000, "training samples")
    n_valid: int = option(1_000, "validation samples (with --source: the most rows carved out of train "
                                 "when the source has no validation split)")
    n_test: int = option(1_000, "test samples (with --source: as --n_valid, for a missing test split)")
    seed: int = option(0, "seed; the same arguments and seed give identical data")
    min_facts: int | None = option(None, "fewest facts per story; None: the task's own ("
                                         + ", ".join(f"{t} {lo}" for t, (lo, _) in DEFAULT_FACTS.items()) + ")")
    max_facts: int | None = option(None, "most facts per story; None: the task's own ("
                                         + ", ".join(f"{t} {hi}" for t, (_, hi) in DEFAULT_FACTS.items()) + ")")

    def __post_init__(self):
        lo, hi = self.fact_range
        check_config("BabiConfig", [
            (self.task in BABI_TASKS, f"task={self.task!r} is not one of {BABI_TASKS}"),
            (min(self.n_train, self.n_valid, self.n_test) >= 0, "n_train, n_valid and n_test must be >= 0"),
            (2 <= lo <= hi, f"need 2 <= min_facts <= max_facts; got {lo} and {hi}"),
            (hi >= MIN_FACTS_FOR_A_QUESTION.get(self.task, 2),
             f"{self.task} needs max_facts >= {MIN_FACTS_FOR_A_QUESTION.get(self.task)} to ask anything"),
            (self.task != "qa4" or lo == hi == 2, "qa4 stories have exactly 2 facts: leave min/max_facts unset"),
        ])

    @property
    def fact_range(self) -> tuple[int, int]:
        lo, hi = DEFAULT_FACTS.get(self.task, (2, 2))
        return (lo if self.min_facts is None else self.min_facts, hi if self.max_facts is None else self.max_facts)

    @property
    def name(self) -> str:
        """Folder-name stem: ``babi-qa1``, or ``babi-qa2-F4-12`` with a non-default fact range."""
        lo, hi = self.fact_range
        return f"babi-{self.task}" + ("" if (lo, hi) == DEFAULT_FACTS[self.task] else f"-F{lo}-{hi}")


# ---------------------------------------------------------------------------------------------
# The simulated world (qa1, qa2, qa3, qa5)
# ---------------------------------------------------------------------------------------------

@dataclass
class _World:
    where: dict[str, str] = field(default_factory=dict)           # person -> current place
    holder: dict[str, str] = field(default_factory=dict)          # object -> person carrying it
    lying: dict[str, str] = field(default_factory=dict)           # object -> place it lies in
    history: dict[str, list[str]] = field(default_factory=dict)   # object -> its places, consecutive distinct
    gifts: list[tuple[str, str, str]] = field(default_factory=list)  # (giver, object, receiver)

    def object_place(self, obj: str) -> str | None:
        return self.where.get(self.holder[obj]) if obj in self.holder else self.lying.get(obj)

    def feasible(self, kind: str, people, places, objects) -> list[tuple]:
        """Every action of this kind the world allows now (arguments for ``apply``)."""
        if kind == "move":
            return [(p, l) for p in people for l in places if self.where.get(p) != l]
        if kind == "pick":
            return [(p, o) for p in self.where for o in objects
                    if o not in self.holder and self.lying.get(o, self.where[p]) == self.where[p]]
        if kind == "drop":
            return [(p, o) for o, p in self.holder.items()]
        return [(p, o, q) for o, p in self.holder.items() for q in self.where
                if q != p and self.where[q] == self.where[p]]

    def apply(self, kind: str, args: tuple, rng: random.Random) -> str:
        """Change the world and return the fact that says so."""
        if kind == "move":
            person, place = args
            self.where[person] = place
            for obj, carrier in self.holder.items():
                if carrier == person:
                    self.history[obj].append(place)
            return f"{person} {rng.choice(MOVE_VERBS)} the {place}."
        if kind == "pick":
            person, obj = args
            self.lying.pop(obj, None)
            self.holder[obj] = person
            self.history.setdefault(obj, [self.where[person]])
            return f"{person} {rng.choice(PICK_VERBS)} the {obj}."
        if kind == "drop":
            person, obj = args
            del self.holder[obj]
            self.lying[obj] = self.where[person]
            return f"{person} {rng.choice(DROP_VERBS)} the {obj}."
        giver, obj, receiver = args
        self.holder[obj] = receiver
        self.gifts.append((giver, obj, receiver))
        return f"{giver} {rng.choice(GIVE_VERBS)} the {obj} to {receiver}."


def _questions(task: str, world: _World) -> list[tuple[str, str]]:
    """Every (question, answer) pair the story determines."""
    if task == "qa1":
        return [(f"Where is {p}?", l) for p, l in world.where.items()]
    if task == "qa2":
        return [(f"Where is the {o}?", world.object_place(o)) for o in world.history
                if world.object_place(o) is not None]
    if task == "qa3":
        out = []
        for o, places in world.history.items():
            for i, place in enumerate(places[1:], start=1):
                if places.count(place) == 1:
                    out.append((f"Where was the {o} before the {place}?", places[i - 1]))
        return out
    candidates: dict[str, set[str]] = {}
    for giver, obj, receiver in world.gifts:
        candidates.setdefault(f"What did {giver} give to {receiver}?", set()).add(obj)
        candidates.setdefault(f"Who gave the {obj} to {receiver}?", set()).add(giver)
        candidates.setdefault(f"Who did {giver} give the {obj} to?", set()).add(receiver)
        candidates.setdefault(f"Who gave the {obj}?", set()).add(giver)
        candidates.setdefault(f"Who received the {obj}?", set()).add(receiver)
    return [(q, next(iter(a))) for q, a in candidates.items() if len(a) == 1]


def _world_story(task: str, n_facts: int, rng: random.Random):
    """Facts and a determined (question, answer), or None when the story determines no question."""
    people = rng.sample(PEOPLE, CAST["people"])
    places = rng.sample(PLACES, CAST["places"])
    objects = rng.sample(OBJECTS, CAST["objects"])
    world, facts = _World(), []
    weights = ACTION_WEIGHTS[task]
    for _ in range(n_facts):
        options = {k: world.feasible(k, people, places, objects) for k in weights}
        kinds = [k for k in weights if options[k]]
        kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
        facts.append(world.apply(kind, rng.choice(options[kind]), rng))
    questions = _questions(task, world)
    return (facts, rng.choice(questions)) if questions else None


def _relation_story(rng: random.Random):
    """qa4: "A is d1 of B" and "C is d2 of A" on a grid (C != B), each fact stated either way round."""
    a, b, c = rng.sample(PLACES, 3)
    d1 = rng.choice(list(DIRECTIONS))
    d2 = rng.choice([d for d in DIRECTIONS if d != OPPOSITE[d1]])  # else C would sit on B
    relations = [(a, d1, b), (b, OPPOSITE[d1], a), (c, d2, a), (a, OPPOSITE[d2], c)]
    stated = [rng.choice(relations[:2]), rng.choice(relations[2:])]
    rng.shuffle(stated)
    facts = [f"The {x} is {d} of the {y}." for x, d, y in stated]
    x, d, y = rng.choice(relations)
    question = (f"What is {d} of the {y}?", x) if rng.random() < 0.5 else (f"What is the {x} {d} of?", y)
    return facts, question


def babi_sample(task: str, rng: random.Random, fact_range: tuple[int, int], *, max_tries: int = 1000) -> dict:
    """One sample; stories that determine no question are redrawn (at most ``max_tries`` times)."""
    for _ in range(max_tries):
        story = _relation_story(rng) if task == "qa4" else _world_story(task, rng.randint(*fact_range), rng)
        if story is not None:
            facts, (question, answer) = story
            return {"context": "\n".join(facts), "query": question_query(question), "target": answer,
                    "answers": [answer]}
    raise TextDataError(f"{task}: {max_tries} stories of {fact_range[0]}-{fact_range[1]} facts in a row "
                        f"determined no question; raise --min_facts/--max_facts.")


# ---------------------------------------------------------------------------------------------
# Generation with disjoint splits
# ---------------------------------------------------------------------------------------------

def _generate_split(cfg: BabiConfig, n: int, rng: random.Random, exclude: set[str], split: str):
    rows, redrawn = [], 0
    max_draws = 20 * n + 1000
    while len(rows) < n:
        if len(rows) + redrawn >= max_draws:
            raise TextDataError(f"{cfg.task}: drew {max_draws} stories but only {len(rows)} of {n} {split} "
                                f"samples have contexts outside the earlier splits; the context space is "
                                f"too small for these sizes: lower --n_{split} or --n_train, or raise "
                                f"--max_facts.")
        sample = babi_sample(cfg.task, rng, cfg.fact_range)
        if sample["context"] in exclude:
            redrawn += 1
            continue
        rows.append(sample)
    return rows, redrawn


def _generate(cfg: BabiConfig):
    """``(DatasetDict, card)``; the splits draw from three streams spawned from ``(cfg.seed, task)``."""
    import datasets

    t0 = time.perf_counter()
    root = np.random.SeedSequence([cfg.seed, BABI_TASKS.index(cfg.task)])  # tasks draw unrelated stories
    streams = [random.Random(int(s.generate_state(1)[0])) for s in root.spawn(3)]
    seen: set[str] = set()
    splits, redrawn = {}, {}
    for (split, n), rng in zip((("train", cfg.n_train), ("valid", cfg.n_valid), ("test", cfg.n_test)), streams):
        rows, redrawn[split] = _generate_split(cfg, n, rng, seen if split != "train" else set(), split)
        columns = {c: [r[c] for r in rows] for c in TEXT_COLUMNS}
        splits[split] = text_dataset(columns)
        seen.update(columns["context"])
    card = {"name": cfg.name, "generator": "babi_utils.generate_babi", "config": asdict(cfg),
            "fact_range": list(cfg.fact_range), "redrawn_for_overlap_with_earlier_splits": redrawn,
            "vocabulary": {"people": len(PEOPLE), "places": len(PLACES), "objects": len(OBJECTS)},
            "generation_seconds": round(time.perf_counter() - t0, 3)}
    return datasets.DatasetDict(splits), card


def generate_babi(task: str = "qa1", n_train: int = 10_000, n_valid: int = 1_000, n_test: int = 1_000,
                  seed: int = 0, *, min_facts: int | None = None, max_facts: int | None = None):
    """A ``DatasetDict`` (train/valid/test) of generated qa1-qa5-style stories; no context is shared
    between splits, and the same arguments give identical data."""
    return _generate(BabiConfig(task, n_train, n_valid, n_test, seed, min_facts, max_facts))[0]


# ---------------------------------------------------------------------------------------------
# BABILong loader
# ---------------------------------------------------------------------------------------------

def babilong_hub_name(task: str) -> str:
    return f"yurakuratov/babilong_{task}_0k"


def split_facts(text: str) -> list[str]:
    """BABILong's ``input`` ("Mary moved to the bathroom. John went to the hallway.") -> one fact each."""
    facts, start = [], 0
    for i, ch in enumerate(text):
        if ch in ".!?" and (i + 1 == len(text) or text[i + 1].isspace()):
            facts.append(text[start:i + 1].strip())
            start = i + 1
    facts.append(text[start:].strip())
    return [f for f in facts if f]


def _from_babilong(ds) -> dict[str, list]:
    targets = [t.strip() for t in ds["target"]]
    return {"context": ["\n".join(split_facts(x)) for x in ds["input"]],
            "query": [question_query(q) for q in ds["question"]],
            "target": targets, "answers": [[t] for t in targets]}


def _from_canonical(ds) -> dict[str, list]:
    answers = ds["answers"] if "answers" in ds.column_names else [[t] for t in ds["target"]]
    return {"context": ds["context"], "query": ds["query"], "target": ds["target"], "answers": answers}


def _load(source, task: str, n_carve: int, seed: int):
    import datasets

    if task not in BABI_TASKS:
        raise TextDataError(f"task={task!r} is not one of {BABI_TASKS}.")
    what = f"BABILong {task}"
    raw = load_source(source, what=what, generator_cli=f"python babi_utils.py --task {task} --out data/",
                      download_script="scripts/download_babi.sh")
    canonical = all(c in raw[s].column_names for s in raw for c in ("context", "query", "target"))
    if not canonical:
        require_columns(raw, BABILONG_COLUMNS, source=source, what=what)
    convert = _from_canonical if canonical else _from_babilong
    dd = datasets.DatasetDict({s: text_dataset(convert(ds)) for s, ds in raw.items()})
    check_nonempty(dd, source=source, what=what)
    return canonical_splits(dd, source=source, what=what, n_carve=n_carve, seed=seed)


def load_babi(source: str | None = None, task: str = "qa1", *, n_carve: int = 1000, seed: int = 0):
    """BABILong "0k" data as a ``DatasetDict`` (train/valid/test) of text-task columns.

    ``source``: a hub name (default ``yurakuratov/babilong_{task}_0k``) or a ``save_to_disk`` folder,
    with BABILong's columns ``input`` (the facts), ``question``, ``target``, or already with
    ``context``/``query``/``target`` (``answers`` optional). A missing valid or test split is carved
    out of train (at most ``n_carve`` rows, whole contexts, seeded by ``seed``).
    """
    return _load(babilong_hub_name(task) if source is None else source, task, n_carve, seed)[0]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate bAbI-style qa1-qa5 data offline, or convert BABILong "
                                            "(--source) into a DatasetDict with columns context, query, "
                                            "target, answers.")
    add_config_args(p, BabiConfig)
    add_config_args(p, OutputConfig)
    return p


def _main(argv):
    args = build_arg_parser().parse_args(argv)
    cfg, out = config_from_args(BabiConfig, args), config_from_args(OutputConfig, args)
    return generate_or_convert(cfg, out, _generate, lambda source: _load(source, cfg.task, cfg.n_valid, cfg.seed),
                               "babi_utils.load_babi", task=cfg.task)


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
