"""The CLIP model, the math top to bottom: helpers, attention (eager | sdpa | flash), MLP, layers, towers, models.

Module and parameter names equal the checkpoint keys of transformers' CLIP (the historical ``pre_layrnorm``
included), so loading is a strict state-dict load. Below this file: ``loading`` (the ``PreTrainedModel`` base with
transformers' model API), ``outputs``, ``activations``, ``model_inputs`` (checks where inputs enter) and ``kernels``
(fast paths: a layer's ``fast``, chosen when its setting changes, answers None when the reference math must run).
Attention has one switch, ``config._attn_implementation``: "eager" (the reference), "sdpa" (the default) or
"flash_attention_2" (fp16/bf16 on CUDA).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from clipfast import kernels
from clipfast.activations import ACT2FN, Activation, activation, quick_gelu  # noqa: F401  (importable from here too)
from clipfast.configuration import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from clipfast.kernels import graph_capture, hooked, patch_embedding_as_matmul  # noqa: F401  (as above)
from clipfast.loading import ATTN_IMPLEMENTATIONS, PreTrainedModel, ignore_extra_kwargs, no_init_weights  # noqa: F401
from clipfast.model_inputs import check_loss_pairs, check_pixel_values, check_sequence_length, check_text_inputs
from clipfast.outputs import (BaseModelOutput, BaseModelOutputWithPooling, CLIPOutput, CLIPTextModelOutput,
                              CLIPVisionModelOutput, ImageClassifierOutput, ModelOutput)

# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _flag(value: Any, default: bool) -> bool:
    """An output flag from the call, else from the config (any truthy value counts)."""
    return bool(default if value is None else value)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension, without epsilon (as the reference)."""
    return x / x.norm(p=2, dim=-1, keepdim=True)


def _position_ids(length: int) -> torch.Tensor:
    """``arange(length)`` as (1, length); on the CPU when models are built on the meta device for loading, where
    arange would import torch's symbolic-shape machinery (a third of a second) for a buffer loading replaces."""
    device = "cpu" if torch.get_default_device().type == "meta" else None
    return torch.arange(length, device=device).expand((1, -1))


def _is_right_padded(mask: torch.Tensor) -> bool:
    """True when every row of a (B, T) 0/1 mask is ones followed by zeros."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def _expand_padding_mask(mask: torch.Tensor, dtype: torch.dtype, tgt_len: int) -> torch.Tensor:
    """(B, S) 0/1 -> (B, 1, T, S) additive float mask: 0 where kept, ``finfo(dtype).min`` at padded keys."""
    batch, src_len = mask.shape
    expanded = mask[:, None, None, :].expand(batch, 1, tgt_len, src_len).to(dtype)
    inverted = 1.0 - expanded
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


def _causal_mask(batch: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(B, 1, T, T) additive causal mask: ``finfo(dtype).min`` above the diagonal, 0 elsewhere."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None].expand(batch, 1, length, length)


def _combine_masks(attention_mask: torch.Tensor | None, causal_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Sum the additive padding and causal masks (either may be absent), as transformers 4.x does."""
    if attention_mask is not None and causal_mask is not None:
        return attention_mask + causal_mask
    return attention_mask if attention_mask is not None else causal_mask


# ---------------------------------------------------------------------------------------------------------------
# Attention functions, one per backend. Each takes (B, H, T, D) query/key/value, the padding mask and the causal
# mask as the text tower gives them, and returns the output (B, H, T, D) and the probabilities (eager only).

