"""Recurrent Memory Transformer (RMT) baseline: the memory is written by forward passes alone.

WRITE. The LM reads ``[prompt; M; prompt; context; M]``; the new memory is the final hidden state at the
trailing memory positions. The trailing memory is placed right after each sample's last real context
token (so position ids skip padding) and the padding goes to the end of the sequence (so causal
attention hides it from every real position). K passes repeat over the same context:

    M_{k+1} = proj(H_trailing(M_k, C))                 or, with mem_residual,
    M_{k+1} = M_k + LayerNorm(proj(H_trailing(M_k, C)))

READ is shared with every memory model: the LM answers from ``[prompt; read_proj(M_K); prompt; query]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cli import check_config, option
from memory_model import MemoryModel, MemoryModelOutput

RMT_PROJ_MODES = ("none", "proj", "proj_rw")


@dataclass
class RMTConfig:
    n_mem_tokens: int = option(8, "memory vectors M")
    K: int = option(1, "forward WRITE passes over the context")
    n_ctrl_tokens: int = option(0, "learned vectors in each of write-start, write-end, read-start, read-end")
    mem_proj_mode: str = option("none", "none; proj: a linear map on each written memory; proj_rw: proj plus a "
                                "separate read map, initialised to identity", choices=RMT_PROJ_MODES)
    recon_loss_weight: float = option(0.0, "weight of a loss reconstructing the context from the written memory")
    use_write_head: bool = option(False, "separate LM head for the reconstruction loss")
    mem_residual: bool = option(False, "new memory = old + LayerNorm(output) instead of the output")
    freeze_backbone: bool = option(False, "train only memory, prompts, projections and heads")

    def __post_init__(self):
        checks = [
            (self.n_mem_tokens >= 1, "n_mem_tokens must be >= 1"),
            (self.K >= 0, "K must be >= 0"),
            (self.n_ctrl_tokens >= 0, "n_ctrl_tokens must be >= 0"),
            (self.mem_proj_mode in RMT_PROJ_MODES, f"mem_proj_mode must be one of {RMT_PROJ_MODES}"),
            (self.recon_loss_weight >= 0, "recon_loss_weight must be >= 0"),
            (not self.use_write_head or self.recon_loss_weight > 0,
             "use_write_head needs recon_loss_weight > 0: the head serves only the reconstruction loss"),
        ]
        check_config("RMTConfig", checks)


def identity_linear(d: int) -> nn.Linear:
    layer = nn.Linear(d, d)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(d))
        layer.bias.zero_()
    return layer


class RMT(MemoryModel):
    config_class = RMTConfig
    model_type = "rmt"

    def __init__(self, lm, config: RMTConfig | None = None):
        config = config or RMTConfig()
        super().__init__(lm, config)
        d = self.hidden_size
        self.mem_init = nn.Parameter(torch.randn(config.n_mem_tokens, d) * self.init_std())  # [M, d]
        self.add_prompts(config.n_ctrl_tokens)
        if config.mem_proj_mode in ("proj", "proj_rw"):
            self.write_proj = identity_linear(d)
        if config.mem_proj_mode == "proj_rw":
            self.read_proj = identity_linear(d)
        if config.mem_residual:
            self.mem_norm = nn.LayerNorm(d)
        if config.use_write_head:
            self.add_write_head()
        if config.freeze_backbone:
            lm.requires_grad_(False)
        self.to(lm.dtype)

    def write_pass(self, memory: torch.Tensor, context_input_ids: torch.Tensor) -> torch.Tensor:
        """One forward WRITE pass: ``[B, M, d]`` -> ``[B, M, d]``."""
        B, M, d = memory.shape
        start, end = self.prompts(0, B)
        prefix = torch.cat([t for t in (start, memory, end) if t is not None], dim=1)  # [B, P, d]
        P, S = prefix.shape[1], context_input_ids.shape[1]
        lengths = (context_input_ids != self.pad_token_id).sum(1)  # [B]
        slots = (P + lengths)[:, None] + torch.arange(M, device=memory.device)  # [B, M] trailing memory
        x = torch.cat([prefix, self.embed(context_input_ids), memory.new_zeros(B, M, d)], dim=1)  # [B, P+S+M, d]
        x = x.scatter(1, slots[..., None].expand(-1, -1, d), memory)  # memory right after the last real token
        out = self.hidden_states(x).gather(1, slots[..., None].expand(-1, -1, d))  # [B, M, d]
        if self.config.mem_proj_mode != "none":
            out = self.write_proj(out)
        return memory + self.mem_norm(out) if self.config.mem_residual else out

    def write(self, context_input_ids: torch.Tensor, K: int | None = None, return_stats: bool = False):
        """Memory ``[B, M, d]`` after K forward passes (``config.K`` by default); no autograd.grad."""
        K = self.config.K if K is None else K
        memory = self.mem_init.expand(context_input_ids.shape[0], -1, -1)
        start = memory
        for _ in range(K):
            memory = self.write_pass(memory, context_input_ids)
        if not return_stats:
            return memory
        stats = {"mem_norm": memory.detach().flatten(1).norm(dim=1).mean(),
                 "mem_delta": (memory - start).detach().flatten(1).norm(dim=1).mean()}
        return memory, stats

    def read_prefix(self, memory: torch.Tensor) -> torch.Tensor:
        if self.config.mem_proj_mode == "proj_rw":
            memory = self.read_proj(memory)
        return super().read_prefix(memory)

    def reconstruction_loss(self, memory, context_input_ids) -> torch.Tensor:
        """Mean over samples of the CE of each context token given ``[prompt; M; prompt; c_<t]``."""
        start, end = self.prompts(0, memory.shape[0])
        prefix = torch.cat([t for t in (start, memory, end) if t is not None], dim=1)
        head = self.write_head if self.config.use_write_head else None
        return self.context_nll(prefix, context_input_ids, head).mean()

    def forward(self, context_input_ids, query_input_ids, labels=None, K=None, **unused) -> MemoryModelOutput:
        out = super().forward(context_input_ids, query_input_ids, labels, K=K)
        if out.loss is not None:
            out.stats["read_loss"] = out.loss.detach()
            if self.config.recon_loss_weight > 0:
                recon = self.reconstruction_loss(out.memory, context_input_ids)
                out.loss = out.loss + self.config.recon_loss_weight * recon
                out.stats["recon_loss"] = recon.detach()
        return out
