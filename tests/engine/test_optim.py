"""One step of our SGD formulation equals a float64 reference of the original TF formula."""

import numpy as np
import torch

from dawntrain.engine.optim import make_sgd, set_lr, step_lr


def reference_steps(w0, grads, lrs, wd, batch, momentum=0.9):
    """TF MomentumOptimizer(use_nesterov=True): accum = μ·accum + g; w -= lr·g + lr·μ·accum,
    with g = summed gradient + wd·B·w and lr = schedule/B."""
    w, accum = w0.copy(), np.zeros_like(w0)
    for g_sum, lr in zip(grads, lrs):
        g = g_sum + w * wd * batch
        accum = momentum * accum + g
        w = w - (lr / batch) * g - (lr / batch) * momentum * accum
    return w


def test_sgd_matches_the_original_update_in_float64():
    torch.manual_seed(0)
    batch, wd = 512, 5e-4
    model = torch.nn.Linear(5, 3, bias=False).double()
    w0 = model.weight.detach().numpy().copy()
    opt = make_sgd(model, momentum=0.9, nesterov=True, weight_decay=wd, batch_size=batch)
    grads, lrs = [], [0.0, 0.08, 0.4]
    for lr in lrs:
        g = torch.randn(3, 5, dtype=torch.float64)
        grads.append(g.numpy().copy())
        model.weight.grad = g.clone()
        set_lr(opt, step_lr("original", lr, batch))
        opt.step()
    expected = reference_steps(w0, grads, lrs, wd, batch)
    np.testing.assert_allclose(model.weight.detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_conventions():
    assert step_lr("original", 0.4, 512) == 0.4 / 512
    assert step_lr("per_example", 0.01, 512) == 0.01
