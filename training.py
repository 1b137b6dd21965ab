"""The one training loop every model uses, built on accelerate.

It knows only ``model(**batch).loss``, ``.logits`` and ``.stats``, and a task (``tasks.py``) that gives the
data, the collator and which target tokens are scored. It evaluates exact match and token accuracy every
``eval_steps``, logs to a tqdm bar, tensorboard and ``exp_path/metrics.jsonl``, keeps
the best weights in ``exp_path/best``, and checkpoints to ``exp_path/checkpoint`` (atomically, through
``accelerator.save_state``) so that a run resumes exactly where it stopped, SIGTERM included (a signal during a validation cuts
it short; the resumed run validates that step first).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

import backbones
from backbones import BackboneConfig, build_backbone
from cli import add_config_args, config_from_args, option
from full_context import FullContextLM
from grad_memgpt import GradMemGPT
from io_utils import atomic_directory, atomic_file
from rmt import RMT
from tasks import Task, TaskDataError, task_class

logger = logging.getLogger("gradmem")
MODEL_CLASSES = {cls.model_type: cls for cls in (GradMemGPT, RMT, FullContextLM)}
SCHEDULERS = ("constant_with_warmup", "linear", "cosine")


@dataclass
class TrainConfig:
    exp_path: str = option("runs/exp", "folder of this run: config, metrics, tensorboard, checkpoints")
    per_device_batch_size: int = option(64, "samples per process per micro-batch")
    eval_batch_size: int | None = option(None, "samples per process per evaluation batch (default: training's)")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    learning_rate: float = option(1e-4, "peak AdamW learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases, norms, memory or prompts)")
    lr_scheduler: str = option("constant_with_warmup", "learning-rate schedule", choices=SCHEDULERS)
    warmup_steps: int = option(1000, "linear warmup steps")
    max_steps: int = option(10_000, "optimizer steps")
    max_grad_norm: float = option(1.0, "clip the global gradient norm (0: off)")
    eval_steps: int = option(500, "evaluate every N optimizer steps")
    max_eval_samples: int | None = option(None, "evaluate on at most this many validation samples")
    log_steps: int = option(50, "log training loss and stats every N steps")
    save_steps: int | None = option(None, "checkpoint every N steps (default: at every evaluation)")
    early_stopping_patience: int | None = option(None, "stop after this many evaluations without a better exact match")
    stop_at_exact_match: float = option(1.0, "stop once validation exact match reaches this")
    max_train_minutes: float | None = option(None, "stop (with a checkpoint) after this much wall-clock training time, "
                                                       "summed over resumes")
    seed: int = option(0, "seed for weights, data order and everything else")
    mixed_precision: str = option("no", "accelerate mixed precision (bf16 on GPU)", choices=("no", "bf16", "fp16"))
    init_checkpoint: str | None = option(None, "load model weights (only) from this saved model folder")
    max_nonfinite_in_row: int = option(20, "stop when this many steps in a row have a non-finite loss or gradient")
    max_context_length: int | None = option(None, "truncate contexts to this many tokens (counted and warned); "
                                            "contexts never exceed the model's positions")
    show_progress: bool = option(True, "tqdm progress bar")

    def __post_init__(self):
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_steps", "eval_steps", "log_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1.")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

class EpochSampler(Sampler):
    """A permutation per epoch drawn from ``(seed, epoch)``, so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


def max_context_tokens(model, cfg: TrainConfig) -> int | None:
    """The longest context the model's positions allow (less its memory and prompts, and
    ``QUERY_RESERVE`` positions for the query), capped by ``cfg.max_context_length``."""
    lm_config = model.lm.config
    positions = getattr(lm_config, "max_position_embeddings", None) or getattr(lm_config, "n_positions", None)
    limits = [cfg.max_context_length]
    if positions:
        prefix = getattr(model.config, "n_mem_tokens", 0) + 2 * getattr(model.config, "n_ctrl_tokens", 0)
        limits.append(positions - prefix - QUERY_RESERVE)
    limits = [n for n in limits if n is not None]
    return min(limits) if limits else None