def eager_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, causal_mask: torch.Tensor | None,
                    scale: float, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference attention: ``softmax_fp32(q kᵀ · scale + mask) v``; masks are additive (B, 1, T, T)."""
    weights = torch.matmul(query, key.transpose(-1, -2)) * scale  # (B, H, T, T)
    mask = _combine_masks(attention_mask, causal_mask)
    if mask is not None:
        weights = weights + mask
    # softmax in float32 even for fp16/bf16 inputs, then back: what transformers >= 4.48 does
    probs = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    return torch.matmul(probs, value), probs


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, causal_mask: torch.Tensor | None,
                   scale: float, dropout: float) -> tuple[torch.Tensor, None]:
    """PyTorch's fused attention. Without padding, the kernel's own causal path replaces the causal mask (same
    math, faster)."""
    if attention_mask is None and causal_mask is not None:
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scale,
                                             is_causal=bool(query.shape[-2] > 1))  # a traced size is a tensor
        return out, None
    mask = _combine_masks(attention_mask, causal_mask)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale), None


def flash_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, causal_mask: torch.Tensor | None,
                    scale: float, dropout: float) -> tuple[torch.Tensor, None]:
    """FlashAttention for fp16/bf16 CUDA tensors: the ``flash_attn`` package if installed, else PyTorch's kernel.

    ``attention_mask`` is here the 2-D (B, T) padding mask of the text tower (1 = token). CLIP pads on the right
    and its text attention is causal, so a valid query never sees a padded key: the causal kernel alone is exact
    on real tokens.
    """
    if query.device.type != "cuda" or query.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            "attn_implementation='flash_attention_2' runs only on a CUDA GPU in float16 or bfloat16 (got "
            f"{query.dtype} on {query.device.type}). Load with torch_dtype=torch.bfloat16 and move the model to "
            "'cuda', or use attn_implementation='sdpa'.")
    is_causal = causal_mask is not None
    if attention_mask is not None and not _is_right_padded(attention_mask):
        length = query.shape[-2]  # left padding: the flash kernels cannot mask it, the additive masks can
        mask = _combine_masks(_expand_padding_mask(attention_mask, query.dtype, length),
                              _causal_mask(len(query), length, query.dtype, query.device) if is_causal else None)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                              scale=scale), None
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        flash_attn_func = None
    if flash_attn_func is not None:
        # flash_attn takes (B, T, H, D)
        out = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                              dropout_p=dropout, softmax_scale=scale, causal=is_causal)
        return out.transpose(1, 2), None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scale,
                                              is_causal=is_causal), None


ATTENTION_FUNCTIONS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor | None]]] = {
    "eager": eager_attention, "sdpa": sdpa_attention, "flash_attention_2": flash_attention}


# ---------------------------------------------------------------------------------------------------------------
# Embeddings


class CLIPTextEmbeddings(nn.Module):
    """Token embedding plus learned absolute position embedding (no scaling, no norm)."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.register_buffer("position_ids", _position_ids(config.max_position_embeddings), persistent=False)

    def forward(self, input_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[-1] if input_ids is not None else inputs_embeds.shape[-2]  # type: ignore[union-attr]
        check_sequence_length(length, self.position_embedding.weight.shape[0])
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(input_ids)
        if position_ids is None:
            # the first T rows of the table: identical to a lookup at arange(T), without the gather
            return inputs_embeds + self.position_embedding.weight[:length]
        return inputs_embeds + self.position_embedding(position_ids)


class CLIPVisionEmbeddings(nn.Module):
    """Patchify with a bias-free conv, prepend the class token, add (optionally interpolated) positions."""

    # the patch convolution as one matmul; with MKL-packed weights when packing is on (see PreTrainedModel)
    fast_paths = (kernels.patch_matmul, kernels.packed_patches)

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(self.embed_dim))  # set by the init rules or the checkpoint
        self.patch_embedding = nn.Conv2d(config.num_channels, self.embed_dim, kernel_size=self.patch_size,
                                         stride=self.patch_size, bias=False)
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)
        self.register_buffer("position_ids", _position_ids(self.num_positions), persistent=False)
        self.cpu_weight_packing, self.fast = False, self.fast_paths[0]

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Position table resized (bicubic, no antialias) to the patch grid of a ``height`` x ``width`` input."""
        table = self.position_embedding.weight.unsqueeze(0)  # (1, 1 + N, D)
        num_patches, num_positions = embeddings.shape[1] - 1, table.shape[1] - 1
        if not torch.jit.is_tracing() and num_patches == num_positions and height == width:
            return table
        dim = embeddings.shape[-1]
        side = int(num_positions**0.5)
        grid = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, s, s)
        grid = F.interpolate(grid, size=(height // self.patch_size, width // self.patch_size), mode="bicubic",
                             align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)  # (1, h*w, D), row-major
        return torch.cat((table[:, :1], grid), dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        pixel_values = check_pixel_values(pixel_values, self.config.num_channels, self.image_size, self.patch_size,
                                          interpolate_pos_encoding)
        batch, _, height, width = pixel_values.shape
        # casting here is what lets a bf16/fp16 model take the processor's float32 pixels
        pixel_values = pixel_values.to(dtype=self.patch_embedding.weight.dtype)
        patches = self.fast(self, pixel_values) if self.fast is not None else None  # (B, h*w, D)
        if patches is None:  # the reference (and any convolution swapped in by the user, or hooked)
            patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, h*w, D)
        embeddings = torch.cat([self.class_embedding.expand(batch, 1, -1), patches], dim=1)  # (B, 1 + h*w, D)
        if interpolate_pos_encoding:
            return embeddings + self.interpolate_pos_encoding(embeddings, height, width)
        return embeddings + self.position_embedding.weight.unsqueeze(0)


# ---------------------------------------------------------------------------------------------------------------
# Transformer layers


class CLIPAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (as in the checkpoints)."""

    fast_paths = (None, kernels.packed_attention)  # q, k, v and out on MKL-packed weights when packing is on

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f"hidden_size ({self.embed_dim}) must be divisible by num_attention_heads "
                             f"({self.num_heads}).")
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = False
        # registration order k, v, q matches transformers, so state_dict() lists keys in the same order
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.cpu_weight_packing, self.fast = False, self.fast_paths[0]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                causal_attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masks are additive (B, 1, T, T) floats; for flash attention ``attention_mask`` is the 2-D padding mask.

        Returns the output (B, T, D) and, if asked for, the attention probabilities (B, H, T, T).
        """
        if self.fast is not None:
            out = self.fast(self, hidden_states, attention_mask, causal_attention_mask, output_attentions)
            if out is not None:
                return out
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        out, weights = self.attend(q, k, v, attention_mask, causal_attention_mask, output_attentions)  # (B, T, D)
        return self.out_proj(out), weights

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None,
               causal_attention_mask: torch.Tensor | None,
               output_attentions: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of the (B, H, T, Dh) heads by the configured backend, heads merged back to (B, T, D)."""
        backend = self.config._attn_implementation
        attention = ATTENTION_FUNCTIONS.get(backend)
        if attention is None:
            raise ValueError(f"attn_implementation={backend!r} is not supported; choose one of "
                             f"{list(ATTN_IMPLEMENTATIONS)}.")
        if output_attentions and attention is not flash_attention:
            attention = eager_attention  # the probabilities exist only in the eager math: it runs for this call
        dropout = self.dropout if self.training else 0.0
        out, weights = attention(q, k, v, attention_mask, causal_attention_mask, self.scale, dropout)
        batch, _, length, _ = q.shape
        out = out.transpose(1, 2).reshape(batch, length, self.embed_dim)  # (B, T, D)
        return out, (weights if output_attentions else None)


