"""Activation functions by ``config.hidden_act`` name: every entry of transformers' table, with its arithmetic.

``prelu`` and ``leaky_relu`` are modules (prelu has a weight, stored as ``mlp.activation_fn.weight`` in
checkpoints); the others are wrapped in :class:`Activation`, so they show in ``named_modules()`` and take hooks.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI's GELU approximation, ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation written out, in the reference's order of operations (``gelu_new`` & co.)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _laplace(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    """MEGA's Laplace activation, the Gaussian CDF at ``(x - mu) / sigma``."""
    return 0.5 * (1.0 + torch.erf((x - mu).div(sigma * math.sqrt(2.0))))


# every hidden_act of transformers' table (ACT2CLS), with its arithmetic; prelu and leaky_relu are modules (prelu
# has a weight, stored as "mlp.activation_fn.weight" in checkpoints)
ACT2FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_python": lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),
    "gelu_new": _tanh_gelu,
    "gelu_accurate": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3)))),
    "gelu_python_tanh": lambda x: x * 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(
        x, 3.0)))),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
    "laplace": _laplace,
}
_ACT_MODULES: dict[str, Callable[[], nn.Module]] = {"prelu": nn.PReLU, "leaky_relu": nn.LeakyReLU}


class Activation(nn.Module):
    """An activation of ``ACT2FN`` as a module, as the reference's ``mlp.activation_fn`` is: it shows in
    ``named_modules()`` and takes hooks (activation capture in interpretability work)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = ACT2FN[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` in config.hidden_act."""
    if name in _ACT_MODULES:
        return _ACT_MODULES[name]()
    if name not in ACT2FN:
        raise ValueError(f"hidden_act={name!r} is not supported; choose one of "
                         f"{sorted([*ACT2FN, *_ACT_MODULES])}.")
    return Activation(name)

