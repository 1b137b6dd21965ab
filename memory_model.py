"""What every memory model shares: READ over ``[prefix; memory; suffix; query]``, greedy generation,
saving and loading weights and memories, and bytes-of-state accounting.

A subclass implements ``write(context_input_ids, K=None) -> memory [B, M, d]`` and the learned
read-prompt vectors (``read_prompts``); ``forward`` is ``read(write(context), query)``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

import attn_double_bwd  # noqa: F401  (registers the double-backward attention implementations)
from io_utils import atomic_directory, atomic_file

IGNORE_INDEX = -100


@dataclass
class MemoryModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # [B, Q, V] over the query positions
    memory: torch.Tensor | None = None  # [B, M, d]
    stats: dict | None = None  # detached tensors: inner losses, gradient norms, memory norms


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 for the loss; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hugging Face convention: ``logits[:, t]`` predicts ``labels[:, t + 1]``; -100 is ignored."""
    return F.cross_entropy(upcast(logits[:, :-1]).flatten(0, 1), labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX)


def save_memory(memory: torch.Tensor, path: str | os.PathLike, **metadata) -> None:
    """Write a memory ``[B, M, d]`` (or ``[M, d]``) as a small safetensors file, atomically."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({"memory": memory.detach().contiguous().cpu()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in metadata.items()})


def load_memory(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    """The memory tensor and the metadata it was saved with."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        return f.get_tensor("memory"), meta