class CLIPMLP(nn.Module):
    """fc1 -> activation (quick_gelu for OpenAI models) -> fc2."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.activation_fn = activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        # quick_gelu folded into the matmuls (for quick_gelu); MKL-packed weights when packing is on
        self.fast_paths = (kernels.mlp_fast_path(self.activation_fn), kernels.packed_mlp)
        self.cpu_weight_packing, self.fast = False, self.fast_paths[0]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.fast is not None:
            out = self.fast(self, hidden_states)
            if out is not None:
                return out
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                causal_attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, ...]:
        attn_out, weights = self.self_attn(self.layer_norm1(hidden_states), attention_mask, causal_attention_mask,
                                           output_attentions)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        return (hidden_states, weights) if output_attentions else (hidden_states,)


class CLIPEncoder(nn.Module):
    """A stack of ``num_hidden_layers`` encoder layers sharing one mask (no final norm here)."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                causal_attention_mask: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None) -> BaseModelOutput:
        """hidden_states[0] is ``inputs_embeds``; hidden_states[i] is the output of layer i."""
        all_hidden: list[torch.Tensor] | None = [] if output_hidden_states else None
        all_attn: list[torch.Tensor] | None = [] if output_attentions else None
        hidden_states = inputs_embeds
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            if self.gradient_checkpointing and self.training:
                from torch.utils.checkpoint import checkpoint

                outputs = checkpoint(layer, hidden_states, attention_mask, causal_attention_mask,
                                     bool(output_attentions), use_reentrant=False)
            else:
                outputs = layer(hidden_states, attention_mask, causal_attention_mask, bool(output_attentions))
            hidden_states = outputs[0]
            if all_attn is not None:
                all_attn.append(outputs[1])
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states,
                               hidden_states=tuple(all_hidden) if all_hidden is not None else None,
                               attentions=tuple(all_attn) if all_attn is not None else None)


