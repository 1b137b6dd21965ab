"""GradMem: write a context into memory vectors with K steps of test-time gradient descent.

WRITE. Each sample b starts from its own copy of the learned ``mem_init`` and takes K steps

    M_{k+1} = M_k - inner_lr * U(grad_M L_write(M_k; C_b)),
    L_write(M; C) = mean_{t: c_t != pad} CE(LM([M; c_<t]), c_t),

where U is SGD or a functional Adam; only M (and, with ``mem_proj_mode='per_sample'``, a per-sample
linear map) change. Losses are summed over samples, so each sample's step is independent of the batch.

READ. The context is dropped; the LM answers from ``[M_K; query]``. The outer loss back-propagates to
the model weights and ``mem_init`` through the WRITE steps:

- ``grad_mode='second'``: through every inner gradient (MAML; ``create_graph=True``);
- ``grad_mode='first'``: straight through, dM_K/dM_0 = I, no Hessian term (the gradient is detached);
- ``grad_mode='none'``: the memory is detached at each step, so ``mem_init`` never learns.

Inner-loss term (training only, ``inner_loss_weight`` w > 0): the outer loss gains w * L_write at
``inner_loss_memory``: ``final`` takes L_write(M_K) at the memory READ sees, one more WRITE forward whose
gradient then flows back through every inner step; ``last_step`` takes L_write(M_{K-1}), the loss the last
inner step computed anyway (free; the official implementation's term), its graph kept for the outer gradient.

Recomputation (``recompute_inner_steps``): a second-order step keeps only its inputs, and its graph is
rebuilt during the outer backward, ``recompute_chunks`` batch chunks at a time. The last chunk of the last
step is never rebuilt: its graph is the first the outer backward needs, and no bigger than a rebuilt one.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from cli import check_config, option
from inner_optimizers import INNER_UPDATES, adam_update, safe_sqrt, sgd_update  # noqa: F401 (re-exported)
from memory_model import MemoryModel, MemoryModelOutput

GRAD_MODES = ("none", "first", "second")
INNER_OPTIMIZERS = ("sgd", "adam")
MEM_PROJ_MODES = ("none", "proj", "per_sample")
INNER_LOSS_MEMORIES = ("final", "last_step")
# LoRA targets per architecture when write_lora_target_modules is not given
DEFAULT_LORA_TARGETS = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",), "gpt_neox": ("query_key_value",)}


@dataclass
class GradMemConfig:
    n_mem_tokens: int = option(8, "memory vectors M")
    K: int = option(2, "inner (WRITE) gradient steps at training time; write(K=...) may use another number")
    inner_lr: float = option(0.04, "inner-loop learning rate")
    inner_optimizer: str = option("sgd", "inner-loop update rule", choices=INNER_OPTIMIZERS)
    inner_betas: tuple[float, float] = option((0.9, 0.999), "Adam betas of the inner loop")
    inner_eps: float = option(1e-8, "Adam epsilon of the inner loop")
    grad_mode: str = option("second", "outer gradient through WRITE: none (memory detached), first "
                            "(straight-through), second (MAML)", choices=GRAD_MODES)
    last_K_second_order: int | None = option(None, "with grad_mode=second: only the last k inner steps keep their "
                                             "graph, earlier ones are first order")
    n_ctrl_tokens: int = option(0, "learned vectors in each of write-start, write-end, read-start, read-end")
    inner_clip_value: float | None = option(None, "clip inner gradients per element")
    inner_clip_norm: float | None = option(None, "clip inner gradients per sample, by their norm over all inner parameters")
    mem_proj_mode: str = option("none", "linear map on the memory: none, proj (shared), per_sample (adapted in the "
                                "inner loop, initial values meta-learned)", choices=MEM_PROJ_MODES)
    use_write_head: bool = option(False, "separate LM head for the WRITE loss, initialised from the LM head")
    use_write_lora: bool = option(False, "LoRA adapters active during WRITE only (needs the optional package peft)")
    write_lora_r: int = option(8, "LoRA rank")
    write_lora_alpha: int = option(16, "LoRA alpha")
    write_lora_dropout: float = option(0.0, "LoRA dropout")
    write_lora_target_modules: tuple[str, ...] | None = option(None, "modules LoRA wraps (default: the attention "
                                                               "projections of the architecture)")
    freeze_backbone: bool = option(False, "train only memory, prompts, projections and heads")
    inner_loss_weight: float = option(0.0, "weight w of the WRITE loss term added to the outer loss in training "
                                      "(inner_loss_memory says which memory it is taken at)")
    inner_loss_memory: str = option("final", "memory of the inner-loss term: final = L_write(M_K) at the memory "
                                    "READ sees, one more WRITE forward; last_step = L_write(M_{K-1}), the loss the "
                                    "last inner step computed anyway, free (the official implementation's term)",
                                    choices=INNER_LOSS_MEMORIES)
    gradient_checkpointing: bool = option(False, "recompute LM activations in the backward pass")
    recompute_inner_steps: bool = option(False, "keep only each second-order inner step's input and rebuild its "
                                         "graph during the outer backward (all but the last step, whose graph the "
                                         "backward needs first): memory no longer grows with K, gradients unchanged")
    recompute_chunks: int = option(1, "with recompute_inner_steps: run each step, and rebuild its graph, in this "
                                   "many batch chunks (samples are independent; the last step keeps its last "
                                   "chunk's graph): step memory falls ~1/chunks")
    attn_implementation: str | None = option(None, "switch the LM's attention, e.g. gradmem_manual (a "
                                             "double-differentiable kernel from attn_double_bwd); None keeps it")

    def __post_init__(self):
        self.inner_betas = tuple(self.inner_betas)
        if self.write_lora_target_modules is not None:
            self.write_lora_target_modules = tuple(self.write_lora_target_modules)
        checks = [
            (self.n_mem_tokens >= 1, "n_mem_tokens must be >= 1"),
            (self.K >= 0, "K must be >= 0"),
            (self.inner_lr > 0, "inner_lr must be > 0"),
            (self.inner_optimizer in INNER_OPTIMIZERS, f"inner_optimizer must be one of {INNER_OPTIMIZERS}"),
            (self.grad_mode in GRAD_MODES, f"grad_mode must be one of {GRAD_MODES}"),
            (self.mem_proj_mode in MEM_PROJ_MODES, f"mem_proj_mode must be one of {MEM_PROJ_MODES}"),
            (self.last_K_second_order is None or (self.grad_mode == "second" and self.last_K_second_order >= 1),
             "last_K_second_order needs grad_mode='second' and a value >= 1"),
            (self.n_ctrl_tokens >= 0, "n_ctrl_tokens must be >= 0"),
            (self.inner_clip_value is None or self.inner_clip_value > 0, "inner_clip_value must be > 0"),
            (self.inner_clip_norm is None or self.inner_clip_norm > 0, "inner_clip_norm must be > 0"),
            (self.inner_loss_weight >= 0, "inner_loss_weight must be >= 0"),
            (self.inner_loss_memory in INNER_LOSS_MEMORIES, f"inner_loss_memory must be one of {INNER_LOSS_MEMORIES}"),
            (not (self.inner_loss_memory == "last_step" and self.inner_loss_weight > 0 and self.K == 0),
             "inner_loss_memory='last_step' takes the loss of the last inner step, and K=0 takes none: set K >= 1 "
             "or inner_loss_memory='final'"),
            (self.recompute_chunks == 1 or (self.recompute_chunks > 1 and self.recompute_inner_steps),
             "recompute_chunks > 1 needs recompute_inner_steps=True"),
            (not ((self.use_write_head or self.use_write_lora) and self.grad_mode != "second"
                  and self.inner_loss_weight == 0),
             "the write head and write LoRA act only inside WRITE, so they learn only through second-order "
             "gradients or the inner loss: set grad_mode='second' or inner_loss_weight > 0"),
        ]
        check_config("GradMemConfig", checks)
        if self.inner_optimizer == "adam" and self.K == 1 and self.grad_mode == "second":
            # Adam's first step is lr * g / (|g| + eps) ~ lr * sign(g), whose derivative in g is ~0
            warnings.warn("inner_optimizer='adam' with K=1: the only WRITE step is a sign step, so almost no "
                          "second-order gradient reaches the weights through WRITE (measured: ~3e-4 of what SGD "
                          "passes); use inner_optimizer='sgd' or K >= 2", stacklevel=2)


def per_sample_norm(tensors) -> torch.Tensor:
    """``[B]``: the L2 norm of each sample's slice across all tensors (leading dim is the batch)."""
    return safe_sqrt(sum(t.flatten(1).pow(2).sum(1) for t in tensors))