class MemoryModel(nn.Module):
    """Base class: ``self.lm`` is any Hugging Face causal LM; ``config`` a dataclass."""

    config_class = None  # the subclass's config dataclass
    model_type = None  # name stored in config.json

    def __init__(self, lm, config):
        super().__init__()
        self.lm = lm
        self.config = config

    # -- pieces of the LM -------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.lm.get_input_embeddings().embedding_dim

    @property
    def pad_token_id(self) -> int:
        pad = self.lm.config.pad_token_id
        return 0 if pad is None else pad

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(input_ids)

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Last hidden states ``[B, T, d]`` of the LM body (no LM head, no cache)."""
        out = self.lm.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def trim_padding(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` without the trailing columns that are padding in every row (at least one column
        stays). Under causal attention no real token sees them and the losses mask them, so they only cost
        time (a collator padding to a multiple of 8 adds up to 7)."""
        used = (input_ids != self.pad_token_id).any(0).nonzero()  # columns with a real token in some row
        return input_ids[:, : int(used.max()) + 1 if len(used) else 1]

    def context_nll(self, prefix: torch.Tensor, context_input_ids: torch.Tensor, head=None) -> torch.Tensor:
        """``[B]`` per-sample mean CE of each non-pad context token given ``[prefix; c_<t]``.

        The first context token is predicted from the last prefix position. Right padding is safe:
        under causal attention no real token sees a pad. The last context column is only a target, so it is
        not fed: no position's output depends on it as an input.
        """
        P = prefix.shape[1]
        hidden = self.hidden_states(torch.cat([prefix, self.embed(context_input_ids[:, :-1])], dim=1))  # [B, P+S-1, d]
        logits = (head or self.lm.get_output_embeddings())(hidden[:, P - 1:])  # [B, S, V]
        ce = F.cross_entropy(upcast(logits).flatten(0, 1), context_input_ids.flatten(), reduction="none")
        mask = context_input_ids != self.pad_token_id
        return (ce.view_as(mask) * mask).sum(1) / mask.sum(1).clamp(min=1)

    def init_std(self) -> float:
        return float(getattr(self.lm.config, "initializer_range", 0.02))

    # -- learned pieces shared by the memory models ------------------------------------------------
    def add_prompts(self, n_ctrl_tokens: int) -> None:
        """``ctrl [4, n, d]``: write-start, write-end, read-start, read-end prompt vectors."""
        if n_ctrl_tokens:
            self.ctrl = nn.Parameter(torch.randn(4, n_ctrl_tokens, self.hidden_size) * self.init_std())

    def prompts(self, first: int, batch_size: int):
        """(start, end) prompts ``[B, n, d]`` for WRITE (``first=0``) or READ (``first=2``), or Nones."""
        if not hasattr(self, "ctrl"):
            return None, None
        return tuple(self.ctrl[i].expand(batch_size, -1, -1) for i in (first, first + 1))

    def add_write_head(self) -> None:
        """A separate LM head for the WRITE/reconstruction loss, initialised from the LM head."""
        head = self.lm.get_output_embeddings()
        self.write_head = nn.Linear(self.hidden_size, head.weight.shape[0], bias=False)
        with torch.no_grad():
            self.write_head.weight.copy_(head.weight)

    # -- READ ---------------------------------------------------------------------------------
    def read_prompts(self, batch_size: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Learned vectors placed before and after the memory at READ, each ``[B, n, d]`` or None."""
        return self.prompts(2, batch_size)

    def read_prefix(self, memory: torch.Tensor) -> torch.Tensor:
        """``[B, P, d]``: read-start prompt, memory, read-end prompt."""
        start, end = self.read_prompts(memory.shape[0])
        return torch.cat([t for t in (start, memory.to(self.embed_dtype), end) if t is not None], dim=1)

    @property
    def embed_dtype(self):
        return self.lm.get_input_embeddings().weight.dtype

    def read(self, memory: torch.Tensor, query_input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        """Logits ``[B, Q, V]`` for the query positions from ``[prompts; memory; query]``, and the loss.

        Queries are right-padded; causal attention means no real token ever sees a pad.
        """
        prefix = self.read_prefix(memory)
        hidden = self.hidden_states(torch.cat([prefix, self.embed(query_input_ids)], dim=1))
        logits = self.lm.get_output_embeddings()(hidden[:, prefix.shape[1]:])
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return MemoryModelOutput(loss=loss, logits=logits, memory=memory)

    def forward(self, context_input_ids, query_input_ids, labels=None, K=None, **unused):
        memory, stats = self.write(context_input_ids, K=K, return_stats=True)
        out = self.read(memory, query_input_ids, labels)
        out.stats = stats
        return out

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, query_input_ids: torch.Tensor, max_new_tokens: int = 8) -> torch.Tensor:
        """Greedy decoding from ``[prompts; memory; query]``: new ids ``[B, max_new_tokens]``.

        Queries of different lengths (right padding) are decoded in groups of equal length.
        """
        lengths = (query_input_ids != self.pad_token_id).sum(dim=1)
        out = torch.empty(len(lengths), max_new_tokens, dtype=torch.long, device=query_input_ids.device)
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero().flatten()
            out[rows] = self._greedy(memory[rows], query_input_ids[rows, :n], max_new_tokens)
        return out

    def _greedy(self, memory, query_ids, max_new_tokens):
        embeds = torch.cat([self.read_prefix(memory), self.embed(query_ids)], dim=1)
        step = self.lm(inputs_embeds=embeds, use_cache=True)
        new = []
        for _ in range(max_new_tokens):
            token = step.logits[:, -1].argmax(dim=-1)
            new.append(token)
            step = self.lm(inputs_embeds=self.embed(token[:, None]), past_key_values=step.past_key_values,
                           use_cache=True)
        return torch.stack(new, dim=1)

    # -- state accounting ------------------------------------------------------------------------
    def state_bytes_per_context(self, context_length: int | None = None, dtype=None) -> int:
        """Bytes kept per context once it is written: the memory, ``M x d`` values."""
        dtype = dtype or self.embed_dtype
        return self.config.n_mem_tokens * self.hidden_size * torch.empty((), dtype=dtype).element_size()

    # -- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """``config.json`` (memory config + LM config) and ``model.safetensors``, written atomically."""
        from safetensors.torch import save_model

        with atomic_directory(path, overwrite=overwrite) as tmp:
            meta = {"model_type": self.model_type, "memory_config": dataclasses.asdict(self.config),
                    "lm_config": self.lm.config.to_dict()}
            (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
            save_model(self, str(tmp / "model.safetensors"))
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, attn_implementation: str = "eager"):
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModelForCausalLM

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no saved model at {path} (config.json missing): pass the folder that "
                                    f"save_pretrained wrote.")
        meta = json.loads((path / "config.json").read_text())
        if meta.get("model_type") != cls.model_type:
            raise ValueError(f"{path} holds a {meta.get('model_type')!r} model, not {cls.model_type!r}.")
        lm_cfg = dict(meta["lm_config"])
        lm_config = AutoConfig.for_model(lm_cfg.pop("model_type"), **lm_cfg)
        kwargs = {} if lm_config.model_type == "mamba" else {"attn_implementation": attn_implementation}
        lm = AutoModelForCausalLM.from_config(lm_config, **kwargs)
        model = cls(lm, cls.config_class(**meta["memory_config"]))
        load_model(model, str(path / "model.safetensors"))
        return model
