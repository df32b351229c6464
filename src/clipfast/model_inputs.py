"""Checks of the model's inputs where they enter (token ids, masks, pixels), each failing with one clear error.

The checks read shapes and dtypes only, plus one ``aminmax`` per text batch for the id range; the value check is
skipped while a graph is captured (tracing, compiling, exporting), where branching on values is not allowed.
Exception types stay those a transformers user catches: ``ValueError`` for bad values (``InputError``),
``TypeError`` for wrong types, ``IndexError`` for ids outside the vocabulary (what torch raises there).
"""

from __future__ import annotations

from typing import Any

import torch

from clipfast.errors import InputError, InputIndexError, InputTypeError  # noqa: F401  (re-exported)
from clipfast.kernels import graph_capture

_ID_DTYPES = (torch.long, torch.int)  # what nn.Embedding takes


def _kind(value: Any) -> str:
    """``value``'s type as a user knows it (``list``, ``numpy.ndarray``)."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__name__}"


def require_tensor(name: str, value: Any, hint: str) -> torch.Tensor:
    """``value`` if it is a tensor, else a TypeError that says how to get one."""
    if not isinstance(value, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {_kind(value)}. {hint}")
    return value


TOKENIZER_FIX = ("The ids do not come from this model's tokenizer: load tokenizer and model from the same checkpoint "
                 "(after tokenizer.add_tokens, call model.resize_token_embeddings(len(tokenizer))).")


def check_token_ids(name: str, ids: Any, table_size: int | None, table: str, fix: str = TOKENIZER_FIX) -> torch.Tensor:
    """Integer ids, at least one per row, every one in ``[0, table_size)`` (the rows of an embedding table called
    ``table``); returned as given."""
    ids = require_tensor(name, ids, "Tokenize with return_tensors='pt' (or wrap the ids in torch.tensor(...)).")
    if ids.dtype not in _ID_DTYPES:
        raise InputTypeError(f"{name} must hold integer token ids (torch.long or torch.int), got {ids.dtype}. "
                             f"Pass the tokenizer's ids, or convert with {name}.long().")
    if ids.dim() == 0 or 0 in ids.shape:
        raise InputError(f"{name} is empty (shape {tuple(ids.shape)}): pass at least one sequence of at least one "
                         "token, shaped (batch, sequence length).")
    if table_size is not None and not graph_capture():
        low, high = torch.stack(torch.aminmax(ids)).tolist()  # one device sync
        if low < 0 or high >= table_size:
            bad = low if low < 0 else high
            raise InputIndexError(
                f"{name} holds {bad}, outside [0, {table_size}) ({table}={table_size}). {fix}")
    return ids


def check_text_inputs(input_ids: Any, attention_mask: Any, position_ids: Any, vocab_size: int | None,
                      max_positions: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Where text enters the model: ids as (B, T) (1-D ids are one sequence, more dimensions are flattened into the
    batch, as the reference does), each in the vocabulary, and their padding mask; position ids in their table."""
    if input_ids is None:
        raise ValueError("You have to specify input_ids (token ids from CLIPTokenizer).")
    input_ids = check_token_ids("input_ids", input_ids, vocab_size, "vocab_size")
    input_ids = input_ids.view(-1, input_ids.shape[-1])  # (B, T)
    batch, length = input_ids.shape
    if position_ids is not None:
        fix = "Leave position_ids out: the default is 0, 1, ..., T-1."
        check_token_ids("position_ids", position_ids, max_positions, "max_position_embeddings", fix=fix)
        rows = position_ids.shape[0] if position_ids.dim() == 2 else 1  # (T,) applies to every row, as (1, T)
        if position_ids.dim() > 2 or position_ids.shape[-1] != length or rows not in (1, batch):
            raise InputError(f"position_ids has shape {tuple(position_ids.shape)} but input_ids has shape "
                             f"({batch}, {length}): give one position per token, shaped (1 or batch, length). {fix}")
    return input_ids, check_text_mask(attention_mask, batch, length)


