import pytest
import torch

from inner_optimizers import INNER_UPDATES

# (name of ours, torch.optim class, keyword arguments shared by both)
CASES = [
    ("sgd", torch.optim.SGD, {}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9}),
    ("sgd", torch.optim.SGD, {"momentum": 0.8, "dampening": 0.3}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ("adam", torch.optim.Adam, {"betas": (0.8, 0.99), "eps": 1e-8}),
    ("adamw", torch.optim.AdamW, {"betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.3}),
]


@pytest.mark.parametrize("name,torch_cls,kwargs", CASES, ids=[f"{n}-{'-'.join(k)}" for n, _, k in CASES])
def test_inner_optimizer_matches_torch_optim_step_for_step(name, torch_cls, kwargs):
    torch.manual_seed(0)
    p0 = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    grads = [[torch.randn_like(p) for p in p0] for _ in range(6)]
    grads[2][0][0] = 0.0  # a zero gradient row: Adam's sqrt(v) path at v = 0
    refs = [p.clone().requires_grad_() for p in p0]
    opt = torch_cls(refs, lr=0.1, **kwargs)
    ours, state = [p.clone() for p in p0], None
    for step, g in enumerate(grads):
        for r, gi in zip(refs, g):
            r.grad = gi.clone()
        opt.step()
        extra = {"params": ours} if name == "adamw" else {}  # only AdamW's decay reads the parameters
        updates, state = INNER_UPDATES[name](g, state, step, lr=0.1, **extra, **kwargs)
        ours = [p - u for p, u in zip(ours, updates)]
        for p, r in zip(ours, refs):
            torch.testing.assert_close(p, r.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kwargs", [("sgd", {"momentum": 0.9, "nesterov": True}),
                                         ("adamw", {"betas": (0.9, 0.99), "eps": 1e-3, "weight_decay": 0.1})])
def test_a_per_sample_learning_rate_acts_per_sample(name, kwargs):
    # lr of shape [B, 1] scales sample b's update exactly as a scalar lr_b would
    torch.manual_seed(1)
    params, lr = [torch.randn(2, 3, dtype=torch.float64)], torch.tensor([[0.1], [0.5]], dtype=torch.float64)
    g = [[torch.randn(2, 3, dtype=torch.float64)] for _ in range(3)]
    state, per_sample = None, [None, None]
    for step in range(3):
        (u,), state = INNER_UPDATES[name](g[step], state, step, lr=lr, params=params, **kwargs)
        for b in range(2):
            (ub,), per_sample[b] = INNER_UPDATES[name]([g[step][0][b]], per_sample[b], step, lr=lr[b, 0].item(),
                                                       params=[params[0][b]], **kwargs)
            torch.testing.assert_close(u[b], ub, rtol=1e-13, atol=1e-15)
