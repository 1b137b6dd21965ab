"""The task interface: the BPE collator's label alignment, truncation and errors, generation scoring."""
import io
import json
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch

import evaluate as evaluate_script
import kv_dataset_utils as kv
import training
from full_context import FullContextLM
from grad_memgpt import GradMemGPT
from helpers import TOKENIZER, bpe_tokenizer, pretrained_folder
from rmt import RMT
from tasks import KVTask, KVTaskArgs, TaskDataError, TextCollator, query_only, task_class

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


TASK_RUNS = [("gradmem", "babi", ["--babi_task", "qa2", "--n_train", "48", "--n_valid", "8"]),
             ("gradmem", "squad", ["--layout", "cq_a", "--n_train_paragraphs", "6", "--n_dev_paragraphs", "2"]),
             ("gradmem", "phonebook", ["--n_entries", "4", "--n_train", "48", "--n_valid", "8"]),
             ("rmt", "babi", ["--n_train", "48", "--n_valid", "8"]),
             ("full_context", "squad", ["--layout", "qc_a", "--n_train_paragraphs", "6", "--n_dev_paragraphs", "2"]),
             ("closed_book", "phonebook", ["--n_entries", "2", "--n_train", "48", "--n_valid", "8"])]


@pytest.mark.parametrize("model, task, flags", TASK_RUNS, ids=[f"{m}-{t}" for m, t, _ in TASK_RUNS])
def test_tiny_end_to_end_run_per_task_with_a_local_bpe_model(tmp_path, model, task, flags):
    folder = pretrained_folder(tmp_path / "lm", bpe_tokenizer(bos=True))
    cls = {"gradmem": GradMemGPT, "rmt": RMT, "full_context": FullContextLM, "closed_book": FullContextLM}[model]
    extra = {"gradmem": ["--n_mem_tokens", "2", "--K", "1", "--inner_lr", "0.01"], "rmt": ["--n_mem_tokens", "2"],
             "full_context": [], "closed_book": ["--closed_book"]}[model]
    exp = tmp_path / "run"
    result = training.run_experiment(cls, [*flags, *extra, "--pretrained_path", str(folder), "--exp_path", str(exp),
                                           "--per_device_batch_size", "4", "--max_steps", "2", "--eval_steps", "2",
                                           "--warmup_steps", "1", "--no-show_progress"], task=task)
    assert result["step"] == 2 and 0 <= result["exact_match"] <= 1
    config = json.loads((exp / "config.json").read_text())
    assert config["task_name"] == task and config["backbone"]["pretrained_path"] == str(folder)
    assert evaluate_script.main(["--exp_path", str(exp), "--split", "test", "--max_samples", "4"]) == 0
    out = json.loads(next(exp.glob("eval_test_K*.json")).read_text())
    assert 0 <= out["generated_exact_match"] <= out["generated_f1"] <= 1 and out["n_samples"] == 4
    records = [json.loads(line) for line in next(exp.glob("predictions_test_K*.jsonl")).read_text().splitlines()]
    assert len(records) == 4 and {"id", "query", "prediction", "answers", "exact_match", "f1"} <= set(records[0])
    assert all(r["query"].endswith("Answer:") and r["answers"] for r in records)


def test_pretrained_input_errors_are_one_clear_message_and_leave_nothing_on_disk(tmp_path):
    def run(*args):
        with pytest.raises(SystemExit) as e:
            training.run_experiment(GradMemGPT, [*args, "--exp_path", str(tmp_path / "run"), "--max_steps", "1"],
                                    task="phonebook")
        assert e.value.code == 2 and not (tmp_path / "run").exists()

    no_tokenizer = pretrained_folder(tmp_path / "lm", bpe_tokenizer())
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    other = pretrained_folder(tmp_path / "other", bpe_tokenizer(bos=True))
    bpe_tokenizer().save_pretrained(other)  # a tokenizer whose EOS is not the model's
    cases = [(["--pretrained_path", str(no_tokenizer)], "no tokenizer could be loaded"),
             (["--pretrained_path", str(other)], "EOS id 0 is not the model's"),
             (["--pretrained_path", str(tmp_path / "missing.gguf")], "no pretrained model at"),
             (["--pretrained_path", "gpt2"], "could not fetch 'gpt2' from the Hugging Face hub"),
             ([], "takes its tokenizer from a pretrained model")]
    for args, message in cases:
        err = io.StringIO()
        with redirect_stderr(err):
            run(*args)
        assert message in err.getvalue(), (args, err.getvalue())