QUERY_RESERVE = 64


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def score_batch(logits, labels, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced, per sample: (every scored token right, [number right, number scored]).
    ``mask [B, Q-1]`` says which label positions are scored (``Task.scored_mask``)."""
    right = (logits[:, :-1].argmax(-1) == labels[:, 1:]) & mask
    exact = (right | ~mask).all(dim=1)
    return exact, torch.stack([right.sum(1), mask.sum(1)], dim=1)


@torch.no_grad()
def evaluate(model, dataloader, accelerator, task: Task, tokenizer, K=None, stop=None) -> dict | None:
    """Exact match, token accuracy, loss and mean model stats over ``dataloader`` (all processes).

    ``stop``, a callable checked before each batch, cuts the evaluation short: when it is true on any
    process, every process returns None."""
    model.eval()
    exact, tokens, losses, stats = [], [], [], {}
    for batch in dataloader:
        if stop is not None and accelerator.reduce(torch.tensor(float(stop()), device=accelerator.device), "sum").item():
            model.train()
            return None
        out = model(**batch, K=K)
        e, t = score_batch(out.logits, batch["labels"], task.scored_mask(batch["labels"], tokenizer))
        e, t = accelerator.gather_for_metrics((e, t))
        exact.append(e)
        tokens.append(t)
        losses.append(accelerator.gather_for_metrics(out.loss.detach()[None]).mean())
        for k, v in flat_stats(out.stats).items():
            stats.setdefault(k, []).append(v)
    model.train()
    tokens = torch.cat(tokens).sum(0)
    result = {"exact_match": torch.cat(exact).float().mean().item(),
              "token_accuracy": (tokens[0] / tokens[1].clamp(min=1)).item(),
              "loss": torch.stack(losses).mean().item()}
    result.update({k: sum(v) / len(v) for k, v in stats.items()})
    return result


def flat_stats(stats: dict | None) -> dict:
    """Model stats as floats: per-step vectors become ``name_k`` entries."""
    out = {}
    for k, v in (stats or {}).items():
        if v is None:
            continue
        v = v.detach().float().cpu()
        if v.dim() == 0:
            out[k] = v.item()
        else:
            out.update({f"{k}_{i}": x.item() for i, x in enumerate(v)})
    return out


# ---------------------------------------------------------------------------------------------
# Logging and checkpoints
# ---------------------------------------------------------------------------------------------

class RunLog:
    """metrics.jsonl plus tensorboard, written by the main process only."""

    def __init__(self, exp_path: Path, enabled: bool):
        self.enabled = enabled
        self.path = exp_path / "metrics.jsonl"
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(exp_path / "tensorboard"))

    def write(self, step: int, split: str, values: dict):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"{split}/{k}", v, step)
        self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


@dataclass
class TrainerState:
    step: int = 0
    best_exact_match: float = -1.0
    evals_without_improvement: int = 0
    nonfinite_steps: int = 0
    nonfinite_in_row: int = 0
    train_seconds: float = 0.0  # wall time in the training loop, summed over resumes (evaluations included)
    stopped: str = ""  # why the last invocation ended: max_steps, target_exact_match, early_stopping, time_limit, signal
    validation_pending: bool = False  # a signal cut the validation of ``step`` short: the resumed run does it first


def save_checkpoint(accelerator, exp_path: Path, state: TrainerState) -> None:
    """accelerate state (weights, optimizer, scheduler, RNG) + trainer state, renamed into place at the end."""
    if (exp_path / "checkpoint" / "trainer_state.json").is_file():
        saved = json.loads((exp_path / "checkpoint" / "trainer_state.json").read_text())
        if {**saved, "train_seconds": state.train_seconds} == dataclasses.asdict(state):
            return  # this very state is on disk already (the clock alone moved)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_directory(exp_path / "checkpoint", overwrite=True) as tmp:
            accelerator.save_state(str(tmp), safe_serialization=True)
            (tmp / "trainer_state.json").write_text(json.dumps(dataclasses.asdict(state)))
    accelerator.wait_for_everyone()


def save_best(accelerator, model, exp_path: Path) -> None:
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(exp_path / "best", overwrite=True)
    accelerator.wait_for_everyone()


class StopRequest:
    """Turns SIGTERM (and SIGINT) into a flag the loop checks between steps and validation batches."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and "mem_init" not in name and "ctrl" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def prepare_data(model, cfg: TrainConfig, task: Task, tokenizer, splits=("train", "valid")) -> tuple[dict, object]:
    """The task's splits and collator, checked before anything is written: the tokenizer fits the model,
    and the first training samples collate."""
    backbones.check_tokenizer_fits(tokenizer, model.lm)
    data = task.load_splits(splits, seed=cfg.seed)
    collate = task.collator(tokenizer, max_context_length=max_context_tokens(model, cfg))
    first = data[splits[0]]
    if len(first) == 0:
        raise TaskDataError(f"the {splits[0]} split of {task.describe()} is empty.")
    collate([first[i] for i in range(min(2, len(first)))])
    return data, collate


def train(model, cfg: TrainConfig, task: Task, tokenizer, configs: dict) -> dict:
    """Train ``model`` on ``task``; ``configs`` (dataclasses by name) are saved with the run. Returns the
    final evaluation, with ``stopped`` saying why the run ended and ``train_seconds`` the time it took
    (both also kept in ``checkpoint/trainer_state.json``). The data and tokenizer are checked before
    the run folder is created, so a bad input leaves nothing on disk."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    # an optimizer step is every gradient_accumulation_steps micro-batches, also where an epoch ends inside
    # one (accelerate's default steps at each epoch's end, which a resumed run cannot replay); the schedule
    # advances once per optimizer step (accelerate's default advances it once per process)
    accumulation = GradientAccumulationPlugin(num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False)
    accelerator = Accelerator(gradient_accumulation_plugin=accumulation, mixed_precision=cfg.mixed_precision,
                              step_scheduler_with_optimizer=False)
    set_seed(cfg.seed)
    exp_path = Path(cfg.exp_path)
    full_config = {"train": dataclasses.asdict(cfg), "model_type": model.model_type, "task_name": task.name,
                   "task": dataclasses.asdict(task.config), **{k: dataclasses.asdict(v) for k, v in configs.items()}}
    accelerator.print(json.dumps(full_config, indent=2))
    accelerator.print(f"{accelerator.num_processes} process(es) on {accelerator.device}, "
                      f"{cfg.per_device_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes} "
                      f"samples per optimizer step")
    data, collate = prepare_data(model, cfg, task, tokenizer)
    if cfg.init_checkpoint:
        from safetensors.torch import load_model

        load_model(model, str(Path(cfg.init_checkpoint) / "model.safetensors"))
    if accelerator.is_main_process:
        exp_path.mkdir(parents=True, exist_ok=True)
        with atomic_file(exp_path / "config.json") as tmp:
            tmp.write_text(json.dumps(full_config, indent=2) + "\n")
        with atomic_directory(exp_path / "tokenizer", overwrite=True) as tmp:
            tokenizer.save_pretrained(str(tmp))

    train_ds, valid_ds = data["train"], data["valid"]
    if cfg.max_eval_samples:
        valid_ds = valid_ds.select(range(min(cfg.max_eval_samples, len(valid_ds))))
    train_dl = DataLoader(train_ds, batch_size=cfg.per_device_batch_size, sampler=EpochSampler(len(train_ds), cfg.seed),
                          collate_fn=collate, drop_last=True)
    eval_dl = DataLoader(valid_ds, batch_size=cfg.eval_batch_size or cfg.per_device_batch_size, collate_fn=collate)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps)
    model, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, eval_dl, scheduler)

    state = TrainerState()
    if (exp_path / "checkpoint" / "trainer_state.json").is_file():
        accelerator.load_state(str(exp_path / "checkpoint"))
        state = TrainerState(**json.loads((exp_path / "checkpoint" / "trainer_state.json").read_text()))
        accelerator.print(f"resumed from {exp_path / 'checkpoint'} at step {state.step}")
    log = RunLog(exp_path, accelerator.is_main_process)
    micro_per_epoch = len(train_dl)
    if micro_per_epoch < cfg.gradient_accumulation_steps:
        raise ValueError(f"the training set gives {micro_per_epoch} micro-batches per epoch, fewer than "
                         f"gradient_accumulation_steps={cfg.gradient_accumulation_steps}: use more data or smaller batches.")

    def batches():
        """Micro-batches from where ``state.step`` says the run is, epoch after epoch."""
        consumed = state.step * cfg.gradient_accumulation_steps
        epoch, skip = divmod(consumed, micro_per_epoch)
        while True:
            train_dl.set_epoch(epoch)
            yield from (accelerator.skip_first_batches(train_dl, skip) if skip else train_dl)
            epoch, skip = epoch + 1, 0

    def validate(stop=None) -> dict | None:
        """Evaluate on the validation split, log it, keep the weights in ``best`` if they are the best yet.
        None, with ``state.validation_pending`` set, when ``stop()`` cut it short."""
        result = evaluate(model, eval_dl, accelerator, task, tokenizer, stop=stop)
        state.validation_pending = result is None
        if result is None:
            return None
        log.write(state.step, "valid", result)
        accelerator.print(f"step {state.step}: " + " ".join(f"{k}={v:.4f}" for k, v in result.items()
                                                             if k in ("exact_match", "token_accuracy", "loss")))
        if result["exact_match"] > state.best_exact_match:
            state.best_exact_match, state.evals_without_improvement = result["exact_match"], 0
            save_best(accelerator, model, exp_path)
        else:
            state.evals_without_improvement += 1
        return result

    def stop_reason(result: dict) -> str:
        """Why a run stops after this validation ("max_steps": it goes on)."""
        if result["exact_match"] >= cfg.stop_at_exact_match:
            return "target_exact_match"
        if cfg.early_stopping_patience and state.evals_without_improvement >= cfg.early_stopping_patience:
            return "early_stopping"
        return "max_steps"

    def validate_then_checkpoint(stop: StopRequest) -> tuple[dict, str]:
        """The step's validation, cut short by a signal (the checkpoint then marks it pending), and why the
        run stops after it."""
        result = validate(lambda: stop.requested)
        if result is None:
            return {}, "signal"
        if not cfg.save_steps:
            save_checkpoint(accelerator, exp_path, state)
        return result, stop_reason(result)

    result, stopped, validated_step = {}, "max_steps", state.step
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc="train", disable=not (cfg.show_progress and accelerator.is_main_process))
    stream, window, t_window = batches(), [], time.perf_counter()
    t_start, seconds_before = t_window, state.train_seconds
    with StopRequest() as stop:
        if state.validation_pending:  # the last invocation was stopped while validating this step
            result, stopped = validate_then_checkpoint(stop)
        while stopped == "max_steps" and state.step < cfg.max_steps:
            skipped = False
            for _ in range(cfg.gradient_accumulation_steps):
                batch = next(stream)
                with accelerator.accumulate(model):
                    out = model(**batch)
                    finite = torch.isfinite(out.loss).float() * all_finite(out.stats)
                    if accelerator.reduce(finite, reduction="mean").item() < 1:  # every process skips together
                        skipped = True
                        optimizer.zero_grad()
                        continue
                    accelerator.backward(out.loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        skipped |= not torch.isfinite(grad_norm).item()
                    if not skipped:
                        optimizer.step()
                    optimizer.zero_grad()
            scheduler.step()
            state.step += 1
            if skipped:
                state.nonfinite_steps += 1
                state.nonfinite_in_row += 1
                logger.warning("step %d skipped: non-finite loss or gradient (%d so far)", state.step, state.nonfinite_steps)
                log.write(state.step, "train", {"nonfinite_steps": state.nonfinite_steps})
                if state.nonfinite_in_row >= cfg.max_nonfinite_in_row:
                    save_checkpoint(accelerator, exp_path, state)
                    raise RuntimeError(f"{state.nonfinite_in_row} steps in a row had a non-finite loss or gradient "
                                       f"(step {state.step}): lower --learning_rate or --inner_lr, or clip more "
                                       f"(--max_grad_norm, --inner_clip_norm).")
            else:
                state.nonfinite_in_row = 0
                window.append(out.loss.detach().float())
            bar.update(1)
            if state.step % cfg.log_steps == 0 and window:
                rate = len(window) / (time.perf_counter() - t_window)
                values = {"loss": accelerator.reduce(torch.stack(window).mean(), "mean").item(),
                          "lr": scheduler.get_last_lr()[0], "steps_per_s": rate, **flat_stats(out.stats)}
                log.write(state.step, "train", values)
                bar.set_postfix(loss=f"{values['loss']:.3f}", em=f"{max(state.best_exact_match, 0):.3f}",
                                steps_s=f"{rate:.2f}")
                window, t_window = [], time.perf_counter()
            if state.step % cfg.eval_steps == 0 or state.step == cfg.max_steps:
                result, stopped = validate_then_checkpoint(stop)
                if stopped != "signal":
                    validated_step = state.step
            if cfg.save_steps and state.step % cfg.save_steps == 0:
                save_checkpoint(accelerator, exp_path, state)
            state.train_seconds = seconds_before + time.perf_counter() - t_start
            if stop.requested:
                stopped = "signal"
            elif stopped == "max_steps" and cfg.max_train_minutes and state.train_seconds > 60 * cfg.max_train_minutes:
                stopped = "time_limit"
            if stopped != "max_steps":
                break
    if state.step != validated_step and stopped != "signal":  # stopped between evaluations (time limit)
        result = validate()
    state.stopped = stopped
    save_checkpoint(accelerator, exp_path, state)
    bar.close()
    log.close()
    if not result and stopped != "signal":  # a signal means: leave now, the checkpoint is saved
        result = evaluate(model, eval_dl, accelerator, task, tokenizer)
    accelerator.print(f"stopped ({stopped}) at step {state.step}; best exact_match {state.best_exact_match:.4f}; "
                      f"run in {exp_path}")
    return {**result, "stopped": stopped, "step": state.step, "best_exact_match": state.best_exact_match,
            "train_seconds": state.train_seconds}


def all_finite(stats: dict | None) -> torch.Tensor:
    """1.0 when every stat (inner losses and gradient norms) is finite, else 0.0."""
    values = [v.detach().float().flatten() for v in (stats or {}).values() if isinstance(v, torch.Tensor)]
    if not values:
        return torch.tensor(1.0)
    return torch.isfinite(torch.cat([v.cpu() for v in values])).all().float()


# ---------------------------------------------------------------------------------------------
# What every run script shares
# ---------------------------------------------------------------------------------------------

def build_parser(model_cls, task_cls, description: str = "") -> argparse.ArgumentParser:
    """TrainConfig + the task's flags + BackboneConfig + the model's config flags."""
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser, TrainConfig, "training")
    add_config_args(parser, task_cls.config_class, f"task: {task_cls.name}")
    add_config_args(parser, BackboneConfig, "backbone")
    add_config_args(parser, model_cls.config_class, model_cls.model_type)
    return parser


def task_tokenizer(task: Task, backbone_cfg: BackboneConfig):
    """The task's own tokenizer, or else the pretrained model's."""
    tokenizer = task.tokenizer()
    if tokenizer is not None:
        return tokenizer
    if not backbone_cfg.is_pretrained:
        raise ValueError(f"the {task.name} task takes its tokenizer from a pretrained model: pass --pretrained_path "
                         f"(a folder or .gguf file) or --pretrained (e.g. smollm2-135m).")
    return backbones.load_tokenizer(backbone_cfg)


def run_experiment(model_cls, argv=None, description: str = "", task: str = "kv") -> dict:
    """Parse the flags, build the task and the model, train it."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    task_cls = task_class(task)
    args = build_parser(model_cls, task_cls, description).parse_args(argv)
    try:
        train_cfg = config_from_args(TrainConfig, args)
        task_obj = task_cls(config_from_args(task_cls.config_class, args))
        backbone_cfg = config_from_args(BackboneConfig, args)
        model_cfg = config_from_args(model_cls.config_class, args)
        tokenizer = task_tokenizer(task_obj, backbone_cfg)
        torch.manual_seed(train_cfg.seed)
        model = model_cls(build_backbone(backbone_cfg, tokenizer), model_cfg)
        return train(model, train_cfg, task_obj, tokenizer, {"backbone": backbone_cfg, "model": model_cfg})
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
