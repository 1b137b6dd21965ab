"""Tasks: where a dataset comes from, how it is tokenised, and how an answer is scored.

The training loop and ``evaluate.py`` know a task only through this interface, so every memory model
trains and evaluates on every task through the same code:

- ``config_class``: a dataclass of the task's flags (run scripts generate them);
- ``load_splits(splits, seed)``: ``datasets.Dataset`` per split. Text tasks have string columns
  ``context``, ``query``, ``target`` and, where there are several gold answers, ``answers``;
- ``tokenizer()``: the task's own tokenizer (KV: one token per character), or None when the tokenizer
  comes with a pretrained model;
- ``collator(tokenizer, max_context_length)``: samples -> ``context_input_ids [B, S]``,
  ``query_input_ids [B, Q]`` (query then target) and ``labels [B, Q]`` (-100 except on the target);
- ``scored_mask(labels, tokenizer)``: the target positions that teacher-forced exact match scores;
- ``score_texts(predictions, samples)``: per-sample scores of generated answers (None: not scored).

Tasks: ``kv`` (synthetic key-value retrieval), ``babi``, ``squad`` (three layouts), ``phonebook`` and
``mqar`` (multi-query associative recall, in ``mqar/``).
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from cli import option

IGNORE_INDEX = -100


class Task:
    """Base class. A subclass sets ``name`` and ``config_class`` and implements ``load_splits``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = None
    # generated answers end at EOS or at the first newline
    answer_stop: ClassVar[str] = "\n"

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()

    def load_splits(self, splits=("train", "valid"), seed: int = 0) -> dict:
        raise NotImplementedError

    def tokenizer(self):
        """The task's own tokenizer, or None: the pretrained model's tokenizer is used."""
        return None

    def collator(self, tokenizer, max_context_length: int | None = None):
        return TextCollator(tokenizer, max_context_length=max_context_length)

    def scored_mask(self, labels: torch.Tensor, tokenizer) -> torch.Tensor:
        """``[B, Q-1]``: the label positions that exact match and token accuracy score."""
        return labels[:, 1:] != IGNORE_INDEX

    def score_texts(self, predictions: list[str], samples: list[dict]) -> dict[str, list[float]] | None:
        """Per-sample scores of generated answers: exact match and F1 after SQuAD's normalisation, the best
        over the gold answers."""
        from text_metrics import squad_scores

        return squad_scores(predictions, [gold_answers(s) for s in samples])

    def describe(self) -> str:
        return self.name


def gold_answers(sample: dict) -> list[str]:
    """Every gold answer of a sample: ``answers`` where the task has several, else ``[target]``."""
    answers = sample.get("answers")
    return list(answers) if answers else [sample["target"]]


# ---------------------------------------------------------------------------------------------
# Collating text with a subword tokenizer
# ---------------------------------------------------------------------------------------------

class TaskDataError(ValueError):
    """Bad or missing data: the message names the problem and the fix."""


def needs_bos(tokenizer) -> bool:
    """True when the tokenizer itself puts BOS in front of a text (llama-style models expect it)."""
    if tokenizer.bos_token_id is None:
        return False
    return tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


