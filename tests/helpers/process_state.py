"""Process-wide state a test could leave changed, read and restored without monkeypatch.

``snapshot()`` reads torch's backend precision settings, the default dtype, the thread count, grad mode, the
functions in ``torch.nn.init`` and torch's in-place init methods, and the environment. ``restore(snap)`` puts them
back. ``conftest.py`` compares a snapshot before and after every test and fails the test that changed one.

``torch_settings(**changes)`` is the context manager tests use to change such a setting for a while: pytest 9.2's
``monkeypatch.setattr`` cannot undo a change on torch's settings objects (it deletes the attribute instead of
setting it back), which left "bf16" matmuls set for the rest of the process.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch

# (name, getter, setter) of each torch setting that is process-wide
_PRECISION_OBJECTS = {
    "mkldnn.matmul.fp32_precision": lambda: torch.backends.mkldnn.matmul,
    "mkldnn.conv.fp32_precision": lambda: torch.backends.mkldnn.conv,
    "mkldnn.fp32_precision": lambda: torch.backends.mkldnn,
    "cuda.matmul.fp32_precision": lambda: torch.backends.cuda.matmul,
    "cudnn.conv.fp32_precision": lambda: torch.backends.cudnn.conv,
    "cudnn.fp32_precision": lambda: torch.backends.cudnn,
}
# set by the tools themselves, not by a test: pytest at every phase, torch's compiler on first use
_TOOLS_OWN = ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_", "_TORCHINDUCTOR_", "TRITON_")
_INIT_METHODS = ("normal_", "uniform_", "zero_", "fill_", "copy_", "random_")


def _settings() -> dict[str, Any]:
    """torch's settings as plain values (the precision objects' attributes, where this torch has them)."""
    values: dict[str, Any] = {}
    for name, owner in _PRECISION_OBJECTS.items():
        with contextlib.suppress(AttributeError, RuntimeError):
            values[name] = owner().fp32_precision
    values.update({
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "mkldnn.enabled": torch.backends.mkldnn.enabled,
        "default_dtype": torch.get_default_dtype(),
        "num_threads": torch.get_num_threads(),
        "grad_enabled": torch.is_grad_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    })
    return values


def _set(name: str, value: Any) -> None:
    """Set one setting of :func:`_settings` back to ``value``."""
    if name in _PRECISION_OBJECTS:
        _PRECISION_OBJECTS[name]().fp32_precision = value
        return
    setters = {
        "float32_matmul_precision": torch.set_float32_matmul_precision,
        "cuda.matmul.allow_tf32": lambda v: setattr(torch.backends.cuda.matmul, "allow_tf32", v),
        "cudnn.allow_tf32": lambda v: setattr(torch.backends.cudnn, "allow_tf32", v),
        "mkldnn.enabled": lambda v: setattr(torch.backends.mkldnn, "enabled", v),
        "default_dtype": torch.set_default_dtype,
        "num_threads": torch.set_num_threads,
        "grad_enabled": torch.set_grad_enabled,
        "deterministic": torch.use_deterministic_algorithms,
    }
    setters[name](value)


def snapshot() -> dict[str, Any]:
    """Everything process-wide that a test must leave as it found it."""
    return {
        "torch": _settings(),
        "nn.init": dict(vars(torch.nn.init)),
        "Tensor": {name: getattr(torch.Tensor, name) for name in _INIT_METHODS},
        "environ": {k: v for k, v in os.environ.items() if not k.startswith(_TOOLS_OWN)},
    }


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two snapshots, one line each."""
    lines = [f"torch setting {k}: {before['torch'].get(k)!r} -> {after['torch'].get(k)!r}"
             for k in before["torch"].keys() | after["torch"].keys() if before["torch"].get(k) != after["torch"].get(k)]
    lines += [f"torch.nn.init.{k} was replaced" for k in before["nn.init"]
              if after["nn.init"].get(k) is not before["nn.init"][k]]
    lines += [f"torch.Tensor.{k} was replaced" for k in before["Tensor"]
              if after["Tensor"][k] is not before["Tensor"][k]]
    env_before, env_after = before["environ"], after["environ"]
    lines += [f"environment variable {k}: {env_before.get(k)!r} -> {env_after.get(k)!r}"
              for k in sorted(env_before.keys() | env_after.keys()) if env_before.get(k) != env_after.get(k)]
    return lines


def restore(snap: dict[str, Any]) -> None:
    """Put back everything :func:`snapshot` read."""
    current = _settings()
    for name, value in snap["torch"].items():
        if current.get(name) != value:
            _set(name, value)
    for name, value in snap["nn.init"].items():
        if getattr(torch.nn.init, name, None) is not value:
            setattr(torch.nn.init, name, value)
    for name, value in snap["Tensor"].items():
        if getattr(torch.Tensor, name) is not value:
            setattr(torch.Tensor, name, value)
    for name in {k for k in os.environ if not k.startswith(_TOOLS_OWN)} - set(snap["environ"]):
        del os.environ[name]
    for name, value in snap["environ"].items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@contextlib.contextmanager
def torch_settings(**changes: Any) -> Iterator[None]:
    """Change torch settings for the ``with`` block, then set them back, e.g.
    ``with torch_settings(**{"mkldnn.matmul.fp32_precision": "bf16"}):``."""
    before = _settings()
    unknown = set(changes) - set(before) - set(_PRECISION_OBJECTS)
    if unknown:
        raise KeyError(f"unknown torch settings {sorted(unknown)}; known: {sorted(before)}")
    try:
        for name, value in changes.items():
            _set(name, value)
        yield
    finally:
        for name in changes:
            _set(name, before[name])