def clip_per_sample(grads, clip_value=None, clip_norm=None):
    if clip_value is not None:
        grads = [g.clamp(-clip_value, clip_value) for g in grads]
    if clip_norm is not None:
        scale = (clip_norm / (per_sample_norm(grads) + 1e-6)).clamp(max=1.0)  # [B]
        grads = [g * scale.view(-1, *[1] * (g.dim() - 1)) for g in grads]
    return grads


class _RecomputedInnerStep(torch.autograd.Function):
    """One second-order inner step over the batch rows ``rows`` (slices that tile ``0:n`` in order, run
    one at a time) that saves only its inputs. Its backward re-runs each chunk (same RNG state) with
    ``create_graph=True`` and back-propagates through the rebuilt graph at once, so at most one chunk of
    one inner step has its activations alive during the outer backward (samples are independent, so
    chunking changes nothing but memory).

    Inputs after the static arguments: state tensors, optimiser-state tensors, trainable parameters.
    Outputs, for the rows in ``rows``: new state, new optimiser state, then the step's per-sample loss
    (differentiable when ``keep_loss``: the inner-loss term) and grad norm.
    """

    @staticmethod
    def forward(ctx, model, context_input_ids, step, rows, keep_loss, n_state, n_opt, *tensors):
        ctx.model, ctx.context, ctx.step, ctx.rows, ctx.keep_loss = model, context_input_ids, step, rows, keep_loss
        ctx.n_state, ctx.n_opt = n_state, n_opt
        ctx.devices = [t.device for t in tensors[:1] if t.is_cuda]
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = [torch.cuda.get_rng_state(d) for d in ctx.devices]
        ctx.set_materialize_grads(False)  # outputs nobody uses (the last step's Adam moments) get no backward work
        inputs = tensors[: n_state + n_opt]
        ctx.save_for_backward(*inputs)
        pieces = []
        with torch.enable_grad():
            for r in rows:
                state, opt_state = _RecomputedInnerStep._inputs([t[r] for t in inputs], n_state, n_opt)
                new_state, new_opt, loss, norm = model.inner_step(state, opt_state, context_input_ids[r], step,
                                                                  create_graph=False)
                pieces.append([t.detach() for t in (*new_state, *_flat(new_opt), loss, norm)])
        outputs = tuple(torch.cat(parts) for parts in zip(*pieces))
        ctx.mark_non_differentiable(*outputs[-1 if keep_loss else -2:])
        return outputs

    @staticmethod
    def _inputs(tensors, n_state, n_opt):
        """Fresh leaves for the state and optimiser state (all differentiable: after a first-order step
        the Adam moments need no gradient, and autograd drops what is returned for them)."""
        leaves = [t.detach().requires_grad_() for t in tensors]
        opt = leaves[n_state:]
        return leaves[:n_state], (opt[: n_opt // 2], opt[n_opt // 2:]) if n_opt else None

    @staticmethod
    def backward(ctx, *grad_outputs):
        saved = ctx.saved_tensors
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        input_grads = [torch.zeros_like(t) for t in saved]
        param_grads = [None] * len(params)
        with torch.random.fork_rng(devices=ctx.devices), torch.enable_grad():
            torch.set_rng_state(ctx.cpu_rng)
            for device, rng in zip(ctx.devices, ctx.cuda_rng):
                torch.cuda.set_rng_state(rng, device)
            for r in ctx.rows:
                state, opt_state = _RecomputedInnerStep._inputs([t[r] for t in saved], ctx.n_state, ctx.n_opt)
                new_state, new_opt, loss, _ = ctx.model.inner_step(state, opt_state, ctx.context[r], ctx.step,
                                                                   create_graph=True, keep_loss=ctx.keep_loss)
                outputs = [*new_state, *_flat(new_opt), *([loss] if ctx.keep_loss else [])]
                used = [(o, g[r]) for o, g in zip(outputs, grad_outputs) if g is not None]
                if not used:
                    continue
                grads = torch.autograd.grad([o for o, _ in used], [*state, *_flat(opt_state), *params],
                                            [g for _, g in used], allow_unused=True)
                for i, g in enumerate(grads[: len(saved)]):
                    if g is not None:
                        input_grads[i][r] = g
                for i, g in enumerate(grads[len(saved):]):
                    if g is not None:
                        param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
        return (None,) * 7 + tuple(input_grads) + tuple(param_grads)


def _chunks(batch_size: int, n_chunks: int) -> list[slice]:
    size = -(-batch_size // n_chunks)
    return [slice(i, min(i + size, batch_size)) for i in range(0, batch_size, size)]


def _flat(opt_state) -> list:
    return [] if opt_state is None else [*opt_state[0], *opt_state[1]]


def _unflat(opt_flat: list):
    half = len(opt_flat) // 2
    return (list(opt_flat[:half]), list(opt_flat[half:])) if opt_flat else None


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class GradMemGPT(MemoryModel):
    """GradMem around any Hugging Face causal LM ``lm``; see the module docstring for the maths."""

    config_class = GradMemConfig
    model_type = "gradmem"

    def __init__(self, lm, config: GradMemConfig | None = None):
        config = config or GradMemConfig()
        super().__init__(lm, config)
        d, std = self.hidden_size, self.init_std()
        self.mem_init = nn.Parameter(torch.randn(config.n_mem_tokens, d) * std)  # [M, d]
        self.add_prompts(config.n_ctrl_tokens)
        if config.mem_proj_mode == "proj":
            self.mem_proj = nn.Linear(d, d)
            with torch.no_grad():
                self.mem_proj.weight.copy_(torch.eye(d))
                self.mem_proj.bias.zero_()
        elif config.mem_proj_mode == "per_sample":
            # initial values of the per-sample map, meta-learned; each sample adapts its own copy
            self.proj_weight_init = nn.Parameter(torch.eye(d))  # [d, d]
            self.proj_bias_init = nn.Parameter(torch.zeros(d))  # [d]
        if config.use_write_head:
            self.add_write_head()
        if config.use_write_lora:
            self._add_write_lora()
        if config.freeze_backbone:
            for name, p in lm.named_parameters():
                p.requires_grad_("lora_" in name)
        if config.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.attn_implementation:
            lm.set_attn_implementation(config.attn_implementation)
        self.to(lm.dtype)

    def _add_write_lora(self):
        try:
            from peft import LoraConfig
        except ImportError:
            raise ImportError("use_write_lora=True needs the optional package peft: `pip install peft`.") from None
        c = self.config
        targets = c.write_lora_target_modules or DEFAULT_LORA_TARGETS.get(self.lm.config.model_type)
        if not targets:
            raise ValueError(f"no default LoRA targets for {self.lm.config.model_type!r}: set write_lora_target_modules.")
        trainable = [p.requires_grad for p in self.lm.parameters()]  # peft freezes the base model
        self.lm.add_adapter(LoraConfig(r=c.write_lora_r, lora_alpha=c.write_lora_alpha,
                                       lora_dropout=c.write_lora_dropout, target_modules=list(targets)),
                            adapter_name="write")
        self._lora_params = [p for n, p in self.lm.named_parameters() if "lora_" in n]
        lora_ids = {id(p) for p in self._lora_params}
        for p, was in zip((p for p in self.lm.parameters() if id(p) not in lora_ids), trainable):
            p.requires_grad_(was)
        self._set_write_lora(False)

    def _set_write_lora(self, active: bool):
        """Switch the WRITE adapters on or off; peft's switch also freezes them, so undo that."""
        (self.lm.enable_adapters if active else self.lm.disable_adapters)()
        for p in self._lora_params:
            p.requires_grad_(True)

    @contextmanager
    def _write_adapters(self):
        """LoRA adapters are active during WRITE only."""
        if not self.config.use_write_lora:
            yield
            return
        self._set_write_lora(True)
        try:
            yield
        finally:
            self._set_write_lora(False)

    # -- WRITE -------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, detach: bool) -> list[torch.Tensor]:
        """Inner parameters, one copy per sample: ``[B, M, d]`` memory (+ ``[B, d, d]``, ``[B, d]`` map)."""
        inits = [self.mem_init]
        if self.config.mem_proj_mode == "per_sample":
            inits += [self.proj_weight_init, self.proj_bias_init]
        state = [p.unsqueeze(0).expand(batch_size, *p.shape) for p in inits]
        return [s.detach().clone().requires_grad_() if detach or not s.requires_grad else s for s in state]

    def memory_embeddings(self, state: list[torch.Tensor]) -> torch.Tensor:
        """``[B, M, d]``: what the LM sees of the inner parameters."""
        memory = state[0]
        if self.config.mem_proj_mode == "per_sample":
            weight, bias = state[1], state[2]
            return torch.einsum("bmd,bed->bme", memory, weight) + bias[:, None]
        if self.config.mem_proj_mode == "proj":
            return self.mem_proj(memory)
        return memory

    def write_loss(self, state: list[torch.Tensor], context_input_ids: torch.Tensor) -> torch.Tensor:
        """``[B]`` per-sample L_write: mean CE over non-pad context tokens given ``[prompts; M; c_<t]``."""
        memory = self.memory_embeddings(state)
        start, end = self.prompts(0, memory.shape[0])
        prefix = torch.cat([t for t in (start, memory, end) if t is not None], dim=1)  # [B, P, d]
        return self.context_nll(prefix, context_input_ids, self.write_head if self.config.use_write_head else None)

    def inner_step(self, state, opt_state, context_input_ids, step: int, create_graph: bool, keep_loss: bool = False):
        """One gradient step on the inner parameters. ``create_graph`` is the only difference
        between a second-order and a first-order (straight-through) step. ``keep_loss`` keeps the graph of
        the per-sample loss it returns, for the inner-loss term ``last_step``; otherwise the loss is detached."""
        losses = self.write_loss(state, context_input_ids)  # [B]
        grads = torch.autograd.grad(losses.sum(), state, create_graph=create_graph,
                                    retain_graph=create_graph or keep_loss)
        grads = clip_per_sample(grads, self.config.inner_clip_value, self.config.inner_clip_norm)
        c = self.config
        updates, opt_state = INNER_UPDATES[c.inner_optimizer](grads, opt_state, step, lr=c.inner_lr,
                                                              betas=c.inner_betas, eps=c.inner_eps)
        new_state = [s - u for s, u in zip(state, updates)]
        return new_state, opt_state, losses if keep_loss else losses.detach(), per_sample_norm(grads).detach()

    def _recomputed_inner_step(self, state, opt_state, context_input_ids, step: int, keep_last_chunk: bool,
                               keep_loss: bool = False):
        """A second-order ``inner_step`` whose graph is rebuilt in the outer backward instead of kept, chunk
        by chunk; with ``keep_last_chunk`` the last chunk runs as a plain step and keeps its graph."""
        rows = _chunks(context_input_ids.shape[0], self.config.recompute_chunks)
        kept = rows.pop() if keep_last_chunk else None
        if not rows:
            return self.inner_step(state, opt_state, context_input_ids, step, create_graph=True, keep_loss=keep_loss)
        opt_flat = _flat(opt_state)
        params = [p for p in self.parameters() if p.requires_grad]
        parts = [_RecomputedInnerStep.apply(self, context_input_ids, step, rows, keep_loss, len(state), len(opt_flat),
                                            *state, *opt_flat, *params)]
        if kept is not None:
            # built after the recomputed rows, so the outer backward runs through (and frees) it before rebuilding them
            kept_state, kept_opt = [s[kept] for s in state], _unflat([t[kept] for t in opt_flat])
            new_state, new_opt, loss, norm = self.inner_step(kept_state, kept_opt, context_input_ids[kept], step,
                                                             create_graph=True, keep_loss=keep_loss)
            parts.append((*new_state, *_flat(new_opt), loss, norm))
        outputs = [torch.cat(pieces) for pieces in zip(*parts)]
        n = len(state)
        return outputs[:n], _unflat(outputs[n:-2]), outputs[-2], outputs[-1]

    def write(self, context_input_ids: torch.Tensor, K: int | None = None, return_stats: bool = False):
        """Memory ``[B, M, d]`` after K inner steps (``config.K`` by default).

        Under ``torch.no_grad()`` the inner gradients are still taken and the result is detached. In training
        with ``inner_loss_weight > 0``, ``stats["inner_loss_term"]`` is the inner-loss term's L_write (with
        ``last_step`` and K=0 there is none).
        """
        c = self.config
        K = c.K if K is None else K
        context_input_ids = self.trim_padding(context_input_ids)  # every inner step then skips the all-pad columns
        outer = torch.is_grad_enabled() and c.grad_mode != "none"
        n_second = 0 if not (outer and c.grad_mode == "second") else min(K, c.last_K_second_order or K)
        wants_term = c.inner_loss_weight > 0 and torch.is_grad_enabled() and self.training
        term_from_last_step = wants_term and c.inner_loss_memory == "last_step"
        losses, grad_norms, loss = [], [], None
        with torch.enable_grad(), self._write_adapters():
            state = self.initial_state(context_input_ids.shape[0], detach=not outer)
            mem_start, opt_state = state[0], None
            for step in range(K):
                second_order, last = step >= K - n_second, step == K - 1
                keep_loss = term_from_last_step and last
                # only a second-order step keeps a graph worth trading for recomputation
                if c.recompute_inner_steps and second_order:
                    out = self._recomputed_inner_step(state, opt_state, context_input_ids, step, keep_last_chunk=last,
                                                      keep_loss=keep_loss)
                else:
                    out = self.inner_step(state, opt_state, context_input_ids, step, create_graph=second_order,
                                          keep_loss=keep_loss)
                state, opt_state, loss, norm = out
                if not outer:
                    state = [s.detach().requires_grad_() for s in state]
                losses.append(loss.detach().mean())
                grad_norms.append(norm.mean())
        if not outer:
            state = [s.detach() for s in state]
        memory = self.memory_embeddings(state)
        term = None
        if term_from_last_step and K:
            term = loss.mean()  # L_write(M_{K-1}), computed by the last inner step
        elif wants_term and c.inner_loss_memory == "final":
            with self._write_adapters():
                term = self.write_loss(state, context_input_ids).mean()  # L_write(M_K): one more WRITE forward
        if not return_stats:
            return memory
        stats = {
            "inner_loss": torch.stack(losses) if losses else memory.new_zeros(0),  # [K]
            "inner_grad_norm": torch.stack(grad_norms) if grad_norms else memory.new_zeros(0),  # [K]
            "mem_norm": per_sample_norm([memory.detach()]).mean(),
            "mem_delta": per_sample_norm([(state[0] - mem_start).detach()]).mean(),
            "inner_loss_term": term,
        }
        return memory, stats

    def forward(self, context_input_ids, query_input_ids, labels=None, K=None, **unused) -> MemoryModelOutput:
        out = super().forward(context_input_ids, query_input_ids, labels, K=K)
        term = out.stats.pop("inner_loss_term")
        if out.loss is not None:
            out.stats["read_loss"] = out.loss.detach()
            if term is not None:
                out.loss = out.loss + self.config.inner_loss_weight * term
                out.stats["inner_loss_term"] = term.detach()
        return out