@dataclass
class TextCollator:
    """Text samples -> ``context_input_ids [B, S]``, ``query_input_ids [B, Q]``, ``labels [B, Q]``.

    The context is tokenised alone (with BOS in front where the model expects one); the query row is
    ``tokens(query) + tokens(" " + target) + [EOS]``, and exactly the target tokens and the EOS are
    labelled, so decoding the labelled tokens gives back ``" " + target``. Right padding with the pad
    id. Contexts longer than ``max_context_length`` lose their tail; cuts are counted and warned about.
    """

    tokenizer: object
    max_context_length: int | None = None
    pad_to_multiple_of: int = 8
    n_truncated: int = field(default=0, init=False)
    n_tokens_cut: int = field(default=0, init=False)

    def __post_init__(self):
        if self.tokenizer.pad_token_id is None:
            raise TaskDataError("the tokenizer has no pad token: set tokenizer.pad_token (e.g. to its EOS token) "
                                "before collating; backbones.load_tokenizer does this.")
        if self.tokenizer.eos_token_id is None:
            raise TaskDataError("the tokenizer has no EOS token, so answers could not end: use the model's own "
                                "tokenizer.")
        self.bos = [self.tokenizer.bos_token_id] if needs_bos(self.tokenizer) else []

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def __call__(self, samples: list[dict]) -> dict:
        for s in samples:
            for key in ("context", "query", "target"):
                if key not in s:
                    raise TaskDataError(f"a sample lacks the '{key}' field; text samples need context, query and "
                                        f"target strings.")
            if not s["context"].strip() or not s["target"].strip():
                raise TaskDataError(f"a sample has an empty {'context' if not s['context'].strip() else 'target'} "
                                    f"(query {s['query']!r}): drop such samples from the data.")
        contexts = [self.bos + ids for ids in self.encode([s["context"] for s in samples])]
        queries = self.encode([s["query"] for s in samples])
        targets = [ids + [self.tokenizer.eos_token_id] for ids in self.encode([" " + s["target"] for s in samples])]
        contexts = self.truncate(contexts)
        pad = self.tokenizer.pad_token_id
        S = -(-max(len(c) for c in contexts) // self.pad_to_multiple_of) * self.pad_to_multiple_of
        Q = max(len(q) + len(t) for q, t in zip(queries, targets))
        ctx = torch.full((len(samples), S), pad, dtype=torch.long)
        qry = torch.full((len(samples), Q), pad, dtype=torch.long)
        labels = torch.full((len(samples), Q), IGNORE_INDEX, dtype=torch.long)
        for b, (c, q, t) in enumerate(zip(contexts, queries, targets)):
            ctx[b, : len(c)] = torch.tensor(c)
            qry[b, : len(q) + len(t)] = torch.tensor(q + t)
            labels[b, len(q): len(q) + len(t)] = torch.tensor(t)
        return {"context_input_ids": ctx, "query_input_ids": qry, "labels": labels}

    def truncate(self, contexts: list[list[int]]) -> list[list[int]]:
        if self.max_context_length is None:
            return contexts
        cut = [max(0, len(c) - self.max_context_length) for c in contexts]
        if any(cut):
            self.n_truncated += sum(c > 0 for c in cut)
            self.n_tokens_cut += sum(cut)
            warnings.warn(f"truncated contexts to {self.max_context_length} tokens: {self.n_truncated} contexts and "
                          f"{self.n_tokens_cut} tokens cut so far; raise --max_context_length (within the model's "
                          f"positions) to keep whole contexts.", stacklevel=2)
        return [c[: self.max_context_length] for c in contexts]


def query_only(batch: dict, pad_token_id: int) -> torch.Tensor:
    """``[B, Q']`` the query ids without the target (each row's tokens before its first label), right-padded."""
    labels, ids = batch["labels"], batch["query_input_ids"]
    labelled = labels != IGNORE_INDEX
    lengths = torch.where(labelled.any(1), labelled.int().argmax(1), (ids != pad_token_id).sum(1))
    keep = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]
    return ids.masked_fill(~keep, pad_token_id)[:, : int(lengths.max())]


# ---------------------------------------------------------------------------------------------
# The tasks
# ---------------------------------------------------------------------------------------------

@dataclass
class KVTaskArgs:
    data_path: str | None = option(None, "dataset written by kv_dataset_utils.py (or a published one); without it a "
                                   "small KV dataset is generated in memory from the --task_* flags")
    tokenizer_path: str | None = option(None, "character tokenizer folder (default: tokenizers/kv_alphabet_62, or "
                                              "tokenizers/kv_alphabet_512 for in-memory data with "
                                              "--task_vocab_size above 62)")
    task_n_pairs: int = option(2, "in-memory data: key-value pairs per context")
    task_key_len: int = option(1, "in-memory data: characters per key")
    task_value_len: int = option(1, "in-memory data: characters per value")
    task_vocab_size: int = option(62, "in-memory data: key/value alphabet size")
    task_key_value_separator: bool = option(True, "in-memory data: ':' between key and value as in the paper; "
                                                  "without it the value follows its key directly ('!kv!')")
    task_n_train: int = option(50_000, "in-memory data: training samples")
    task_n_valid: int = option(500, "in-memory data: validation (and test) samples")


class KVTask(Task):
    """Associative key-value retrieval (``kv_dataset_utils.py``), one token per character. Exact match
    scores the value characters only: the ``!`` and ``|`` delimiters of the target are left out."""

    name = "kv"
    config_class = KVTaskArgs
    answer_stop = "|"

    def load_splits(self, splits=("train", "valid"), seed: int = 0) -> dict:
        import kv_dataset_utils as kv

        c = self.config
        if c.data_path:
            ds = kv.load_kv_dataset(c.data_path)
        else:
            task = kv.KVTaskConfig(n_pairs=c.task_n_pairs, key_len=c.task_key_len, value_len=c.task_value_len,
                                   vocab_size=c.task_vocab_size, key_value_separator=c.task_key_value_separator)
            ds, _ = kv.generate_kv_dataset(task, c.task_n_train, c.task_n_valid, c.task_n_valid, seed=seed)
        return pick_splits(ds, splits, c.data_path)

    def tokenizer(self):
        import kv_dataset_utils as kv

        c = self.config
        wide = not c.data_path and c.task_vocab_size > 62  # in-memory data beyond [a-zA-Z0-9]
        default = "tokenizers/kv_alphabet_512" if wide else "tokenizers/kv_alphabet_62"
        return kv.load_tokenizer(c.tokenizer_path or default)

    def collator(self, tokenizer, max_context_length=None):
        import kv_dataset_utils as kv

        return kv.KVCollator(tokenizer, max_context_length=max_context_length)

    def scored_mask(self, labels, tokenizer):
        mask = super().scored_mask(labels, tokenizer)
        for d in tokenizer.convert_tokens_to_ids(["!", "|"]):
            mask &= labels[:, 1:] != d
        return mask

    def score_texts(self, predictions, samples):
        """Right when the generated characters, delimiters left out, begin with the target's."""
        def strip(text):
            return text.replace("!", "").replace("|", "")

        golds = [strip(s["target"]) for s in samples]
        return {"exact_match": [float(strip(p)[: len(g)] == g) for p, g in zip(predictions, golds)]}


