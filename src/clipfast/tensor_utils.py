"""Tensor helpers that the tokenizers' and the image processors' outputs share.

Example:
    >>> import torch
    >>> data = {"input_ids": torch.tensor([[1, 2]]), "pixel_values": torch.zeros(1, 3)}
    >>> tensors_to(data, (torch.float16,), {})
    >>> data["input_ids"].dtype, data["pixel_values"].dtype
    (torch.int64, torch.float16)
"""

from __future__ import annotations

from typing import Any

from clipfast.errors import InputError


def stack_same_shape(rows: list[Any], what: str, other_fix: str = "") -> Any:
    """Stack equally shaped tensors (``torch.stack``) or arrays (``np.stack``) into one batch; rows of different
    shapes are an InputError that names the shapes and the fix (``other_fix`` adds one)."""
    shapes = {tuple(row.shape) for row in rows}
    if len(shapes) > 1:
        raise InputError(f"Cannot stack {what} of different shapes {sorted(shapes)} into one batch; keep "
                         f"do_center_crop=True (or resize to a fixed {{'height', 'width'}}){other_fix}.")
    if hasattr(rows[0], "detach"):
        import torch

        return torch.stack(list(rows))
    import numpy as np

    return np.stack(rows)


def tensors_to(data: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``Tensor.to(*args, **kwargs)`` on the floating tensors of the mapping ``data`` and only the device part on the
    others (``model(**inputs.to("cuda", torch.float16))`` must keep integer ids), in place."""
    import torch

    device = kwargs.get("device")
    if device is None and args and not isinstance(args[0], torch.dtype):
        if not isinstance(args[0], (str, int, torch.device)):
            raise InputError(f".to() takes a device and/or a dtype, got {args[0]!r}.")
        device = args[0]
    for key, value in list(data.items()):
        if isinstance(value, torch.Tensor) and torch.is_floating_point(value):
            data[key] = value.to(*args, **kwargs)
        elif isinstance(value, torch.Tensor) and device is not None:
            data[key] = value.to(device=device, non_blocking=kwargs.get("non_blocking", False))
