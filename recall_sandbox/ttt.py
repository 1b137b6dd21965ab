"""TTT: an associative memory whose state is trained online by a differentiable inner optimiser.

The state theta_t parameterises f_theta(x) = x W (``model='linear'``) or x W + gelu(x A) B (``model='mlp'``).
At step t it takes one optimiser step on the windowed p-norm regression loss over the last C pairs,

    L_t(theta) = sum_{a=0}^{min(t, C-1)} omega_a |f_theta(k_{t-a}) - v_{t-a}|_p^p,
    theta_t = theta_{t-1} - U(grad L_t(theta_{t-1}); eta_t),

where U is SGD (with momentum), Adam or AdamW from ``inner_optimizers`` (a pure function, so theta_t is
differentiable in everything before it). The inner learning rate eta_t is a learned scalar, or a function
of the key, eta_t = eta_max sigmoid(k_t a + b). The window weights omega_a > 0, the initial state theta_0
and eta's parameters are meta-learned by backpropagation through time of an outer recall loss
(``evaluate.train``). With C = 1, p = 2, SGD, W_0 = 0 and eta = beta / 2, this is DeltaNet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cli import check_config, option
from inner_optimizers import INNER_UPDATES

from .data import context_window
from .linear_rnns import read_matrix

MODELS = ("linear", "mlp")
LR_MODES = ("scalar", "key")


@dataclass
class TTTConfig:
    d_key: int = option(20, "key dimension")
    d_value: int = option(20, "value dimension")
    context_size: int = option(5, "pairs in the inner loss window (C)")
    model: str = option("linear", "f(x) = xW (linear) or xW + gelu(xA)B (mlp)", choices=MODELS)
    hidden: int = option(16, "hidden width of the mlp")
    optimizer: str = option("sgd", "inner optimiser", choices=tuple(INNER_UPDATES))
    inner_lr: float = option(0.1, "initial inner learning rate (at a = 0 for lr_mode=key)")
    lr_mode: str = option("scalar", "inner lr: a learned scalar, or eta_max sigmoid(k a + b) of the key",
                          choices=LR_MODES)
    lr_max: float = option(1.0, "eta_max of lr_mode=key")
    momentum: float = option(0.0, "SGD momentum")
    nesterov: bool = option(False, "SGD Nesterov momentum")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam/AdamW betas")
    eps: float = option(1e-8, "Adam/AdamW epsilon")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    p: float = option(2.0, "exponent of the regression loss |f(k) - v|_p^p")

    def __post_init__(self):
        self.betas = tuple(self.betas)
        check_config("TTTConfig", [
            (self.model in MODELS, f"model must be one of {MODELS}"),
            (self.optimizer in INNER_UPDATES, f"optimizer must be one of {tuple(INNER_UPDATES)}"),
            (self.lr_mode in LR_MODES, f"lr_mode must be one of {LR_MODES}"),
            (self.context_size >= 1 and self.hidden >= 1, "context_size and hidden must be >= 1"),
            (self.inner_lr > 0, "inner_lr must be > 0"),
            (self.lr_mode != "key" or self.inner_lr < self.lr_max,
             "lr_mode='key' needs inner_lr < lr_max (the sigmoid's range is (0, lr_max))"),
            (self.p >= 1, "p must be >= 1"),
            (self.optimizer == "sgd" or (self.momentum == 0 and not self.nesterov),
             "momentum and nesterov belong to optimizer='sgd'"),
            (self.optimizer == "adamw" or self.weight_decay == 0, "weight_decay belongs to optimizer='adamw'"),
        ])


class TTT(nn.Module):
    """The memory of the module docstring; state = (inner parameters, optimiser state, step)."""

    def __init__(self, config: TTTConfig, *, dtype=torch.float32):
        super().__init__()
        c = self.config = config
        # theta_0: W_0 = 0 like the linear RNNs; the MLP's A_0 random (with A = B = 0 neither would move)
        init = [torch.zeros(c.d_key, c.d_value, dtype=dtype)]
        if c.model == "mlp":
            init += [torch.randn(c.d_key, c.hidden, dtype=dtype) / math.sqrt(c.d_key),
                     torch.zeros(c.hidden, c.d_value, dtype=dtype)]
        self.init_params = nn.ParameterList(init)
        self.log_window_weights = nn.Parameter(torch.zeros(c.context_size, dtype=dtype))  # omega_a = exp(.), 1 at start
        if c.lr_mode == "scalar":
            self.log_lr = nn.Parameter(torch.tensor(math.log(c.inner_lr), dtype=dtype))
        else:
            self.lr_proj = nn.Linear(c.d_key, 1, dtype=dtype)
            nn.init.zeros_(self.lr_proj.weight)
            nn.init.constant_(self.lr_proj.bias, math.log(c.inner_lr / (c.lr_max - c.inner_lr)))

    def window_weights(self) -> torch.Tensor:
        return self.log_window_weights.exp()

    def inner_lr(self, key: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 1]``: eta_t for each sample, from its key ``[B, d_key]``."""
        if self.config.lr_mode == "scalar":
            return self.log_lr.exp().expand(key.shape[0], 1, 1)
        return self.config.lr_max * torch.sigmoid(self.lr_proj(key)).unsqueeze(-1)

    def initial_state(self, batch_size: int, like: torch.Tensor):
        """theta_0 expanded over the batch (``like`` is unused: theta_0 has the module's dtype)."""
        params = [p.unsqueeze(0).expand(batch_size, *p.shape) for p in self.init_params]
        return params, None, 0

    def read(self, state, queries: torch.Tensor) -> torch.Tensor:
        """f_theta(queries): ``[B, n, d_key] -> [B, n, d_value]``."""
        params = state[0]
        out = read_matrix(params[0], queries)
        if self.config.model == "mlp":
            out = out + torch.nn.functional.gelu(queries @ params[1]) @ params[2]
        return out

    def inner_loss(self, params, keys: torch.Tensor, values: torch.Tensor, t: int) -> torch.Tensor:
        """``[B]``: L_t(theta) over the context window ending at step t."""
        k, v, ages = context_window(keys, values, t, self.config.context_size)
        errors = (self.read((params,), k) - v).abs().pow(self.config.p).sum(-1)  # [B, n]
        return (errors * self.window_weights()[ages]).sum(-1)

    def write(self, state, keys, values, t):
        """One inner optimiser step. When the outer graph is wanted (grad enabled) the inner gradient keeps
        its graph (second order); under ``torch.no_grad()`` it is taken and the new state detached."""
        params, opt_state, step = state
        c, outer = self.config, torch.is_grad_enabled()
        with torch.enable_grad():
            if not outer or not any(p.requires_grad for p in params):
                params = [p.detach().requires_grad_() for p in params]
            grads = torch.autograd.grad(self.inner_loss(params, keys, values, t).sum(), params, create_graph=outer)
            lr = self.inner_lr(keys[:, t])
            updates, opt_state = INNER_UPDATES[c.optimizer](grads, opt_state, step, lr=lr,
                                                            **self._optimizer_kwargs(params))
        new = [p - u for p, u in zip(params, updates)]
        if not outer:
            new = [p.detach() for p in new]
            opt_state = _detach(opt_state)
        return new, opt_state, step + 1

    def _optimizer_kwargs(self, params) -> dict:
        c = self.config
        if c.optimizer == "sgd":
            return {"momentum": c.momentum, "nesterov": c.nesterov}
        if c.optimizer == "adam":
            return {"betas": c.betas, "eps": c.eps}
        return {"betas": c.betas, "eps": c.eps, "weight_decay": c.weight_decay, "params": params}


def _detach(tree):
    """The optimiser state (None, tensors, or lists/tuples of them) cut from the graph."""
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    return type(tree)(_detach(x) for x in tree)
