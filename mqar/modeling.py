"""Three small causal LMs for MQAR, as Hugging Face models (config + ``PreTrainedModel``, registered with
``AutoConfig``/``AutoModelForCausalLM``, saved as safetensors), parameter-matched to the seed system:

- ``mqar_gpt``: softmax attention with separate key and value widths (q/k/v 64->96, out 96->64), RoPE;
- ``mqar_deltanet``: the delta rule (``delta_rule.py``) with L2-normalised queries and keys and
  ``beta = sigmoid(linear(x))`` per head; no positional encoding (the recurrence is ordered);
- ``mqar_unifiedkv``: softmax attention where one projection is both key and value
  (q 64->128, kv 64->128, out 128->64); RoPE rotates its key use only.

A block is ``x + mixer(RMSNorm(x))`` (plus ``x + FFN(RMSNorm(x))`` with ``use_ffn``); the model is
embedding -> blocks -> RMSNorm -> LM head (tied to the embedding, as in Zoology; no biases anywhere). Block parameters at the seed's
4 layers x 64 dims: GPT 4 (4 64 96 + 64) = 98,560, UnifiedKV 4 (3 64 128 + 64) = 98,560, DeltaNet the
GPT's plus its beta projection 4 (64 2) = 99,072.

    python -m mqar.modeling      # prints the parameter counts of the three seed configurations
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

from mqar.delta_rule import delta_rule_chunked, delta_rule_fla, delta_rule_recurrent, fla_available

DELTA_RULE_IMPLS = ("chunked", "recurrent", "fla")


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

def _need_length(context_length):
    if context_length is None:
        raise ValueError("an attention model's cache grows with the context: pass context_length.")


@strict
class MQARLMConfig(PreTrainedConfig):
    """What the three architectures share; ``d_*`` widths are totals over heads."""

    model_type = "mqar_lm"
    vocab_size: int = 2048
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    use_ffn: bool = False
    ffn_mult: int = 4
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    rope_theta: float = 10_000.0
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tie_word_embeddings: bool = True  # as Zoology: the LM head is the embedding matrix

    def _check_widths(self, **widths):
        for name, width in widths.items():
            if width < 1 or width % self.num_attention_heads:
                raise ValueError(f"{name}={width} must be a positive multiple of num_attention_heads="
                                 f"{self.num_attention_heads}.")

    def state_values(self, context_length: int) -> int:
        """Numbers kept per context after reading ``context_length`` tokens (a cache or a recurrent state)."""
        raise NotImplementedError


@strict
class MQARGPTConfig(MQARLMConfig):
    model_type = "mqar_gpt"
    d_key: int | None = None  # default 3/2 hidden_size (96 at 64)
    d_value: int | None = None  # default 3/2 hidden_size

    def __post_init__(self, **kwargs):
        self.d_key = self.d_key or 3 * self.hidden_size // 2
        self.d_value = self.d_value or 3 * self.hidden_size // 2
        self._check_widths(d_key=self.d_key, d_value=self.d_value)
        if (self.d_key // self.num_attention_heads) % 2:
            raise ValueError(f"RoPE needs an even key width per head: d_key={self.d_key} over "
                             f"{self.num_attention_heads} heads is odd.")
        super().__post_init__(**kwargs)

    def state_values(self, context_length: int) -> int:
        _need_length(context_length)
        return self.num_hidden_layers * context_length * (self.d_key + self.d_value)  # the KV cache


@strict
class DeltaNetConfig(MQARLMConfig):
    model_type = "mqar_deltanet"
    d_key: int | None = None  # default 3/2 hidden_size, as the GPT
    d_value: int | None = None
    chunk_size: int = 64
    delta_rule_impl: str = "chunked"  # chunked (PyTorch), recurrent (reference), fla (CUDA kernel)

    def __post_init__(self, **kwargs):
        self.d_key = self.d_key or 3 * self.hidden_size // 2
        self.d_value = self.d_value or 3 * self.hidden_size // 2
        self._check_widths(d_key=self.d_key, d_value=self.d_value)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size} must be >= 1.")
        if self.delta_rule_impl not in DELTA_RULE_IMPLS:
            raise ValueError(f"delta_rule_impl={self.delta_rule_impl!r} is not one of {DELTA_RULE_IMPLS}.")
        super().__post_init__(**kwargs)

    def state_values(self, context_length: int) -> int:
        H = self.num_attention_heads
        return self.num_hidden_layers * H * (self.d_key // H) * (self.d_value // H)  # one [dk, dv] per head


@strict
class UnifiedKVConfig(MQARLMConfig):
    model_type = "mqar_unifiedkv"
    d_kv: int | None = None  # default 2 hidden_size (128 at 64): d_U = 2/3 (d_K + d_V) of the GPT

    def __post_init__(self, **kwargs):
        self.d_kv = self.d_kv or 2 * self.hidden_size
        self._check_widths(d_kv=self.d_kv)
        if (self.d_kv // self.num_attention_heads) % 2:
            raise ValueError(f"RoPE needs an even width per head: d_kv={self.d_kv} over "
                             f"{self.num_attention_heads} heads is odd.")
        super().__post_init__(**kwargs)

    def state_values(self, context_length: int) -> int:
        _need_length(context_length)
        return self.num_hidden_layers * context_length * self.d_kv  # one cached vector per token


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x^2) + eps)``, in the input's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, T, H*d] -> [B, H, T, d]``."""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, d] -> [B, T, H*d]``."""
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on ``x [B, H, T, d]`` at ``positions [B, T]``: pairs ``(x_i, x_{i+d/2})`` rotate by
    ``position * theta^(-2i/d)``."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-torch.arange(half, dtype=x.dtype, device=x.device) / half)  # [d/2]
    angle = positions[:, None, :, None].to(x.dtype) * inv_freq  # [B, 1, T, d/2]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_attention(q, k, v):
    """``softmax(q k^T / sqrt(d) + causal mask) v``: ``[B, H, T, dk] x2, [B, H, T, dv] -> [B, H, T, dv]``.
    Plain differentiable ops, so GradMem's second order works through it."""
    T = q.shape[2]
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, T, T]
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


