"""The ``discograd::*`` operators behind the fast paths: schemas, shape functions, autograd.

Each operator takes a 2-d contiguous tensor of rows (categories last) and a one-element int64
``seed`` tensor drawn from a ``torch.Generator``. Device kernels are registered elsewhere: CPU by
the C++ library (``gumbel_cpu.cpp``), CUDA by :mod:`discograd.kernels.triton_gs`. Being real
operators with fake (meta) implementations and registered autograd, they trace under
``torch.compile(fullgraph=True)`` without graph breaks.

Operators:
    ``gumbel_softmax(x, seed, tau, tau_rows, check=False) -> y`` soft sample, saved for
    backward; ``check``: raise ValueError when a row's logits are invalid (NaN, +inf, all
    masked), which the kernel finds as it goes (its softmax normalizer leaves [1/2, inf)).
    ``gumbel_softmax_hard(x, seed, tau, tau_rows, check=False) -> (one_hot, y)``: one-hot of
    arg max(x + G) forward, the gradient of ``y`` backward (straight-through).
    ``gumbel_softmax_backward(grad, y, tau, tau_rows, tau_grad) -> (grad_x, grad_tau_rows)``.
    ``gumbel_argmax(x, seed) -> index`` and ``gumbel_noise(seed, rows, cols, dtype) -> G``.

``tau_rows`` (optional) holds one temperature per row (float32, or float64 for float64 rows)
and overrides the scalar ``tau``; ``grad_tau_rows`` is empty unless ``tau_grad``.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch
from torch import Tensor

NAMESPACE = "discograd"
_SCHEMAS = {
    "gumbel_softmax": (
        "(Tensor x, Tensor seed, float tau, Tensor? tau_rows, bool check=False) -> Tensor"
    ),
    "gumbel_softmax_hard": (
        "(Tensor x, Tensor seed, float tau, Tensor? tau_rows, bool check=False) -> (Tensor, Tensor)"
    ),
    "gumbel_softmax_backward": (
        "(Tensor grad, Tensor y, float tau, Tensor? tau_rows, bool tau_grad) -> (Tensor, Tensor)"
    ),
    "gumbel_argmax": "(Tensor x, Tensor seed) -> Tensor",
    "gumbel_noise": "(Tensor seed, SymInt rows, SymInt cols, ScalarType dtype) -> Tensor",
    "isa_level": "(Tensor dummy) -> int",
}

_lock = threading.Lock()
_lib: Optional[torch.library.Library] = None


def define() -> None:
    """Define the operators once per process (idempotent, thread safe)."""
    global _lib
    if _lib is not None:
        return
    with _lock:
        if _lib is not None:
            return
        lib = torch.library.Library(NAMESPACE, "FRAGMENT")
        for name, schema in _SCHEMAS.items():
            lib.define(name + schema)
        _register_fakes()
        _register_autograd()
        _lib = lib


def _q(name: str) -> str:
    return f"{NAMESPACE}::{name}"


def _register_fakes() -> None:
    @torch.library.register_fake(_q("gumbel_softmax"))
    def _(x, seed, tau, tau_rows, check=False):
        return torch.empty_like(x)

    @torch.library.register_fake(_q("gumbel_softmax_hard"))
    def _(x, seed, tau, tau_rows, check=False):
        return torch.empty_like(x), torch.empty_like(x)

    @torch.library.register_fake(_q("gumbel_softmax_backward"))
    def _(grad, y, tau, tau_rows, tau_grad):
        acc = torch.float64 if y.dtype == torch.float64 else torch.float32
        n = y.shape[0] if tau_grad else 0
        return torch.empty_like(y), y.new_empty((n,), dtype=acc)

    @torch.library.register_fake(_q("gumbel_argmax"))
    def _(x, seed):
        return x.new_empty((x.shape[0],), dtype=torch.int64)

    @torch.library.register_fake(_q("gumbel_noise"))
    def _(seed, rows, cols, dtype):
        return seed.new_empty((rows, cols), dtype=dtype)


def _setup(ctx, inputs, output) -> None:
    x, seed, tau, tau_rows = inputs[:4]
    soft = output[1] if isinstance(output, (tuple, list)) else output
    ctx.tau = tau
    ctx.has_tau_rows = tau_rows is not None
    ctx.save_for_backward(soft, tau_rows)


def _differentiable_backward(grad: Tensor, soft: Tensor, tau: float, tau_rows, tau_grad: bool):
    """The backward formula in torch ops, for double backward (``create_graph=True``).

    The saved ``soft`` keeps its link to the forward operator, so differentiating this again
    reaches the logits (and calls the fused backward once more).
    """
    acc = torch.float64 if soft.dtype == torch.float64 else torch.float32
    y, g = soft.to(acc), grad.to(acc)
    grad_s = y * (g - (g * y).sum(-1, keepdim=True))
    if tau_rows is None:
        return (grad_s / tau).to(soft.dtype), None
    inv_tau = 1.0 / tau_rows
    grad_x = (grad_s * inv_tau.unsqueeze(-1)).to(soft.dtype)
    if not tau_grad:
        return grad_x, None
    positive = y > 0
    log_y = torch.where(positive, torch.log(torch.where(positive, y, torch.ones_like(y))), 0.0)
    return grad_x, -(grad_s * log_y).sum(-1) * inv_tau


def _backward_common(ctx, grad: Tensor):
    soft, tau_rows = ctx.saved_tensors
    tau_grad = ctx.has_tau_rows and ctx.needs_input_grad[3]
    if torch.is_grad_enabled():
        grad_x, grad_tau = _differentiable_backward(grad, soft, ctx.tau, tau_rows, tau_grad)
    else:
        grad_x, grad_tau = torch.ops.discograd.gumbel_softmax_backward(
            grad.to(soft.dtype), soft, ctx.tau, tau_rows, tau_grad
        )
    return grad_x, None, None, (grad_tau if tau_grad else None), None


def _backward_soft(ctx, grad: Tensor):
    return _backward_common(ctx, grad)


def _backward_hard(ctx, grad_hard: Optional[Tensor], grad_soft: Optional[Tensor]):
    # The one-hot passes its gradient to the soft sample (straight-through); the soft output
    # itself is internal, but a gradient reaching it is added for completeness.
    if grad_hard is None:
        grad = grad_soft
    elif grad_soft is None:
        grad = grad_hard
    else:
        grad = grad_hard + grad_soft
    if grad is None:
        return None, None, None, None, None
    return _backward_common(ctx, grad)


def _register_autograd() -> None:
    torch.library.register_autograd(_q("gumbel_softmax"), _backward_soft, setup_context=_setup)
    torch.library.register_autograd(_q("gumbel_softmax_hard"), _backward_hard, setup_context=_setup)
