import csv

import pytest

import text_tasks_experiment as experiment
from helpers import bpe_tokenizer, pretrained_folder


def test_runs_each_model_records_a_row_per_run_and_resumes(tmp_path):
    folder = pretrained_folder(tmp_path / "lm", bpe_tokenizer(bos=True))
    args = ["--pretrained", str(folder), "--tasks", "phonebook:2", "--models", "gradmem", "closed_book",
            "--n_train", "24", "--n_valid", "8", "--max_steps", "2", "--eval_steps", "2", "--batch_size", "4",
            "--out_dir", str(tmp_path / "results"), "--runs_dir", str(tmp_path / "runs"), "--threads", "1"]
    assert experiment.main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "results" / "text_tasks.csv")))
    assert [(r["task"], r["model"], r["status"], r["steps"]) for r in rows] == [
        ("phonebook:2", "gradmem", "ok", "2"), ("phonebook:2", "closed_book", "ok", "2")]
    closed = rows[1]
    assert closed["state_bytes_per_context"] == "0" and 0 <= float(closed["generated_exact_match"]) <= 1
    # every answer of the generated phonebooks is a distinct number: the majority answer is right at most rarely
    assert float(closed["majority_answer_exact_match"]) <= 0.25
    table = (tmp_path / "results" / "text_tasks.md").read_text()
    assert "| phonebook:2 |" in table and "gradmem" in table
    assert experiment.main(args) == 0  # both runs recorded: nothing trains again
    assert len(list(csv.DictReader(open(tmp_path / "results" / "text_tasks.csv")))) == 2


def test_unknown_task_or_model_fails_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'kv:1'"):
        experiment.main(["--tasks", "kv:1", "--out_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown model 'mamba'"):
        experiment.main(["--models", "mamba", "--out_dir", str(tmp_path)])
    assert not (tmp_path / "text_tasks.csv").exists()
