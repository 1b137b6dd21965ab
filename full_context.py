"""The non-compressive baselines: a causal LM (transformer or Mamba) that reads ``[context; query]``,
and, with ``closed_book=True``, the closed-book baseline that reads the query alone (no context, no memory):
the gap between the two is what the context, and so a memory of it, can carry.

Same interface as the memory models: ``write`` keeps the context itself (its state after reading is the
KV cache, or Mamba's recurrent and convolution state), ``read`` runs the LM over the context with the
query placed right after each sample's last real token, so padding only ever trails.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from cli import option
from memory_model import MemoryModel, MemoryModelOutput, causal_lm_loss


@dataclass
class FullContextConfig:
    """The backbone config says everything about the LM; the one option is what it reads."""

    closed_book: bool = option(False, "closed-book baseline: read the query alone (no context, no memory)")


class FullContextLM(MemoryModel):
    config_class = FullContextConfig
    model_type = "full_context"

    def __init__(self, lm, config: FullContextConfig | None = None):
        super().__init__(lm, config or FullContextConfig())

    def write(self, context_input_ids: torch.Tensor, K=None, return_stats: bool = False):
        """The context is kept whole: the "memory" is ``context_input_ids [B, S]`` (``[B, 0]`` closed-book)."""
        if self.config.closed_book:
            context_input_ids = context_input_ids[:, :0]
        return (context_input_ids, {}) if return_stats else context_input_ids

    def pack(self, context_input_ids, query_input_ids):
        """``[B, S+Q]`` ids with each query right after its context's last real token, and the
        query's positions ``[B, Q]``."""
        lengths = (context_input_ids != self.pad_token_id).sum(1)
        slots = lengths[:, None] + torch.arange(query_input_ids.shape[1], device=query_input_ids.device)
        ids = torch.cat([context_input_ids, torch.full_like(query_input_ids, self.pad_token_id)], dim=1)
        return ids.scatter(1, slots, query_input_ids), slots

    def read(self, memory, query_input_ids, labels=None):
        ids, slots = self.pack(memory, query_input_ids)
        logits = self.lm(input_ids=ids).logits
        logits = logits.gather(1, slots[..., None].expand(-1, -1, logits.shape[-1]))  # [B, Q, V]
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return MemoryModelOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, memory, query_input_ids, max_new_tokens: int = 8) -> torch.Tensor:
        """Greedy decoding after ``[context; query]``; samples of equal total length decode together."""
        ids, _ = self.pack(memory, query_input_ids)
        lengths = (ids != self.pad_token_id).sum(1)
        out = torch.empty(len(ids), max_new_tokens, dtype=torch.long, device=ids.device)
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero().flatten()
            prompt = ids[rows, :n]
            # EOS may be generated (the caller cuts there; min_new_tokens would forbid it). Without an EOS of its
            # own the model decodes max_new_tokens, as MemoryModel.generate does; a pretrained model's generation
            # config may stop at EOS, and the rest is padding
            config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None,
                                      pad_token_id=self.pad_token_id)
            new = self.lm.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)[:, n:]
            out[rows] = F.pad(new, (0, max_new_tokens - new.shape[1]), value=self.pad_token_id)
        return out

    def state_bytes_per_context(self, context_length: int | None = None, dtype=None) -> int:
        """Transformer: the KV cache, 2 x layers x length x (kv heads x head dim) values.
        Mamba: per layer, the SSM state ``[d_inner, d_state]`` and conv state ``[d_inner, d_conv]``."""
        c = self.lm.config
        size = torch.empty((), dtype=dtype or self.embed_dtype).element_size()
        if self.config.closed_book:
            return 0
        if hasattr(self.lm, "state_bytes_per_context"):  # the MQAR models count their own cache or state
            return self.lm.state_bytes_per_context(context_length, dtype=dtype or self.embed_dtype)
        if c.model_type == "mamba":
            return c.num_hidden_layers * c.intermediate_size * (c.state_size + c.conv_kernel) * size
        if context_length is None:
            raise ValueError("a transformer's state grows with the context: pass context_length.")
        n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return 2 * c.num_hidden_layers * context_length * n_kv * head_dim * size
