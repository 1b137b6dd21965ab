import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import evaluate as evaluate_script
import training
from conftest import ROOT
from grad_memgpt import GradMemConfig, GradMemGPT
from helpers import TOKENIZER, tiny_lm
from tasks import KVTask, KVTaskArgs

TINY_COMMON = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--per_device_batch_size", "8",
               "--task_n_train", "200", "--task_n_valid", "16", "--warmup_steps", "2", "--learning_rate", "1e-3",
               "--log_steps", "2", "--no-show_progress"]
TINY = TINY_COMMON + ["--n_mem_tokens", "2", "--K", "1"]


def run_script(script, *args, **popen):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def metrics(exp):
    """The rows of ``exp/metrics.jsonl``. A running process may be writing the last line: only lines that
    end in a newline are complete."""
    return [json.loads(line) for line in (exp / "metrics.jsonl").read_text().split("\n")[:-1]]


def test_train_then_evaluate_with_another_k(tmp_path):
    exp = tmp_path / "run"
    result = training.run_experiment(GradMemGPT, [*TINY, "--exp_path", str(exp), "--max_steps", "6", "--eval_steps", "3"])
    assert result["step"] == 6 and 0 <= result["exact_match"] <= 1
    config = json.loads((exp / "config.json").read_text())
    assert config["model_type"] == "gradmem" and config["model"]["K"] == 1 and config["backbone"]["n_embd"] == 16
    rows = metrics(exp)
    assert [r["step"] for r in rows if r["split"] == "valid"] == [3, 6]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert {"loss", "lr", "steps_per_s", "inner_loss_0", "inner_grad_norm_0", "mem_norm"} <= set(train_rows[0])
    assert any(p.name.startswith("events.out.tfevents") for p in (exp / "tensorboard").iterdir())
    assert evaluate_script.main(["--exp_path", str(exp), "--split", "valid", "--K", "3"]) == 0
    out = json.loads((exp / "eval_valid_K3.json").read_text())
    assert out["K"] == 3 and out["state_bytes_per_context"] == 2 * 16 * 4 and out["n_samples"] == 16
    assert "inner_loss_2" in out  # the evaluation really ran 3 inner steps