class FixedLogits(torch.nn.Module):
    """Returns logits that predict ``labels`` except where ``wrong`` ([B, Q] bool) marks a position."""

    def forward(self, context_input_ids, query_input_ids, labels, K=None):
        from memory_model import MemoryModelOutput

        target = torch.cat([labels[:, 1:], labels[:, :1]], dim=1).clamp(min=0)  # logits[t] predicts labels[t+1]
        target = torch.where(self.wrong, (target + 1) % 10, target)
        logits = torch.nn.functional.one_hot(target, 600).float()
        return MemoryModelOutput(loss=torch.tensor(0.0), logits=logits, stats={})


@pytest.mark.parametrize("task_name", ["kv", "phonebook"])
def test_teacher_forced_scores_on_hand_made_logits(task_name):
    from accelerate import Accelerator

    if task_name == "kv":
        samples = [{"context": "!a:b!|", "query": "?!a:", "target": "bc!|"}] * 3
        task, tok = KVTask(), TOKENIZER
    else:
        samples = [dict(SAMPLES[0], target="bathroom")] * 3
        task, tok = task_class("phonebook")(), bpe_tokenizer()
    batch = task.collator(tok)(samples)
    first = int((batch["labels"][0] != -100).int().argmax())  # first target position
    n_target = int((batch["labels"][0] != -100).sum())
    model = FixedLogits()
    model.wrong = torch.zeros_like(batch["labels"], dtype=torch.bool)
    model.wrong[1, first - 1] = True  # sample 1: the first target token predicted wrong
    model.wrong[2, first + n_target - 2] = True  # sample 2: the last labelled token ('|' for KV, EOS for text)
    metrics = training.evaluate(model, [batch], Accelerator(cpu=True), task, tok)
    if task_name == "kv":  # target 'b','c','!','|': 2 scored tokens; '|' is a delimiter, so sample 2 is right
        assert metrics["exact_match"] == pytest.approx(2 / 3) and metrics["token_accuracy"] == pytest.approx(5 / 6)
    else:  # every target token and the EOS are scored
        assert metrics["exact_match"] == pytest.approx(1 / 3)
        assert metrics["token_accuracy"] == pytest.approx((3 * n_target - 2) / (3 * n_target))


def test_full_context_generation_may_emit_eos():
    """Greedy decoding must not forbid EOS: a model whose argmax is EOS after the prompt generates EOS."""
    tok = bpe_tokenizer(bos=True)
    torch.manual_seed(0)
    lm = training.build_backbone(training.BackboneConfig(n_layer=1, n_head=2, n_embd=16), tok)
    with torch.no_grad():
        lm.lm_head.weight.zero_()
        lm.lm_head.weight[tok.eos_token_id] = 1.0
        lm.lm_head.weight[tok.eos_token_id, 0] = 100.0  # EOS outscores every other token at every position
    model = FullContextLM(lm).eval()
    batch = TextCollator(tok)(SAMPLES)
    new = model.generate(model.write(batch["context_input_ids"]), query_only(batch, tok.pad_token_id), max_new_tokens=3)
    assert new.shape == (2, 3) and (new[:, 0] == tok.eos_token_id).all()


@pytest.mark.parametrize("vocab_size", [16, 62, 200])
def test_kv_task_default_tokenizer_covers_the_generated_alphabet(vocab_size, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the default tokenizer folders are relative to the repo
    task = KVTask(KVTaskArgs(task_vocab_size=vocab_size, task_n_pairs=4, task_n_train=50, task_n_valid=8))
    valid = task.load_splits(("valid",))["valid"]
    batch = task.collator(task.tokenizer())(list(valid))  # an alphabet the tokenizer lacks raises here
    assert batch["context_input_ids"].shape[0] == 8
