"""The MQAR task for the shared training loop (``tasks.py`` interface; registered there as ``mqar``).

WRITE sees the KV region ``k1 v1 ... kN vN``; READ sees the query region with a label at every query,
so one WRITE serves all N answers. A full-context model reads both, i.e. the whole Zoology sequence.
Teacher-forced scores: ``token_accuracy`` is the accuracy per query, ``exact_match`` per sequence
(every query of the example right). No generation: the answers are single tokens at fixed positions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cli import option
from mqar.data import MQARCollator, MQARConfig, generate_mqar_dataset, load_mqar_dataset
from tasks import Task, TaskDataError, pick_splits


@dataclass
class MQARTaskArgs:
    data_path: str | None = option(None, "MQAR dataset written by `python -m mqar.data`; without it one is generated "
                                   "in memory from the flags below")
    n_pairs: int = option(8, "in-memory data: key-value pairs per example")
    seq_len: int = option(64, "in-memory data: tokens per example (KV region + query region), >= 4 n_pairs")
    vocab_size: int = option(2048, "in-memory data: token ids (keys from the first half, values from the second)")
    power_a: float = option(0.01, "in-memory data: Zoology's power law of query gaps (1.0: uniform)")
    random_non_queries: bool = option(False, "in-memory data: random tokens, not 0, between queries")
    n_train: int = option(20_000, "in-memory data: training examples")
    n_valid: int = option(500, "in-memory data: validation (and test) examples")

    def __post_init__(self):
        if not self.data_path:
            self.data_config()  # impossible settings fail here, before any run folder exists

    def data_config(self) -> MQARConfig:
        """The MQAR settings: from the dataset card beside ``data_path``, else from the flags."""
        if self.data_path:
            card = Path(self.data_path) / "dataset_card.json"
            if not card.is_file():
                raise TaskDataError(f"{self.data_path} has no dataset_card.json: write MQAR data with "
                                    f"`python -m mqar.data --out data/ ...`.")
            return MQARConfig(**json.loads(card.read_text())["config"])
        return MQARConfig(n_pairs=self.n_pairs, seq_len=self.seq_len, vocab_size=self.vocab_size,
                          power_a=self.power_a, random_non_queries=self.random_non_queries)


def create_mqar_tokenizer(vocab_size: int):
    """Ids are the tokens: a word-level tokenizer over the strings ``"0" .. str(vocab_size - 1)``. Its
    pad (and unknown) token is "0", Zoology's filler, which never occurs in a KV region; no BOS or EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({str(i): i for i in range(vocab_size)}, unk_token="0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="0", unk_token="0")


class MQARTask(Task):
    name = "mqar"
    config_class = MQARTaskArgs

    def load_splits(self, splits=("train", "valid"), seed: int = 0) -> dict:
        c = self.config
        if c.data_path:
            ds = load_mqar_dataset(c.data_path)
        else:
            ds = generate_mqar_dataset(c.data_config(), c.n_train, c.n_valid, c.n_valid, seed=seed)
        return pick_splits(ds, splits, c.data_path)

    def tokenizer(self):
        return create_mqar_tokenizer(self.config.data_config().vocab_size)

    def collator(self, tokenizer, max_context_length=None):
        C = self.config.data_config().context_length
        if max_context_length is not None and max_context_length < C:
            raise TaskDataError(f"MQAR's KV region has {C} tokens but contexts are limited to {max_context_length}: "
                                f"cutting pairs would leave queries unanswerable; raise --max_context_length or "
                                f"use fewer pairs.")
        return MQARCollator()

    def score_texts(self, predictions, samples):
        return None  # scored teacher-forced only: one answer token per query

    def describe(self) -> str:
        d = self.config.data_config()
        return f"mqar N={d.n_pairs} L={d.seq_len} V={d.vocab_size}"
