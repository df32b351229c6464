"""Model outputs: dataclasses that also behave as ordered dicts and tuples (None fields are skipped), like
transformers' ``ModelOutput``. Each class is a pytree node, so torch.export and torch.compile can return it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

class ModelOutput(OrderedDict):
    """Base of every output: attribute, key (``out["text_embeds"]``) and index (``out[0]``) access."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each output class is a pytree node (as the reference's are), so torch.export and torch.compile can
        return it: its non-None fields are the children."""
        super().__init_subclass__(**kwargs)
        import torch.utils._pytree as pytree

        pytree.register_pytree_node(
            cls, lambda out: (list(out.values()), list(out.keys())),
            lambda values, keys: cls(**dict(zip(keys, values))),
            # the name saved programs (torch.export.save) refer to: where these classes lived first
            serialized_type_name=f"clipfast.modeling.{cls.__name__}")

    def __post_init__(self) -> None:
        class_fields = fields(self)  # type: ignore[arg-type]
        first = getattr(self, class_fields[0].name)
        pairs = _key_value_pairs(first) if all(getattr(self, f.name) is None for f in class_fields[1:]) else None
        if pairs is not None:  # built from a mapping or (key, value) pairs, as the reference's outputs can be
            super().__setattr__(class_fields[0].name, None)
            for key, value in pairs:
                if value is not None:
                    self[key] = value
            return
        for f in class_fields:
            value = getattr(self, f.name)
            if value is not None:
                super().__setitem__(f.name, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.keys() and value is not None:  # a field that is set stays in sync; a None one stays out
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def _immutable(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"A {type(self).__name__} keeps its fields: pop, update, setdefault and del are not "
                        "supported (as in transformers); build a new output or a dict instead.")

    pop = update = setdefault = __delitem__ = _immutable  # type: ignore[assignment]

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self) -> Any:
        return type(self), tuple(getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields, in declaration order."""
        return tuple(self[k] for k in self.keys())


def _key_value_pairs(value: Any) -> list[tuple[str, Any]] | None:
    """``value`` as (key, value) pairs when it is a mapping or an iterable of (str, value) pairs, else None (then
    it is the first field's value). Tensors and tuples of tensors are values."""
    if value is None or isinstance(value, torch.Tensor):
        return None
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, Iterator):  # a generator of pairs: read once
        value = list(value)
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str) for item in value):
        return [tuple(item) for item in value]  # type: ignore[misc]
    return None


@dataclass(repr=False, eq=False)
class BaseModelOutput(ModelOutput):
    """Encoder output."""

    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(repr=False, eq=False)
class BaseModelOutputWithPooling(ModelOutput):
    """Tower output: the sequence and one pooled vector per input."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(repr=False, eq=False)
class CLIPTextModelOutput(ModelOutput):
    """Output of ``CLIPTextModelWithProjection``: ``text_embeds`` is projected, not normalized."""

    text_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(repr=False, eq=False)
class CLIPVisionModelOutput(ModelOutput):
    """Output of ``CLIPVisionModelWithProjection``: ``image_embeds`` is projected, not normalized."""

    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(repr=False, eq=False)
class CLIPOutput(ModelOutput):
    """Output of ``CLIPModel``: similarity logits, normalized embeddings and both towers' outputs."""

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        """As the base, with the nested tower outputs turned into tuples too."""
        return tuple(self[k].to_tuple() if k.endswith("_model_output") else self[k] for k in self.keys())


@dataclass(repr=False, eq=False)
class ImageClassifierOutput(ModelOutput):
    """Output of ``CLIPForImageClassification``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


__all__ = ["ModelOutput", "BaseModelOutput", "BaseModelOutputWithPooling", "CLIPOutput", "CLIPTextModelOutput",
           "CLIPVisionModelOutput", "ImageClassifierOutput"]