# ---------------------------------------------------------------------------------------------------------------
# Towers


class CLIPTextTransformer(nn.Module):
    """The text tower: embeddings, causal encoder, final LayerNorm, pooling at the end-of-text token."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.eos_token_id = config.eos_token_id

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None) -> Any:
        input_ids, attention_mask = self.check_inputs(input_ids, attention_mask, position_ids)  # (B, T)
        batch, length = input_ids.shape
        hidden_states = self.embeddings(input_ids=input_ids, position_ids=position_ids)
        dtype, device = hidden_states.dtype, hidden_states.device
        causal = _causal_mask(batch, length, dtype, device)
        # an all-ones mask is dropped (sdpa's causal fast path); tracers and exporters cannot branch on values
        unpadded = attention_mask is None or (not graph_capture() and bool(attention_mask.all()))
        if self.config._attn_implementation == "flash_attention_2":
            mask = None if unpadded else attention_mask
        elif attention_mask is not None and not (self.config._attn_implementation == "sdpa" and unpadded):
            mask = _expand_padding_mask(attention_mask.to(device), dtype, length)
        else:
            mask = None  # no padding: sdpa then takes its causal fast path
        encoded = self.encoder(hidden_states, mask, causal, _flag(output_attentions, self.config.output_attentions),
                               _flag(output_hidden_states, self.config.output_hidden_states))
        last_hidden_state = self.final_layer_norm(encoded.last_hidden_state)
        pooled = last_hidden_state[torch.arange(batch, device=device), self._eos_positions(input_ids.to(device))]
        out = BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled,
                                         hidden_states=encoded.hidden_states, attentions=encoded.attentions)
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()

    def check_inputs(self, input_ids: Any, attention_mask: Any,
                     position_ids: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Where text enters: ids as (B, T) and their padding mask, checked against this tower's tables."""
        tables = self.embeddings.token_embedding, self.embeddings.position_embedding
        return check_text_inputs(input_ids, attention_mask, position_ids, *(getattr(t, "num_embeddings", None)
                                                                            for t in tables))

    def pooled_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Only the pooled vector (B, D), computing no more than it depends on.

        Attention is causal, so the pooled token sees only positions up to itself: columns after the last pooled
        position are cut, and with right padding (or none) no padding mask is needed. Same numbers as ``forward``.
        Hooks on the tower's layers see the full sequence: with any, ``forward`` runs.
        """
        input_ids, attention_mask = self.check_inputs(input_ids, attention_mask, position_ids)  # (B, T)
        check_sequence_length(input_ids.shape[1], self.embeddings.position_embedding.weight.shape[0])
        if attention_mask is not None:
            attention_mask = attention_mask.expand(input_ids.shape[0], -1)  # a (1, T) mask applies to every row
        if (graph_capture() or position_ids is not None
                or (attention_mask is not None and not _is_right_padded(attention_mask))
                or any(hooked(m) for m in self.modules())):
            return self(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        output_attentions=False, output_hidden_states=False, return_dict=True).pooler_output
        positions = self._eos_positions(input_ids)
        if attention_mask is not None and not bool(attention_mask.gather(1, positions[:, None].to(
                attention_mask.device)).all()):
            # a pooled token outside its mask: only the full computation reproduces the reference there
            return self.forward(input_ids, attention_mask, position_ids, False, False, True).pooler_output
        input_ids = input_ids[:, : int(positions.max()) + 1]  # (B, T'), T' <= T
        hidden_states = self.embeddings(input_ids=input_ids)
        batch, length = input_ids.shape
        causal = _causal_mask(batch, length, hidden_states.dtype, hidden_states.device)
        encoded = self.encoder(hidden_states, None, causal, False, False)
        rows = torch.arange(batch, device=hidden_states.device)
        return self.final_layer_norm(encoded.last_hidden_state[rows, positions.to(hidden_states.device)])

    def _eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Index of the pooled token in each row (B,).

        OpenAI's Hub configs store eos_token_id=2 (a bug fixed in transformers PR #24773); for them the legacy
        rule stays: the first position of the largest id, which is <|endoftext|> with the real vocabulary.
        Otherwise: the first position equal to eos_token_id (0 if a row has none, as the reference).
        """
        ids = input_ids.to(torch.int)
        if self.eos_token_id == 2:
            return ids.argmax(dim=-1)
        return (ids == self.eos_token_id).int().argmax(dim=-1)