def check_sequence_length(length: int, max_positions: int) -> None:
    """The reference's error for sequences longer than the position table, with the fix in the message."""
    if length > max_positions:
        raise InputError(
            f"Sequence length must be less than max_position_embeddings (got `sequence length`: {length} and "
            f"max_position_embeddings: {max_positions}). Tokenize with truncation=True (and max_length="
            f"{max_positions}) to cut longer texts.")


def check_text_mask(mask: Any, batch: int, length: int) -> torch.Tensor | None:
    """A (B, T) padding mask for (B, T) ids, or a (1, T) one, which applies to every row (it broadcasts in the
    reference); any other shape is an error rather than a silently wrong or dropped mask."""
    if mask is None:
        return None
    mask = require_tensor("attention_mask", mask, "Pass the attention_mask the tokenizer returned with "
                                                  "return_tensors='pt'.")
    if mask.dim() == 1 and batch == 1:
        mask = mask[None]  # one sequence given as 1-D ids and a 1-D mask
    if mask.dim() != 2 or mask.shape[1] != length or mask.shape[0] not in (1, batch):
        raise InputError(f"attention_mask has shape {tuple(mask.shape)} but input_ids has shape ({batch}, {length}); "
                         "pass the attention_mask the tokenizer returned with these input_ids, shaped (batch, "
                         "sequence length).")
    if mask.is_complex():
        raise InputTypeError(f"attention_mask must hold 0/1 (or booleans), got {mask.dtype}.")
    return mask


def check_pixel_values(pixels: Any, channels: int, image_size: int, patch_size: int,
                       interpolate_pos_encoding: bool) -> torch.Tensor:
    """(B, C, H, W) real pixels, at the model's size unless positions are interpolated."""
    pixels = require_tensor("pixel_values", pixels, "Prepare images with CLIPImageProcessor(images, "
                                                    "return_tensors='pt') (or convert an array with torch.from_numpy).")
    if pixels.dim() != 4 or pixels.shape[1] != channels:
        raise InputError(f"pixel_values must have shape (batch, {channels}, height, width), got "
                         f"{tuple(pixels.shape)}. Use CLIPImageProcessor to prepare images.")
    batch, _, height, width = pixels.shape
    if batch == 0:
        raise InputError("pixel_values holds no images (batch size 0): pass at least one image.")
    if pixels.is_complex():
        raise InputTypeError(f"pixel_values must hold real numbers (the processor's float32), got {pixels.dtype}.")
    if not interpolate_pos_encoding and (height != image_size or width != image_size):
        raise InputError(
            f"Input image size ({height}*{width}) doesn't match model ({image_size}*{image_size}). "
            "Resize the images to the model's size or pass interpolate_pos_encoding=True.")
    if height < patch_size or width < patch_size:
        raise InputError(f"pixel_values of {height}x{width} pixels hold no whole {patch_size}x{patch_size} patch; "
                         f"pass images of at least {patch_size}x{patch_size} pixels.")
    return pixels


def check_loss_pairs(texts: int, images: int) -> None:
    """``return_loss=True`` pairs text i with image i: both counts must be equal."""
    if texts != images:
        raise InputIndexError(f"return_loss=True needs one text per image (the contrastive loss pairs text i with "
                              f"image i), got {texts} texts and {images} images. Pass as many of each, or call "
                              "without return_loss for the similarity logits alone.")


def check_labels(labels: Any, num_labels: int, single_label: bool) -> torch.Tensor:
    """Classification labels: a tensor; integer class indices in ``[0, num_labels)`` for single-label
    classification."""
    labels = require_tensor("labels", labels, "Pass the labels as a tensor, e.g. torch.tensor([0, 2, 1]).")
    if single_label and labels.dtype in _ID_DTYPES and labels.numel() and not graph_capture():
        low, high = torch.stack(torch.aminmax(labels)).tolist()
        if low < 0 or high >= num_labels:
            raise InputIndexError(f"labels holds class {low if low < 0 else high}, outside [0, {num_labels}) "
                                  f"(num_labels={num_labels}): pass class indices, or build the model with the "
                                  "right num_labels.")
    return labels