def pick_splits(ds, splits, source) -> dict:
    missing = [s for s in splits if s not in ds]
    if missing:
        raise TaskDataError(f"dataset {source or '(generated)'} has no {missing} split(s) (has {list(ds)}).")
    return {s: ds[s] for s in splits}


@dataclass
class BabiTaskArgs:
    data_path: str | None = option(None, "bAbI data: a save_to_disk folder or a hub name such as "
                                   "yurakuratov/babilong_qa1_0k; without it, stories are generated offline")
    babi_task: str = option("qa1", "which bAbI task (qa1-qa5)", choices=("qa1", "qa2", "qa3", "qa4", "qa5"))
    n_train: int = option(10_000, "offline generation: training samples")
    n_valid: int = option(500, "offline generation: validation (and test) samples")


class BabiTask(Task):
    """bAbI qa1-qa5 (``babi_utils.py``): WRITE the story's facts, READ the question, answer one word."""

    name = "babi"
    config_class = BabiTaskArgs

    def load_splits(self, splits=("train", "valid"), seed: int = 0) -> dict:
        import babi_utils

        c = self.config
        if c.data_path:
            ds = babi_utils.load_babi(c.data_path, task=c.babi_task, seed=seed)
        else:
            ds = babi_utils.generate_babi(c.babi_task, c.n_train, c.n_valid, c.n_valid, seed=seed)
        return pick_splits(ds, splits, c.data_path)

    def describe(self) -> str:
        return f"babi {self.config.babi_task}"


@dataclass
class SquadTaskArgs:
    data_path: str | None = option(None, "SQuAD v1.1: the hub name rajpurkar/squad, a folder with train-v1.1.json and "
                                   "dev-v1.1.json, or a save_to_disk folder; without it a synthetic set in the "
                                   "same format is generated offline")
    layout: str = option("c_qa", "what WRITE sees: c_qa (context; READ question + answer), cq_a (context and "
                         "question; READ 'Answer:'), qc_a (question then context)", choices=("c_qa", "cq_a", "qc_a"))
    n_train_paragraphs: int = option(2000, "offline generation: training paragraphs (several questions each)")
    n_dev_paragraphs: int = option(200, "offline generation: paragraphs of the test split (the official dev "
                                   "set's role); valid is carved out of train")


class SquadTask(Task):
    """Extractive QA (``squad_utils.py``), scored with SQuAD's exact match and F1 over every gold answer."""

    name = "squad"
    config_class = SquadTaskArgs

    def load_splits(self, splits=("train", "valid"), seed: int = 0) -> dict:
        import squad_utils

        c = self.config
        if c.data_path:
            ds = squad_utils.load_squad(c.data_path, seed=seed)
        else:
            ds = squad_utils.generate_squad(c.n_train_paragraphs, c.n_dev_paragraphs, seed=seed)
        return pick_splits(squad_utils.squad_layout(ds, c.layout), splits, c.data_path)

    def describe(self) -> str:
        return f"squad {self.config.layout}"


@dataclass
class PhonebookTaskArgs:
    data_path: str | None = option(None, "phonebook data: a save_to_disk folder or a hub name such as "
                                   "booydar/phonebook_N8; without it, phonebooks are generated offline")
    n_entries: int = option(8, "offline generation: entries per phonebook (2-64)")
    n_train: int = option(10_000, "offline generation: training samples")
    n_valid: int = option(500, "offline generation: validation (and test) samples")


class PhonebookTask(Task):
    """Phonebook lookup (``phonebook_utils.py``): WRITE N name-number lines, READ a name, answer the number."""

    name = "phonebook"
    config_class = PhonebookTaskArgs

    def load_splits(self, splits=("train", "valid"), seed: int = 0) -> dict:
        import phonebook_utils

        c = self.config
        if c.data_path:
            ds = phonebook_utils.load_phonebook(c.data_path, seed=seed)
        else:
            ds = phonebook_utils.generate_phonebook(c.n_entries, c.n_train, c.n_valid, c.n_valid, seed=seed)
        return pick_splits(ds, splits, c.data_path)

    def describe(self) -> str:
        return f"phonebook N={self.config.n_entries}" if not self.config.data_path else "phonebook"


# name -> "module:Class", imported on first use (the MQAR task lives in its own package)
TASKS = {"kv": "tasks:KVTask", "babi": "tasks:BabiTask", "squad": "tasks:SquadTask",
         "phonebook": "tasks:PhonebookTask", "mqar": "mqar.task:MQARTask"}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {sorted(TASKS)}.")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