class CLIPVisionTransformer(nn.Module):
    """The vision tower: patch embeddings, pre-LayerNorm, encoder, post-LayerNorm of the class token."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic: checkpoint key
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                return_dict: bool | None = None) -> Any:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (from CLIPImageProcessor).")
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        encoded = self.encoder(hidden_states, None, None, _flag(output_attentions, self.config.output_attentions),
                               _flag(output_hidden_states, self.config.output_hidden_states))
        last_hidden_state = encoded.last_hidden_state  # (B, 1 + N, D), no final norm on the sequence
        pooled = self.post_layernorm(last_hidden_state[:, 0, :])
        out = BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled,
                                         hidden_states=encoded.hidden_states, attentions=encoded.attentions)
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


# ---------------------------------------------------------------------------------------------------------------
# Public models


class CLIPPreTrainedModel(PreTrainedModel):
    """Base of the public CLIP models: their config class and the reference's initialisation rules.

    The transformers model API (``from_pretrained``, ``save_pretrained``, ``post_init``, ``num_parameters``, ...)
    comes from :class:`clipfast.loading.PreTrainedModel`.
    """

    config_class = CLIPConfig
    base_model_prefix = "clip"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings"]

    def _init_rules(self, module: nn.Module) -> list[tuple[torch.Tensor, Callable[[torch.Tensor], Any]]]:
        """The reference's initialisation rules for one module, as (tensor, in-place init) pairs.

        Kept as data so that loading can initialise only the tensors a checkpoint lacks.
        """
        factor = self.config.initializer_factor

        def normal(std: float) -> Callable[[torch.Tensor], Any]:
            return lambda t: t.normal_(mean=0.0, std=std)

        rules: list[tuple[torch.Tensor, Callable[[torch.Tensor], Any]]] = []
        if isinstance(module, CLIPTextEmbeddings):
            rules += [(module.token_embedding.weight, normal(0.02 * factor)),
                      (module.position_embedding.weight, normal(0.02 * factor))]
        elif isinstance(module, CLIPVisionEmbeddings):
            std = module.config.initializer_range * factor
            rules += [(module.class_embedding, normal(module.embed_dim**-0.5 * factor)),
                      (module.patch_embedding.weight, normal(std)), (module.position_embedding.weight, normal(std))]
        elif isinstance(module, CLIPAttention):
            in_std = module.embed_dim**-0.5 * (2 * module.config.num_hidden_layers) ** -0.5 * factor
            rules += [(p.weight, normal(in_std)) for p in (module.q_proj, module.k_proj, module.v_proj)]
            rules.append((module.out_proj.weight, normal(module.embed_dim**-0.5 * factor)))
        elif isinstance(module, CLIPMLP):
            hidden, layers = module.config.hidden_size, module.config.num_hidden_layers
            rules += [(module.fc1.weight, normal((2 * hidden) ** -0.5 * factor)),
                      (module.fc2.weight, normal(hidden**-0.5 * (2 * layers) ** -0.5 * factor))]
        elif isinstance(module, CLIPModel):
            rules += [(module.text_projection.weight, normal(module.text_embed_dim**-0.5 * factor)),
                      (module.visual_projection.weight, normal(module.vision_embed_dim**-0.5 * factor)),
                      (module.logit_scale, lambda t: t.fill_(self.config.logit_scale_init_value))]
        elif isinstance(module, CLIPVisionModelWithProjection):
            rules.append((module.visual_projection.weight, normal(self.config.hidden_size**-0.5 * factor)))
        elif isinstance(module, CLIPTextModelWithProjection):
            rules.append((module.text_projection.weight, normal(self.config.hidden_size**-0.5 * factor)))
        elif isinstance(module, CLIPForImageClassification) and isinstance(module.classifier, nn.Linear):
            std = self.config.vision_config.hidden_size**-0.5 * factor
            rules.append((module.classifier.weight, normal(std)))
        if isinstance(module, nn.LayerNorm):
            rules += [(module.bias, lambda t: t.zero_()), (module.weight, lambda t: t.fill_(1.0))]
        if isinstance(module, nn.PReLU):
            rules.append((module.weight, lambda t: t.fill_(0.25)))  # its constructor's value
        if isinstance(module, nn.Linear) and module.bias is not None:
            rules.append((module.bias, lambda t: t.zero_()))
        return rules

    def _set_token_embedding(self, table: nn.Embedding) -> None:
        """Put a resized token table into the text tower and its size into the config."""
        self.text_model.embeddings.token_embedding = table  # type: ignore[union-attr]
        text_config = self.config.text_config if isinstance(self.config, CLIPConfig) else self.config
        text_config.vocab_size = table.num_embeddings


class CLIPTextModel(CLIPPreTrainedModel):
    """The bare text tower. Output: ``last_hidden_state`` (B, T, D) and ``pooler_output`` (B, D)."""

    config_class = CLIPTextConfig
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer"]

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        self.text_model = CLIPTextTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.token_embedding = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None) -> Any:
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                               return_dict=return_dict)


class CLIPVisionModel(CLIPPreTrainedModel):
    """The bare vision tower. Output: ``last_hidden_state`` (B, 1+N, D) and ``pooler_output`` (B, D)."""

    config_class = CLIPVisionConfig
    main_input_name = "pixel_values"
    _no_split_modules = ["CLIPEncoderLayer"]

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = CLIPVisionTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    def forward(self, pixel_values: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                return_dict: bool | None = None) -> Any:
        return self.vision_model(pixel_values=pixel_values, output_attentions=output_attentions,
                                 output_hidden_states=output_hidden_states,
                                 interpolate_pos_encoding=interpolate_pos_encoding, return_dict=return_dict)


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against its own index."""
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def clip_loss(similarity: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss over a square (text x image) logit matrix."""
    return (contrastive_loss(similarity) + contrastive_loss(similarity.t())) / 2.0


class CLIPModel(CLIPPreTrainedModel):
    """Both towers, their projections and the learned temperature.

    Example:
        >>> import torch
        >>> from clipfast import CLIPConfig, CLIPModel
        >>> tiny = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
        >>> model = CLIPModel(CLIPConfig(text_config=dict(tiny, vocab_size=99),
        ...                              vision_config=dict(tiny, image_size=30, patch_size=2), projection_dim=64))
        >>> out = model(input_ids=torch.tensor([[0, 5, 98]]), pixel_values=torch.rand(2, 3, 30, 30))
        >>> tuple(out.logits_per_image.shape)
        (2, 1)
    """

    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        self.projection_dim = config.projection_dim
        self.text_embed_dim = text_config.hidden_size
        self.vision_embed_dim = vision_config.hidden_size
        self.text_model = CLIPTextTransformer(text_config)
        self.vision_model = CLIPVisionTransformer(vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def get_text_features(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                          position_ids: torch.Tensor | None = None, output_attentions: bool | None = None,
                          output_hidden_states: bool | None = None, return_dict: bool | None = None,
                          **kwargs: Any) -> torch.Tensor:
        """Projected (not normalized) text embeddings, shape (B, projection_dim). Other keywords (the
        processor's ``pixel_values``, a tokenizer's ``token_type_ids``) are ignored with a warning, as the reference
        does, so ``get_text_features(**inputs)`` works."""
        ignore_extra_kwargs("get_text_features", kwargs)
        return self.text_projection(self.text_model.pooled_output(input_ids, attention_mask, position_ids))

    def get_image_features(self, pixel_values: torch.Tensor | None = None, output_attentions: bool | None = None,
                           output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                           return_dict: bool | None = None, **kwargs: Any) -> torch.Tensor:
        """Projected (not normalized) image embeddings, shape (B, projection_dim); other keywords (the
        processor's ``input_ids``, ...) are ignored with a warning, as the reference does."""
        ignore_extra_kwargs("get_image_features", kwargs)
        pooled = self.vision_model(pixel_values=pixel_values, output_attentions=False, output_hidden_states=False,
                                   interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True).pooler_output
        return self.visual_projection(pooled)

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                return_loss: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                return_dict: bool | None = None) -> Any:
        """Similarity logits between every text and every image; loss with ``return_loss=True``."""
        output_attentions = _flag(output_attentions, self.config.output_attentions)
        output_hidden_states = _flag(output_hidden_states, self.config.output_hidden_states)
        vision_out = self.vision_model(pixel_values=pixel_values, output_attentions=output_attentions,
                                       output_hidden_states=output_hidden_states,
                                       interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        text_out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                   return_dict=True)
        image_embeds = _normalize(self.visual_projection(vision_out.pooler_output))
        text_embeds = _normalize(self.text_projection(text_out.pooler_output))
        logits_per_text = torch.matmul(text_embeds, image_embeds.t().to(text_embeds.device))
        logits_per_text = logits_per_text * self.logit_scale.exp().to(text_embeds.device)
        logits_per_image = logits_per_text.t()
        if return_loss:
            check_loss_pairs(len(text_embeds), len(image_embeds))
        loss = clip_loss(logits_per_text) if return_loss else None
        out = CLIPOutput(loss=loss, logits_per_image=logits_per_image, logits_per_text=logits_per_text,
                         text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=text_out,
                         vision_model_output=vision_out)
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


class CLIPTextModelWithProjection(CLIPPreTrainedModel):
    """Text tower plus ``text_projection``: ``text_embeds`` (B, projection_dim), not normalized."""

    config_class = CLIPTextConfig
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer"]

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        self.text_model = CLIPTextTransformer(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.token_embedding = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None) -> Any:
        text_out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                   return_dict=True)
        out = CLIPTextModelOutput(text_embeds=self.text_projection(text_out.pooler_output),
                                  last_hidden_state=text_out.last_hidden_state,
                                  hidden_states=text_out.hidden_states, attentions=text_out.attentions)
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