def test_sigterm_checkpoints_and_resume_reproduces_the_uninterrupted_run(tmp_path, capsys):
    steps = ["--max_steps", "14", "--eval_steps", "100", "--save_steps", "100"]
    training.run_experiment(GradMemGPT, [*TINY, *steps, "--exp_path", str(tmp_path / "ref")])

    exp = tmp_path / "interrupted"  # only the run that gets the signal needs a process of its own
    proc = run_script("run_gradmemgpt_on_kv_retrieval.py", *TINY, *steps, "--exp_path", str(exp))
    deadline = time.time() + 120
    while time.time() < deadline and not ((exp / "metrics.jsonl").exists() and any(r["step"] >= 4 for r in metrics(exp))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    state = json.loads((exp / "checkpoint" / "trainer_state.json").read_text())
    assert "stopped (signal)" in output and 4 <= state["step"] < 14

    capsys.readouterr()
    training.run_experiment(GradMemGPT, [*TINY, *steps, "--exp_path", str(exp)])
    assert f"resumed from {exp / 'checkpoint'} at step {state['step']}" in capsys.readouterr().out
    a, b = load_file(tmp_path / "ref" / "checkpoint" / "model.safetensors"), load_file(exp / "checkpoint" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)
    ref_valid = [r for r in metrics(tmp_path / "ref") if r["split"] == "valid"][-1]
    res_valid = [r for r in metrics(exp) if r["split"] == "valid"][-1]
    assert ref_valid["exact_match"] == res_valid["exact_match"]
    assert ref_valid["loss"] == pytest.approx(res_valid["loss"], rel=1e-5)


def test_resume_with_gradient_accumulation_across_epoch_boundaries_equals_the_uninterrupted_run(tmp_path):
    # 40 samples in micro-batches of 4: 10 per epoch, 3 per optimizer step, so epochs end inside steps 4 and 7.
    # The interrupted run stops after step 5 (mid-epoch) and resumes to step 8, across the second boundary.
    flags = [*TINY, "--task_n_train", "40", "--per_device_batch_size", "4", "--gradient_accumulation_steps", "3",
             "--learning_rate", "1e-2", "--log_steps", "1", "--eval_steps", "5", "--stop_at_exact_match", "2"]
    training.run_experiment(GradMemGPT, [*flags, "--max_steps", "8", "--exp_path", str(tmp_path / "ref")])
    training.run_experiment(GradMemGPT, [*flags, "--max_steps", "5", "--exp_path", str(tmp_path / "resumed")])
    training.run_experiment(GradMemGPT, [*flags, "--max_steps", "8", "--exp_path", str(tmp_path / "resumed")])
    ref, resumed = metrics(tmp_path / "ref"), metrics(tmp_path / "resumed")
    losses = [[(r["step"], r["split"], r["loss"]) for r in rows] for rows in (ref, resumed)]
    assert [s for s, _, _ in losses[0]] == [1, 2, 3, 4, 5, 5, 6, 7, 8, 8]
    assert [(s, split) for s, split, _ in losses[1]] == [(s, split) for s, split, _ in losses[0]]
    assert [x for _, _, x in losses[1]] == pytest.approx([x for _, _, x in losses[0]], rel=1e-6)
    a = load_file(tmp_path / "ref" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoint" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-8)


class FailingSave:
    """An accelerator whose save_state writes half a checkpoint, then dies."""
    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, path, safe_serialization=True):
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("killed mid-save")


class GoodSave(FailingSave):
    def save_state(self, path, safe_serialization=True):
        (Path(path) / "model.safetensors").write_bytes(b"complete")


def test_a_kill_mid_save_leaves_the_last_good_checkpoint(tmp_path):
    training.save_checkpoint(GoodSave(), tmp_path, training.TrainerState(step=5))
    with pytest.raises(KeyboardInterrupt):
        training.save_checkpoint(FailingSave(), tmp_path, training.TrainerState(step=10))
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == b"complete"
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def nan_on_calls(model, bad_calls):
    """Make the model's training loss NaN on the given forward calls (0-based)."""
    forward, calls = model.forward, {"n": 0}

    def patched(*args, **kwargs):
        out = forward(*args, **kwargs)
        if model.training:
            if calls["n"] in bad_calls:
                out.loss = out.loss * float("nan")
            calls["n"] += 1
        return out

    model.forward = patched
    return model


def tiny_train_config(tmp_path, **kw):
    return training.TrainConfig(exp_path=str(tmp_path), per_device_batch_size=8, warmup_steps=1, learning_rate=1e-3,
                                log_steps=1, show_progress=False, **kw)


TINY_KV_TASK = KVTask(KVTaskArgs(task_n_train=200, task_n_valid=16))


def test_a_non_finite_step_is_skipped_counted_and_logged(tmp_path):
    torch.manual_seed(0)
    model = nan_on_calls(GradMemGPT(tiny_lm(dtype=torch.float32), GradMemConfig(K=1, n_mem_tokens=2)), {2})
    result = training.train(model, tiny_train_config(tmp_path, max_steps=5, eval_steps=5), TINY_KV_TASK, TOKENIZER,
                            {"model": model.config})
    assert result["step"] == 5
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["nonfinite_steps"] == 1
    assert any(r.get("nonfinite_steps") == 1 for r in metrics(tmp_path))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_many_non_finite_steps_in_a_row_stop_with_a_clear_error(tmp_path):
    model = nan_on_calls(GradMemGPT(tiny_lm(dtype=torch.float32), GradMemConfig(K=1, n_mem_tokens=2)), set(range(100)))
    with pytest.raises(RuntimeError, match="3 steps in a row had a non-finite loss.*lower --learning_rate"):
        training.train(model, tiny_train_config(tmp_path, max_steps=10, eval_steps=10, max_nonfinite_in_row=3),
                       TINY_KV_TASK, TOKENIZER, {"model": model.config})


@pytest.mark.parametrize("args, message", [
    (["--data_path", "/no/such/data"], "dataset path /no/such/data does not exist"),
    (["--tokenizer_path", "/no/such/tok"], "no tokenizer at /no/such/tok"),
    (["--tokenizer_path", str(ROOT / "tokenizers" / "kv_alphabet_512"), "--pretrained_path", "PRETRAINED"],
     "the tokenizer has 520 tokens"),
])
def test_wrong_paths_and_vocab_mismatch_give_one_clear_message(tmp_path, capsys, args, message):
    if "PRETRAINED" in args:
        tiny_lm(dtype=torch.float32).save_pretrained(tmp_path / "lm")
        args = [str(tmp_path / "lm") if a == "PRETRAINED" else a for a in args]
    with pytest.raises(SystemExit) as stop:  # what the run script exits with: status 2 and one line on stderr
        training.run_experiment(GradMemGPT, [*TINY, "--max_steps", "1", "--exp_path", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert stop.value.code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # validated before the run folder is made


def test_exact_match_ignores_delimiters():
    labels = torch.tensor([[-100, -100, 10, 11, 4, 7]])  # target "ab!|" after a 2-token query
    logits = torch.full((1, 6, 20), -1.0)
    for pos, tok in enumerate([0, 10, 11, 9, 9]):  # logits[t] predicts labels[t+1]; delimiters wrong
        logits[0, pos, tok] = 1.0
    mask = KVTask().scored_mask(labels, TOKENIZER)
    assert mask.tolist() == [[False, True, True, False, False]]
    exact, tokens = training.score_batch(logits, labels, mask)
    assert exact.tolist() == [True] and tokens.tolist() == [[2, 2]]
    logits[0, 2, 11], logits[0, 2, 12] = -1.0, 1.0  # second value token wrong
    exact, tokens = training.score_batch(logits, labels, mask)
    assert exact.tolist() == [False] and tokens.tolist() == [[1, 2]]


@pytest.mark.parametrize("parser", [training.build_parser(cls, KVTask) for cls in training.MODEL_CLASSES.values()]
                         + [evaluate_script.build_parser()], ids=[*training.MODEL_CLASSES, "evaluate"])
def test_every_flag_has_help_text(parser):
    for action in parser._actions:
        assert action.help and action.help.strip() != "(default: %(default)s)", action.option_strings


@pytest.mark.parametrize("script, extra", [("run_rmt_on_kv_retrieval.py", ["--mem_proj_mode", "proj"]),
                                           ("run_gpt2_on_kv_retrieval.py", ["--base_model", "gpt2"])])
def test_baseline_run_scripts_train(tmp_path, script, extra):
    proc = run_script(script, *(TINY_COMMON if "gpt2" in script else TINY), *extra, "--max_steps", "3",
                      "--eval_steps", "3", "--exp_path", str(tmp_path))
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert "stopped (max_steps) at step 3" in output and (tmp_path / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("model_flags", [["--grad_mode", "second", "--K", "2"]], ids=["gradmem-second-order"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, capsys, model_flags):
    # a linear warmup over 4 steps: the learning rate after step s is s/4 of the peak, with any number of processes
    flags = [*TINY_COMMON, "--n_mem_tokens", "2", *model_flags, "--max_steps", "2", "--eval_steps", "2",
             "--log_steps", "1", "--max_grad_norm", "0", "--warmup_steps", "4"]
    training.run_experiment(GradMemGPT, [*flags, "--per_device_batch_size", "8", "--exp_path", str(tmp_path / "one")])
    assert "1 process(es)" in capsys.readouterr().out
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    two = subprocess.run(["bash", str(ROOT / "scripts" / "launch_cpu.sh"), "run_gradmemgpt_on_kv_retrieval.py", *flags,
                          "--per_device_batch_size", "4", "--exp_path", str(tmp_path / "two")],
                         cwd=ROOT, env=dict(env, NP="2", PY=sys.executable), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "2 process(es)" in two.stdout
    for run in ("one", "two"):
        assert [r["lr"] for r in metrics(tmp_path / run) if r["split"] == "train"] == pytest.approx([2.5e-4, 5e-4])
    loss = [[r["loss"] for r in metrics(tmp_path / run) if r["split"] == "train"] for run in ("one", "two")]
    assert loss[0] == pytest.approx(loss[1], rel=1e-6)
    args = training.build_parser(GradMemGPT, KVTask).parse_args(flags)
    torch.manual_seed(0)
    initial = GradMemGPT(tiny_lm(n_layer=1, n_embd=16, dtype=torch.float32), training.config_from_args(GradMemConfig, args))
    a = load_file(tmp_path / "one" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoint" / "model.safetensors")
    assert not torch.equal(a["mem_init"], initial.mem_init.detach())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    flags = [*TINY, "--max_steps", "1", "--eval_steps", "1", "--warmup_steps", "0", "--max_grad_norm", "0"]
    training.run_experiment(GradMemGPT, [*flags, "--per_device_batch_size", "8", "--exp_path", str(tmp_path / "big")])
    training.run_experiment(GradMemGPT, [*flags, "--per_device_batch_size", "4", "--gradient_accumulation_steps", "2",
                                         "--exp_path", str(tmp_path / "accumulated")])
    a = load_file(tmp_path / "big" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "accumulated" / "checkpoint" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_init_checkpoint_loads_weights_only(tmp_path):
    training.run_experiment(GradMemGPT, [*TINY, "--max_steps", "2", "--eval_steps", "2", "--exp_path", str(tmp_path / "a")])
    trained = load_file(tmp_path / "a" / "best" / "model.safetensors")
    result = training.run_experiment(GradMemGPT, [*TINY, "--max_steps", "1", "--eval_steps", "1", "--learning_rate", "1e-12",
                                                  "--seed", "5", "--init_checkpoint", str(tmp_path / "a" / "best"),
                                                  "--exp_path", str(tmp_path / "b")])
    assert result["step"] == 1  # a fresh run (step counter, optimizer), not a resume
    loaded = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    for name in trained:
        torch.testing.assert_close(loaded[name], trained[name], rtol=1e-6, atol=1e-9)


def test_early_stopping_after_patience_evaluations_without_a_better_exact_match(tmp_path):
    # a learning rate too small to change any prediction: the first evaluation is the best, and the run
    # stops at the second evaluation after it, not at max_steps
    exp = tmp_path / "run"
    result = training.run_experiment(GradMemGPT, [*TINY, "--max_steps", "10", "--eval_steps", "1", "--learning_rate",
                                                  "1e-12", "--early_stopping_patience", "2", "--exp_path", str(exp)])
    assert (result["stopped"], result["step"]) == ("early_stopping", 3)
    state = json.loads((exp / "checkpoint" / "trainer_state.json").read_text())
    assert state["stopped"] == "early_stopping" and state["evals_without_improvement"] == 2
    assert 0 < state["train_seconds"] == result["train_seconds"]


def test_the_time_limit_counts_the_training_time_of_earlier_invocations(tmp_path):
    exp = tmp_path / "run"
    steps = ["--max_steps", "2", "--eval_steps", "100", "--exp_path", str(exp)]
    training.run_experiment(GradMemGPT, [*TINY, *steps])
    state_file = exp / "checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "train_seconds": 300.0}))  # as if the first part took 5 minutes
    result = training.run_experiment(GradMemGPT, [*TINY, *steps[2:], "--max_steps", "10", "--max_train_minutes", "5"])
    assert (result["stopped"], result["step"]) == ("time_limit", 3) and result["train_seconds"] > 300
    # stopped between evaluations: the final weights are validated, and ranked for best, all the same
    assert [r["step"] for r in metrics(exp) if r["split"] == "valid"] == [2, 3]  # max_steps of the first part, then 3
    assert (exp / "best" / "model.safetensors").is_file()


def test_a_signal_during_validation_cuts_it_short_and_the_resumed_run_validates_that_step_first(tmp_path, monkeypatch):
    exp = tmp_path / "run"
    args = [*TINY, "--max_steps", "6", "--eval_steps", "3", "--eval_batch_size", "4", "--exp_path", str(exp)]
    real_evaluate, calls = training.evaluate, []

    def evaluate_with_a_signal(*a, **kw):  # the signal arrives as the first validation starts
        calls.append(kw.get("stop"))
        os.kill(os.getpid(), signal.SIGTERM)
        return real_evaluate(*a, **kw)

    monkeypatch.setattr(training, "evaluate", evaluate_with_a_signal)
    result = training.run_experiment(GradMemGPT, args)
    assert (result["stopped"], result["step"], len(calls)) == ("signal", 3, 1)
    state = json.loads((exp / "checkpoint" / "trainer_state.json").read_text())
    assert state["validation_pending"] and state["step"] == 3
    assert not [r for r in metrics(exp) if r["split"] == "valid"]  # nothing logged for the cut-short validation

    monkeypatch.setattr(training, "evaluate", real_evaluate)
    result = training.run_experiment(GradMemGPT, args)
    assert (result["stopped"], result["step"]) == ("max_steps", 6)
    assert [r["step"] for r in metrics(exp) if r["split"] == "valid"] == [3, 6]
    assert not json.loads((exp / "checkpoint" / "trainer_state.json").read_text())["validation_pending"]
