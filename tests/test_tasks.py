"""The task interface: the BPE collator's label alignment, truncation and errors, generation scoring."""
import json

import pytest
import torch

import evaluate as evaluate_script
import kv_dataset_utils as kv
from helpers import TOKENIZER, bpe_tokenizer
from tasks import KVTask, TaskDataError, TextCollator, query_only, task_class

SAMPLES = [{"context": "Mary moved to the bathroom.\nJohn went to the hallway.", "query": "Question: Where is Mary?\nAnswer:",
            "target": "bathroom"},
           {"context": "Daniel picked up the football.", "query": "Question: What did Daniel pick up?\nAnswer:",
            "target": "the football"}]


@pytest.mark.parametrize("bos", [False, True], ids=["gpt2-like", "llama-like"])
def test_bpe_collator_labels_exactly_the_target_and_eos(bos):
    tok = bpe_tokenizer(bos=bos)
    batch = TextCollator(tok)(SAMPLES)
    ctx, qry, labels = batch["context_input_ids"], batch["query_input_ids"], batch["labels"]
    for b, s in enumerate(SAMPLES):
        labelled = labels[b][labels[b] != -100].tolist()
        assert labelled[-1] == tok.eos_token_id  # the answer ends with EOS, so generation can stop
        assert tok.decode(labelled[:-1]) == " " + s["target"]
        n_query = len(tok(s["query"], add_special_tokens=False)["input_ids"])
        assert (labels[b, :n_query] == -100).all() and labels[b, n_query] != -100  # labels start right after the query
        assert tok.decode(qry[b, :n_query]) == s["query"]
        assert qry[b, n_query: n_query + len(labelled)].tolist() == labelled  # labels sit on the ids they name
        real = ctx[b][: len(tok(s["context"], add_special_tokens=False)["input_ids"]) + bos]
        assert (real[0] == tok.bos_token_id) == bos  # BOS only where the tokenizer puts one in front
        assert tok.decode(real[int(bos):]) == s["context"]
        assert (ctx[b, len(real):] == tok.pad_token_id).all()  # right padding
    assert ctx.shape[1] % 8 == 0


def test_query_only_cuts_each_row_before_its_first_label():
    tok = bpe_tokenizer()
    batch = TextCollator(tok)(SAMPLES)
    queries = query_only(batch, tok.pad_token_id)
    for b, s in enumerate(SAMPLES):
        expected = tok(s["query"], add_special_tokens=False)["input_ids"]
        assert queries[b, : len(expected)].tolist() == expected
        assert (queries[b, len(expected):] == tok.pad_token_id).all()
    assert queries.shape[1] == max(len(tok(s["query"])["input_ids"]) for s in SAMPLES)


def test_long_contexts_are_truncated_counted_and_warned_about():
    tok = bpe_tokenizer()
    collate = TextCollator(tok, max_context_length=5)
    lengths = [len(tok(s["context"])["input_ids"]) for s in SAMPLES]
    with pytest.warns(UserWarning, match="truncated contexts to 5 tokens: 2 contexts"):
        batch = collate(SAMPLES)
    assert batch["context_input_ids"].shape[1] == 8 and (batch["context_input_ids"][:, 5:] == tok.pad_token_id).all()
    assert collate.n_tokens_cut == sum(n - 5 for n in lengths)


@pytest.mark.parametrize("field, value, message", [("context", "  ", "empty context"), ("target", "", "empty target")])
def test_empty_context_or_answer_is_a_clear_error(field, value, message):
    with pytest.raises(TaskDataError, match=message):
        TextCollator(bpe_tokenizer())([dict(SAMPLES[0], **{field: value})])


def test_a_tokenizer_without_pad_or_eos_is_refused():
    tok = bpe_tokenizer()
    tok.pad_token = None
    with pytest.raises(TaskDataError, match="no pad token"):
        TextCollator(tok)


def test_kv_generation_score_compares_the_value_characters():
    samples = [{"target": "7f!|"}, {"target": "ab!|"}, {"target": "x!|"}]
    scores = KVTask().score_texts(["7f!", "ab", "y!"], samples)
    assert scores == {"exact_match": [1.0, 1.0, 0.0]}


class OracleModel(torch.nn.Module):
    """Writes nothing and "generates" the given token rows: isolates decoding and scoring."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def write(self, context_input_ids, K=None):
        return context_input_ids

    def generate(self, memory, query_input_ids, max_new_tokens):
        return torch.tensor(self.rows[: len(memory)])


def test_generated_answers_are_cut_at_the_answer_end_and_scored():
    ds = kv.generate_kv_dataset(kv.KVTaskConfig(n_pairs=2), 4, 2, 2, seed=0)[0]["valid"]
    collate = KVTask().collator(TOKENIZER)
    right = TOKENIZER(ds[0]["target"] + "?!x:")["input_ids"]  # the value, then stray tokens after '|'
    wrong = TOKENIZER("zz!|")["input_ids"] + [0] * 4
    scores, records = evaluate_script.generate_predictions(OracleModel([right, wrong[: len(right)]]), ds, collate,
                                                           TOKENIZER, KVTask(), batch_size=2)
    assert scores == {"generated_exact_match": 0.5}
    assert [r["prediction"] for r in records] == [ds[0]["target"][:-1], "zz!"]
    assert records[0]["answers"] == [ds[0]["target"]] and json.dumps(records)


def test_every_task_is_registered_with_a_config_of_flags():
    for name in ("kv", "babi", "squad", "phonebook"):
        cls = task_class(name)
        assert cls.name == name and cls.config_class is not None
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        task_class("nope")
