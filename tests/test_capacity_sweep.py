import csv
import json
import math
import os
import subprocess

import pytest

import capacity_sweep
import training
from conftest import ROOT
from full_context import FullContextLM
from grad_memgpt import GradMemGPT
from rmt import RMT
from tasks import KVTask

# Four runs: at 1 pair both models train; 8 pairs from a 4-key alphabet cannot be generated, so those runs
# fail (after their config is written), each started from its model's 1-pair run.
TINY = capacity_sweep.SweepConfig(models=("gradmem_k1", "rmt"), pairs=(1, 8), seeds=(0,), n_mem_tokens=2, n_layer=1,
                                  n_head=2, n_embd=16, vocab_size=4, n_train=200, n_valid=16, max_steps=2, eval_steps=2,
                                  parallel=2)


def tiny_sweep(tmp, **overrides):
    return capacity_sweep.SweepConfig(**{**TINY.__dict__, "out_dir": str(tmp / "results"), "runs_dir": str(tmp / "runs"),
                                         **overrides})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    cfg = tiny_sweep(tmp_path_factory.mktemp("sweep"))
    return cfg, capacity_sweep.sweep(cfg)


def test_sweep_writes_well_formed_rows_and_plots(swept):
    cfg, rows = swept
    path = capacity_sweep.Path(cfg.out_dir)
    with open(path / "capacity.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert tuple(written[0]) == capacity_sweep.COLUMNS and len(written) == len(rows)
    ok = [r for r in written if r["status"] == "ok"]
    # gradmem_k1 evaluates at K_test 1 and 2, rmt once
    assert sorted((r["model"], r["n_pairs"], r["K_test"]) for r in ok) == [
        ("gradmem_k1", "1", "1"), ("gradmem_k1", "1", "2"), ("rmt", "1", "")]
    assert all(0 <= float(r["exact_match"]) <= 1 and int(r["steps"]) == 2 and r["stopped"] == "max_steps" and
               0 <= float(r["train_time_s"]) < float(r["wall_time_s"]) for r in ok)  # tiny runs: 0.0 s once rounded
    # a failed run is a row with its status, not a silent omission
    failed = [r for r in written if r["status"] != "ok"]
    assert sorted(r["model"] for r in failed) == ["gradmem_k1", "rmt"]
    assert all(r["n_pairs"] == "8" and "distinct keys" in r["status"] and math.isnan(float(r["exact_match"])) for r in failed)
    table = (path / "capacity.md").read_text()
    assert "| rmt |" in table and "| gradmem_k1 / 2 |" in table and table.count("1 failed") == 2
    assert "| rmt | 2, 0.0 min, 0/1 | - |" in table  # the budget: steps, minutes, runs that reached the target
    for png in ("capacity.png", "k_extrapolation.png"):
        assert (path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curriculum_runs_start_from_the_previous_pair_counts_best_weights(swept):
    cfg, rows = swept
    assert {(r["model"], r["n_pairs"], r["init_from"]) for r in rows} == {
        ("gradmem_k1", 1, ""), ("gradmem_k1", 8, "gradmem_k1_N1_s0"), ("rmt", 1, ""), ("rmt", 8, "rmt_N1_s0")}
    for name in ("gradmem_k1", "rmt"):  # the child run itself got the flag: it prints its config at start (its
        # data is then refused, before a run folder is written, so the log is where the config shows)
        log = (capacity_sweep.run_dir(cfg, name, 8, 0) / "log.txt").read_text()
        config = json.loads(log[log.index("{\n"): log.index("\n}\n") + 2])
        assert config["train"]["init_checkpoint"] == str(capacity_sweep.run_dir(cfg, name, 1, 0) / "best")
        assert config["task"]["task_n_pairs"] == 8


SCRIPT_MODELS = {"run_gradmemgpt_on_kv_retrieval.py": GradMemGPT, "run_rmt_on_kv_retrieval.py": RMT,
                 "run_gpt2_on_kv_retrieval.py": FullContextLM}


@pytest.mark.parametrize("name", ["gradmem_k3", "gradmem_sgd_k1", "rmt", "full_context"])
def test_each_child_command_parses_with_its_run_scripts_flags(tmp_path, name):
    cfg = tiny_sweep(tmp_path, inner_lr=0.25, sgd_inner_lr=2.0, learning_rate=3e-3, key_len=2, patience=3)
    cmd = capacity_sweep.child_command(name, 4, 1, cfg, init_from=f"{name}_N2_s1")
    script = capacity_sweep.Path(cmd[1]).name
    args = training.build_parser(SCRIPT_MODELS[script], KVTask).parse_args(cmd[2:])
    assert args.init_checkpoint == str(tmp_path / "runs" / f"{name}_N2_s1" / "best")
    assert args.exp_path == str(tmp_path / "runs" / f"{name}_N4_s1")
    assert (args.task_n_pairs, args.seed, args.task_key_len, args.learning_rate, args.n_embd) == (4, 1, 2, 3e-3, 16)
    assert args.early_stopping_patience == 3
    if name.startswith("gradmem"):
        expected = ("sgd", 2.0, 1) if name == "gradmem_sgd_k1" else ("adam", 0.25, 3)
        assert (args.inner_optimizer, args.inner_lr, args.K) == expected
    if name == "gradmem_k3":
        assert (args.K, args.grad_mode, args.inner_lr, args.n_mem_tokens) == (3, "second", 0.25, 2)
    if name == "rmt":
        assert (args.mem_proj_mode, args.n_mem_tokens) == ("proj", 2)
    assert "--init_checkpoint" not in capacity_sweep.child_command(name, 1, 1, cfg)


def parsed_sweep_flags(argv, monkeypatch) -> capacity_sweep.SweepConfig:
    seen = []
    monkeypatch.setattr(capacity_sweep, "sweep", seen.append)
    capacity_sweep.main(argv)
    return seen[0]


def test_tuple_flags_parse(monkeypatch):
    cfg = parsed_sweep_flags(["--models", "gradmem_k3", "rmt", "--pairs", "1", "4", "16", "--seeds", "0", "2",
                              "--no-curriculum"], monkeypatch)
    assert (cfg.models, cfg.pairs, cfg.seeds, cfg.curriculum) == (("gradmem_k3", "rmt"), (1, 4, 16), (0, 2), False)


def test_the_shell_presets_parse(tmp_path, monkeypatch):
    fake_python, argv_file = tmp_path / "python", tmp_path / "argv"  # records the arguments, one a line
    fake_python.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > '{argv_file}'\n")
    fake_python.chmod(0o755)
    for env, expected in [({"SCALE": "paper"}, dict(pairs=(8, 16, 32, 64, 96), n_embd=128, inner_optimizer="sgd",
                                                      models=("gradmem_k1", "gradmem_k5", "rmt", "full_context"))),
                          ({"SCALE": "cpu2"}, dict(pairs=(1, 2, 4, 8), vocab_size=62, key_value_separator=False,
                                                   n_mem_tokens=1, patience=6, runs_dir="runs/sweep2")),
                          ({"PAIRS": "2 4", "SEEDS": "5", "MODELS": "rmt gradmem_k2"},
                           dict(pairs=(2, 4), seeds=(5,), models=("rmt", "gradmem_k2"), n_embd=64))]:
        subprocess.run(["bash", str(ROOT / "scripts" / "capacity_sweep.sh")], check=True,
                       env={**os.environ, "PY": str(fake_python), **env})
        argv = argv_file.read_text().splitlines()
        assert argv[0] == "capacity_sweep.py"
        cfg = parsed_sweep_flags(argv[1:], monkeypatch)
        assert {k: getattr(cfg, k) for k in expected} == expected


def test_a_run_that_diverges_is_recorded_as_diverged(tmp_path):
    # a huge learning rate: the weights overflow after a step or two, then every step is non-finite until
    # training gives up (20 in a row)
    cfg = tiny_sweep(tmp_path, learning_rate=1e30, max_steps=30, eval_steps=30)
    (row,) = capacity_sweep.run_one("rmt", 1, 0, cfg)
    assert row["status"] == "diverged" and math.isnan(float(row["exact_match"]))


def test_a_second_invocation_skips_what_is_done(swept, capsys):
    cfg, rows = swept
    again = capacity_sweep.sweep(cfg)
    assert "runs recorded, 0 to go" in capsys.readouterr().out and len(again) == len(rows)


def test_budget_table_gives_medians_and_runs_that_reached_the_target():
    run = lambda seed, steps, minutes, stopped: {
        "model": "rmt", "n_pairs": "4", "seed": str(seed), "K_train": "", "K_test": "", "exact_match": "0.5",
        "status": "ok", "steps": str(steps), "train_time_s": str(60 * minutes), "stopped": stopped}
    two = [run(0, 1000, 2.0, "target_exact_match"), run(1, 3000, 4.0, "early_stopping")]
    assert "| rmt | 2,000, 3.0 min, 1/2 |" in capacity_sweep.summary_tables(two)  # an even count: the mean of the middle two
    three = two + [run(2, 2500, 8.0, "time_limit")]
    assert "| rmt | 2,500, 4.0 min, 1/3 |" in capacity_sweep.summary_tables(three)


def test_report_only_redraws_from_the_csv_without_training(swept, tmp_path, monkeypatch):
    cfg, _ = swept
    out = capacity_sweep.Path(cfg.out_dir)
    (out / "capacity.md").unlink()
    monkeypatch.setattr(capacity_sweep, "sweep", lambda cfg: pytest.fail("--report_only must not train"))
    capacity_sweep.main(["--out_dir", cfg.out_dir, "--report_only"])
    assert "| rmt |" in (out / "capacity.md").read_text()
    with pytest.raises(SystemExit, match="no rows in"):
        capacity_sweep.main(["--out_dir", str(tmp_path), "--report_only"])


def test_collect_results_notebook_rebuilds_the_plots(swept, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cfg, _ = swept
    csv_path = capacity_sweep.Path(cfg.out_dir) / "capacity.csv"
    (csv_path.parent / "capacity.png").unlink()
    monkeypatch.setenv("CAPACITY_CSV", str(csv_path))
    nb = nbformat.read(ROOT / "notebooks" / "collect_results.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    assert (csv_path.parent / "capacity.png").exists()
    outputs = [o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o for o in outputs)
    assert any("| rmt |" in o.get("text/markdown", "") for o in outputs)


def test_curriculum_waits_for_the_previous_pair_count_and_skips_failed_runs():
    cfg = capacity_sweep.SweepConfig(pairs=(1, 2, 4), seeds=(0,))
    row = lambda n, status: {"model": "rmt", "n_pairs": str(n), "seed": "0", "status": status}
    assert capacity_sweep._init_from(cfg, [], ("rmt", 1, 0)) == ""
    assert capacity_sweep._init_from(cfg, [row(1, "ok")], ("rmt", 4, 0)) is None
    assert capacity_sweep._init_from(cfg, [row(1, "ok"), row(2, "failed (exit 1)")], ("rmt", 4, 0)) == "rmt_N1_s0"
    assert capacity_sweep._init_from(cfg, [row(1, "diverged"), row(2, "diverged")], ("rmt", 4, 0)) == ""
    no_curriculum = capacity_sweep.SweepConfig(pairs=(1, 2, 4), seeds=(0,), curriculum=False)
    assert capacity_sweep._init_from(no_curriculum, [], ("rmt", 4, 0)) == ""


def test_curriculum_from_an_anchor_runs_outwards_both_ways():
    cfg = capacity_sweep.SweepConfig(pairs=(2, 4, 8, 16), seeds=(0,), curriculum_anchor=8)
    row = lambda n, status="ok": {"model": "full_context", "n_pairs": str(n), "seed": "0", "status": status}
    start = lambda rows, n: capacity_sweep._init_from(cfg, rows, ("full_context", n, 0))
    assert start([], 8) == ""  # the anchor trains from scratch; every other run waits for it
    assert [start([], n) for n in (2, 4, 16)] == [None, None, None]
    done = [row(8)]
    assert (start(done, 4), start(done, 16), start(done, 2)) == ("full_context_N8_s0", "full_context_N8_s0", None)
    assert start(done + [row(4)], 2) == "full_context_N4_s0"
    assert start(done + [row(4, "diverged")], 2) == "full_context_N8_s0"  # the last of its chain that trained
    with pytest.raises(ValueError, match="curriculum_anchor=3 is not one of the pair counts"):
        capacity_sweep.SweepConfig(pairs=(2, 4), curriculum_anchor=3)


def test_model_overrides_set_one_models_anchor_and_budget():
    cfg = capacity_sweep.SweepConfig(pairs=(1, 2, 8), seeds=(0,), models=("full_context", "rmt"), patience=6,
                                     model_overrides=("full_context.curriculum_anchor=8", "full_context.patience=40",
                                                      "rmt.curriculum=false", "rmt.learning_rate=3e-4"))
    assert capacity_sweep._init_from(cfg, [], ("full_context", 8, 0)) == ""
    assert capacity_sweep._init_from(cfg, [], ("full_context", 1, 0)) is None  # waits for its anchor
    assert capacity_sweep._init_from(cfg, [], ("rmt", 8, 0)) == ""  # no curriculum: every run from scratch
    flag = lambda cmd, name: cmd[cmd.index(name) + 1]
    full, rmt = (capacity_sweep.child_command(m, 2, 0, cfg) for m in ("full_context", "rmt"))
    assert (flag(full, "--early_stopping_patience"), flag(rmt, "--early_stopping_patience")) == ("40", "6")
    assert (flag(full, "--learning_rate"), flag(rmt, "--learning_rate")) == ("0.001", "0.0003")


@pytest.mark.parametrize("entry, message", [
    ("full_context:8", "is not model.field=value"),
    ("full_context.pairs=8", "is not model.field=value"),
    ("full_context.learning_rat=1e-3", "is not model.field=value"),
    ("gradmem_k2.patience=4", "names 'gradmem_k2', which is not one of the models"),
    ("full_context.patience=many", "cannot read 'many' as int"),
    ("full_context.curriculum=yes", "write the setting as true or false"),
    ("full_context.curriculum_anchor=4", "curriculum_anchor=4 is not one of the pair counts"),
])
def test_bad_model_overrides_fail_when_the_config_is_built(entry, message):
    with pytest.raises(ValueError, match=message):
        capacity_sweep.SweepConfig(pairs=(1, 8), models=("full_context",), model_overrides=(entry,))


def test_unknown_model_names_fail_before_any_run():
    with pytest.raises(ValueError, match="unknown sweep model 'lstm'"):
        capacity_sweep.model_flags("lstm", TINY)


def test_an_anchor_run_short_of_the_target_is_retried_from_the_next_smaller_pair_count():
    cfg = capacity_sweep.SweepConfig(pairs=(4, 8, 16), seeds=(0,), models=("full_context",), model_overrides=(
        "full_context.curriculum_anchor=8", "full_context.retry_anchor=true"))
    row = lambda n, stopped="early_stopping", status="ok", attempt=1: {
        "model": "full_context", "n_pairs": str(n), "seed": "0", "status": status, "stopped": stopped,
        "attempt": str(attempt), "K_train": "", "K_test": ""}
    due = lambda rows: capacity_sweep._retry_due(cfg, rows, "full_context", 0)
    start = lambda rows, n, attempt=1: capacity_sweep._init_from(cfg, rows, ("full_context", n, 0), attempt)
    stuck = [row(8)]
    assert due(stuck) is None and start(stuck, 16) is None  # the retry waits for 4 pairs; 16 waits for the retry
    assert start(stuck, 4) == "full_context_N8_s0"  # the chain below the anchor goes on
    assert due(stuck + [row(4)]) == ("full_context", 8, 0, 2)
    assert start(stuck + [row(4)], 8, attempt=2) == "full_context_N4_s0"
    retried = stuck + [row(4), row(8, attempt=2)]
    assert due(retried) is None and start(retried, 16) == "full_context_N8_s0_retry"
    failed_retry = stuck + [row(4), row(8, stopped="", status="diverged", attempt=2)]
    assert start(failed_retry, 16) == "full_context_N8_s0"
    bound = [row(8, "target_exact_match"), row(4)]
    assert due(bound) is None and start(bound, 16) == "full_context_N8_s0"
    assert capacity_sweep.last_attempts(retried) == [row(4), row(8, attempt=2)]
    assert capacity_sweep._at_trained_k(retried) == [row(4), row(8, attempt=2)]  # the plots, in the notebook too
    assert capacity_sweep.last_attempts([{**r, "attempt": ""} for r in bound]) == [{**r, "attempt": ""} for r in bound]


@pytest.mark.parametrize("settings", [dict(retry_anchor=True), dict(retry_anchor=True, curriculum_anchor=1),
                                      dict(retry_anchor=True, curriculum_anchor=8, curriculum=False)])
def test_retry_anchor_without_an_anchor_above_the_smallest_pair_count_fails_when_built(settings):
    with pytest.raises(ValueError, match="retry_anchor retrains the anchor from the next smaller pair count"):
        capacity_sweep.SweepConfig(pairs=(1, 8), **settings)


def test_a_sweep_retries_its_anchor_and_reports_the_last_attempt(tmp_path, capsys):
    # two steps cannot reach the target, so the anchor (2 pairs) is retried from the 1-pair run
    cfg = tiny_sweep(tmp_path, models=("rmt",), pairs=(1, 2), model_overrides=("rmt.curriculum_anchor=2",
                                                                                "rmt.retry_anchor=true"))
    rows = capacity_sweep.sweep(cfg)
    assert [(r["n_pairs"], r["attempt"], r["init_from"]) for r in rows] == [
        (2, 1, ""), (1, 1, "rmt_N2_s0"), (2, 2, "rmt_N1_s0")]
    assert (tmp_path / "runs" / "rmt_N2_s0_retry" / "checkpoint").is_dir()
    table = (tmp_path / "results" / "capacity.md").read_text()
    assert "| rmt N=2 seed 0 |" in table and table.count("| rmt | 2, 0.0 min, 0/1 | 2, 0.0 min, 0/1 |") == 1
    capsys.readouterr()
    assert len(capacity_sweep.sweep(cfg)) == 3 and "3 runs recorded, 0 to go" in capsys.readouterr().out