class CLIPVisionModelWithProjection(CLIPPreTrainedModel):
    """Vision tower plus ``visual_projection``: ``image_embeds`` (B, projection_dim), not normalized."""

    config_class = CLIPVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = CLIPVisionTransformer(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    def forward(self, pixel_values: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                return_dict: bool | None = None) -> Any:
        vision_out = self.vision_model(pixel_values=pixel_values, output_attentions=output_attentions,
                                       output_hidden_states=output_hidden_states,
                                       interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        out = CLIPVisionModelOutput(image_embeds=self.visual_projection(vision_out.pooler_output),
                                    last_hidden_state=vision_out.last_hidden_state,
                                    hidden_states=vision_out.hidden_states, attentions=vision_out.attentions)
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


class CLIPForImageClassification(CLIPPreTrainedModel):
    """Vision tower plus a linear classifier on the mean of the patch tokens (class token excluded)."""

    config_class = CLIPConfig
    main_input_name = "pixel_values"

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = CLIPVisionTransformer(config.vision_config)
        hidden = config.vision_config.hidden_size
        self.classifier = nn.Linear(hidden, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    def forward(self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, interpolate_pos_encoding: bool = False) -> Any:
        output_attentions = _flag(output_attentions, self.config.output_attentions)
        output_hidden_states = _flag(output_hidden_states, self.config.output_hidden_states)
        vision_out = self.vision_model(pixel_values=pixel_values, output_attentions=output_attentions,
                                       output_hidden_states=output_hidden_states,
                                       interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        logits = self.classifier(vision_out.last_hidden_state[:, 1:, :].mean(dim=1))  # (B, num_labels)
        loss = self.classification_loss(logits, labels) if labels is not None else None
        out = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=vision_out.hidden_states,
                                    attentions=vision_out.attentions)
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


MODEL_CLASSES: dict[str, type[CLIPPreTrainedModel]] = {
    cls.__name__: cls
    for cls in (CLIPModel, CLIPTextModel, CLIPVisionModel, CLIPTextModelWithProjection,
                CLIPVisionModelWithProjection, CLIPForImageClassification)
}

__all__ = [*MODEL_CLASSES, "CLIPPreTrainedModel", "CLIPTextTransformer", "CLIPVisionTransformer", "CLIPEncoder",
           "CLIPEncoderLayer", "CLIPAttention", "CLIPMLP", "CLIPTextEmbeddings", "CLIPVisionEmbeddings",
           "ModelOutput", "BaseModelOutput", "BaseModelOutputWithPooling", "CLIPOutput", "CLIPTextModelOutput",
           "CLIPVisionModelOutput", "ImageClassifierOutput"]