class SoftmaxAttention(nn.Module):
    """The GPT's mixer: q, k ``d -> d_key``, v ``d -> d_value``, out ``d_value -> d``."""

    def __init__(self, config: MQARGPTConfig):
        super().__init__()
        d, self.n_heads, self.theta = config.hidden_size, config.num_attention_heads, config.rope_theta
        self.q_proj = nn.Linear(d, config.d_key, bias=False)
        self.k_proj = nn.Linear(d, config.d_key, bias=False)
        self.v_proj = nn.Linear(d, config.d_value, bias=False)
        self.o_proj = nn.Linear(config.d_value, d, bias=False)

    def forward(self, x, positions):
        q, k, v = (split_heads(p(x), self.n_heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotary(q, positions, self.theta), rotary(k, positions, self.theta)
        return self.o_proj(merge_heads(causal_attention(q, k, v)))


class UnifiedKVAttention(nn.Module):
    """One projection ``kv`` serves as keys (rotated) and values (as is): q, kv ``d -> d_kv``, out ``d_kv -> d``."""

    def __init__(self, config: UnifiedKVConfig):
        super().__init__()
        d, self.n_heads, self.theta = config.hidden_size, config.num_attention_heads, config.rope_theta
        self.q_proj = nn.Linear(d, config.d_kv, bias=False)
        self.kv_proj = nn.Linear(d, config.d_kv, bias=False)
        self.o_proj = nn.Linear(config.d_kv, d, bias=False)

    def forward(self, x, positions):
        q, kv = split_heads(self.q_proj(x), self.n_heads), split_heads(self.kv_proj(x), self.n_heads)
        out = causal_attention(rotary(q, positions, self.theta), rotary(kv, positions, self.theta), kv)
        return self.o_proj(merge_heads(out))


class DeltaNetMixer(nn.Module):
    """q, k ``d -> d_key`` (L2-normalised per head), v ``d -> d_value``, ``beta = sigmoid(b_proj(x))``
    ``d -> heads``, the delta rule, out ``d_value -> d``."""

    def __init__(self, config: DeltaNetConfig):
        super().__init__()
        d, self.n_heads = config.hidden_size, config.num_attention_heads
        self.chunk_size, self.impl = config.chunk_size, config.delta_rule_impl
        self.q_proj = nn.Linear(d, config.d_key, bias=False)
        self.k_proj = nn.Linear(d, config.d_key, bias=False)
        self.v_proj = nn.Linear(d, config.d_value, bias=False)
        self.b_proj = nn.Linear(d, self.n_heads, bias=False)
        self.o_proj = nn.Linear(config.d_value, d, bias=False)

    def forward(self, x, positions):
        q = F.normalize(split_heads(self.q_proj(x), self.n_heads), dim=-1)  # [B, H, T, dk]
        k = F.normalize(split_heads(self.k_proj(x), self.n_heads), dim=-1)
        v = split_heads(self.v_proj(x), self.n_heads)  # [B, H, T, dv]
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2)  # [B, H, T]
        if self.impl == "fla":
            if not fla_available(x.device):
                raise RuntimeError("delta_rule_impl='fla' needs a CUDA device and `pip install "
                                   "flash-linear-attention`; use delta_rule_impl='chunked' elsewhere.")
            out = delta_rule_fla(q, k, v, beta)
        elif self.impl == "recurrent":
            out, _ = delta_rule_recurrent(q, k, v, beta)
        else:
            out, _ = delta_rule_chunked(q, k, v, beta, chunk_size=self.chunk_size)
        return self.o_proj(merge_heads(out))


MIXERS = {"mqar_gpt": SoftmaxAttention, "mqar_deltanet": DeltaNetMixer, "mqar_unifiedkv": UnifiedKVAttention}


class Block(nn.Module):
    def __init__(self, config: MQARLMConfig):
        super().__init__()
        d = config.hidden_size
        self.mixer_norm = RMSNorm(d, config.rms_norm_eps)
        self.mixer = MIXERS[config.model_type](config)
        if config.use_ffn:
            self.ffn_norm = RMSNorm(d, config.rms_norm_eps)
            self.ffn = nn.Sequential(nn.Linear(d, config.ffn_mult * d, bias=False), nn.GELU(),
                                     nn.Linear(config.ffn_mult * d, d, bias=False))

    def forward(self, x, positions):
        x = x + self.mixer(self.mixer_norm(x), positions)
        if hasattr(self, "ffn"):
            x = x + self.ffn(self.ffn_norm(x))
        return x


# ---------------------------------------------------------------------------------------------
# Hugging Face models
# ---------------------------------------------------------------------------------------------

class MQARPreTrainedModel(PreTrainedModel):
    """Weights: normal(0, initializer_range) for linear maps and embeddings, ones for norms."""

    config_class = MQARLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False


def _check_inputs(input_ids, inputs_embeds, attention_mask, use_cache, past_key_values):
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds.")
    if use_cache or past_key_values is not None:
        raise NotImplementedError("the MQAR models keep no decoding cache: call them with use_cache=False on the "
                                  "whole sequence.")
    if attention_mask is not None and (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
        raise ValueError("attention_mask has padding before real tokens: the MQAR models need right padding "
                         "(under causal mixing, trailing pads never reach a real token).")


class MQARModel(MQARPreTrainedModel):
    """Embedding -> blocks -> final RMSNorm; ``last_hidden_state [B, T, d]``."""

    def __init__(self, config: MQARLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, use_cache=None,
                past_key_values=None, **unused) -> BaseModelOutput:
        _check_inputs(input_ids, inputs_embeds, attention_mask, use_cache, past_key_values)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, d]
        B, T = x.shape[:2]
        positions = position_ids if position_ids is not None else torch.arange(T, device=x.device).expand(B, T)
        for layer in self.layers:
            x = layer(x, positions)
        return BaseModelOutput(last_hidden_state=self.norm(x))


class MQARCausalLM(MQARPreTrainedModel):
    """``MQARModel`` plus an LM head, tied to the embedding by default (as in Zoology); ``labels`` in the
    HF convention (shifted inside)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MQARLMConfig):
        super().__init__(config)
        self.model = MQARModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, labels=None,
                use_cache=None, past_key_values=None, **unused) -> CausalLMOutput:
        hidden = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            position_ids=position_ids, use_cache=use_cache,
                            past_key_values=past_key_values).last_hidden_state
        logits = self.lm_head(hidden)  # [B, T, V]
        loss = None
        if labels is not None:  # logits[:, t] predicts labels[:, t + 1]
            shifted = logits[:, :-1].flatten(0, 1)
            shifted = shifted.float() if shifted.dtype in (torch.float16, torch.bfloat16) else shifted
            loss = F.cross_entropy(shifted, labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def state_bytes_per_context(self, context_length: int, dtype=None) -> int:
        """Bytes kept per context after reading ``context_length`` tokens: the KV cache (GPT,
        UnifiedKV) or the recurrent state (DeltaNet, independent of the length)."""
        size = torch.empty((), dtype=dtype or self.dtype).element_size()
        return self.config.state_values(context_length) * size


class MQARGPTForCausalLM(MQARCausalLM):
    config_class = MQARGPTConfig


class DeltaNetForCausalLM(MQARCausalLM):
    config_class = DeltaNetConfig


class UnifiedKVForCausalLM(MQARCausalLM):
    config_class = UnifiedKVConfig


CONFIGS = {cls.model_type: cls for cls in (MQARGPTConfig, DeltaNetConfig, UnifiedKVConfig)}
for _config_cls, _model_cls in ((MQARGPTConfig, MQARGPTForCausalLM), (DeltaNetConfig, DeltaNetForCausalLM),
                                (UnifiedKVConfig, UnifiedKVForCausalLM)):
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    AutoModelForCausalLM.register(_config_cls, _model_cls, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------

def parameter_counts(lm: MQARCausalLM) -> dict[str, int]:
    """Parameters of the blocks (what the seed counts), the embedding, final norm, LM head (0 when tied to
    the embedding), and all of them."""
    def n(module):
        return sum(p.numel() for p in module.parameters())

    tied = lm.lm_head.weight is lm.model.embed_tokens.weight
    return {"blocks": n(lm.model.layers), "embedding": n(lm.model.embed_tokens), "final_norm": n(lm.model.norm),
            "lm_head": 0 if tied else n(lm.lm_head), "total": n(lm)}


def seed_configs(vocab_size: int = 2048, **overrides) -> dict[str, MQARLMConfig]:
    """The seed's 4 layers x 64 dims x 2 heads, without FFN, for each architecture."""
    return {name: cls(vocab_size=vocab_size, **overrides) for name, cls in CONFIGS.items()}


def format_counts(configs: dict[str, MQARLMConfig]) -> str:
    lines = ["| model | blocks | embedding | final norm | LM head | total |", "|---|---|---|---|---|---|"]
    for name, config in configs.items():
        c = parameter_counts(AutoModelForCausalLM.from_config(config))
        head = f"{c['lm_head']:,}" if c["lm_head"] else "tied"
        lines.append(f"| {name} | {c['blocks']:,} | {c['embedding']:,} | {c['final_norm']:,} | {head} | {c['total']:,} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_counts(seed_configs()))
