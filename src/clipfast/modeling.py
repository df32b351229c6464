"""The CLIP model, all of it in this one file: outputs, attention, layers, towers, and the public model classes.

Reads top to bottom. Module and parameter names equal the checkpoint keys of transformers' CLIP
(``text_model.encoder.layers.0.self_attn.q_proj.weight``, the historical ``pre_layrnorm`` included), so loading
a checkpoint is a strict state-dict load. Loading and saving live in ``clipfast.loading``; this file only imports
torch and the configs.

Attention has one switch, ``config._attn_implementation``: "eager" (the readable reference below), "sdpa"
(the default) or "flash_attention_2" (fp16/bf16 on CUDA).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad
from torch.nn.modules import module as _torch_module  # the global forward-hook registries

from clipfast.configuration import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, PretrainedConfig

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
_INIT_WEIGHTS = [True]  # switched off while loading builds a model on the meta device


@contextlib.contextmanager
def no_init_weights():
    """Build models without initialising their weights (loading overwrites them anyway).

    On the meta device, initialisation is pure waste: torch even imports its reference implementations of
    ``normal_`` for it, which costs over a second of start-up.
    """
    names = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
             "trunc_normal_", "constant_", "zeros_", "ones_")
    saved = {name: getattr(nn.init, name) for name in names}
    _INIT_WEIGHTS.append(False)
    try:
        for name in names:  # torch's own layers (Linear, Embedding, ...) initialise themselves in __init__
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        _INIT_WEIGHTS.pop()
        for name, fn in saved.items():
            setattr(nn.init, name, fn)

# ---------------------------------------------------------------------------------------------------------------
# Outputs: dataclasses that also behave as ordered dicts and tuples (None fields are skipped), like transformers'.


def _ignore_extra(method: str, kwargs: dict[str, Any]) -> None:
    """Keywords a method does not take: ignored with one warning (the reference's
    ``filter_out_non_signature_kwargs``)."""
    if kwargs:
        warnings.warn(f"The following named arguments are not valid for `{method}` and were ignored: "
                      f"{', '.join(repr(k) for k in kwargs)}", UserWarning, stacklevel=3)


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
            serialized_type_name=f"{cls.__module__}.{cls.__name__}")

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


# ---------------------------------------------------------------------------------------------------------------
# Activations and attention kernels


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


def _activation(name: str) -> nn.Module:
    """The activation module called ``name`` in config.hidden_act."""
    if name in _ACT_MODULES:
        return _ACT_MODULES[name]()
    if name not in ACT2FN:
        raise ValueError(f"hidden_act={name!r} is not supported; choose one of "
                         f"{sorted([*ACT2FN, *_ACT_MODULES])}.")
    return Activation(name)


def _folds_quick_gelu(activation: nn.Module) -> bool:
    """Whether the MLP may fold this activation into its matmuls: quick_gelu, not hooked (hooks see it called)."""
    return isinstance(activation, Activation) and activation.fn is quick_gelu and not _hooked(activation)


def eager_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                    scale: float, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference attention: ``softmax_fp32(q kᵀ · scale + mask) v``. Inputs are (B, H, T, D).

    Returns the output (B, H, T, D) and the attention probabilities (B, H, T, T).
    """
    weights = torch.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        weights = weights + mask
    # softmax in float32 even for fp16/bf16 inputs, then back: what transformers >= 4.48 does
    probs = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    return torch.matmul(probs, value), probs


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                   scale: float, dropout: float, is_causal: bool) -> torch.Tensor:
    """PyTorch's fused attention; ``is_causal`` replaces an explicit causal mask when there is no padding."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale,
                                          is_causal=is_causal and mask is None)


def flash_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, padding_mask: torch.Tensor | None,
                    scale: float, dropout: float, is_causal: bool) -> torch.Tensor:
    """FlashAttention for fp16/bf16 CUDA tensors: the ``flash_attn`` package if installed, else PyTorch's kernel.

    ``padding_mask`` is the 2-D (B, T) mask of the text tower (1 = token). CLIP pads on the right and its text
    attention is causal, so a valid query never sees a padded key: the causal kernel alone is exact on real tokens.
    """
    if query.device.type != "cuda" or query.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            "attn_implementation='flash_attention_2' runs only on a CUDA GPU in float16 or bfloat16 (got "
            f"{query.dtype} on {query.device.type}). Load with torch_dtype=torch.bfloat16 and move the model to "
            "'cuda', or use attn_implementation='sdpa'.")
    if padding_mask is not None and not _is_right_padded(padding_mask):
        mask = _padding_to_additive(padding_mask, query.dtype, query.shape[-2], causal=is_causal)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        flash_attn_func = None
    if flash_attn_func is not None:
        # flash_attn takes (B, T, H, D)
        out = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                              dropout_p=dropout, softmax_scale=scale, causal=is_causal)
        return out.transpose(1, 2)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scale,
                                              is_causal=is_causal)


def _is_right_padded(mask: torch.Tensor) -> bool:
    """True when every row of a (B, T) 0/1 mask is ones followed by zeros."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def _padding_to_additive(mask: torch.Tensor, dtype: torch.dtype, tgt_len: int, causal: bool) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, 1, T, T) additive mask with ``finfo.min`` at masked keys (and above the diagonal)."""
    additive = _expand_padding_mask(mask, dtype, tgt_len)
    if causal:
        additive = additive + _causal_mask(mask.shape[0], tgt_len, dtype, mask.device)
    return additive


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


# ---------------------------------------------------------------------------------------------------------------
# CPU inference: weights pre-packed for MKL
#
# A float32 ``F.linear`` on CPU calls MKL's sgemm, which re-packs the whole weight matrix into its blocked layout
# on every call. At batch 1 (50 tokens) that packing costs about as much as the product itself. So for CPU
# inference (no autograd) each layer packs its weights once, keeps the packs beside the model, and runs
# ``cblas_sgemm_compute`` on them: same float32 math (round-off differences only), ~35% faster GEMMs at batch 1 and
# ~5% at batch 32. q, k and v are packed as one (3D, D) matrix, quick_gelu's 1.702 is folded into the MLP packs,
# and the patch embedding is packed as the (D, C*p*p) matrix it is. Packs live in a side table keyed by module
# (state_dict, deepcopy and pickling never see them) and are rebuilt when a weight changes through the parameter
# (new storage or a new parameter, an in-place update that bumps its version counter, or a change seen in a sample
# of its values: fused optimizers update in place without bumping it). Writes through ``param.data`` to a few
# elements can go unseen, and the packs cost one extra copy of the Linear weights: hence opt-in,
# ``model.set_cpu_weight_packing(True)`` (the pipeline turns it on for the models it loads itself). Moving or
# casting the model drops the packs.


@dataclass
class WeightsSeen:
    """What a cache derived from some parameters was made from, to tell whether it still holds: the parameter
    objects, their storage and version counters, anything else folded in, and (once sampled) a few values of each,
    since fused optimizers update in place without bumping the version counter."""

    key: tuple[Any, ...]
    params: list[weakref.ref]
    probes: list[torch.Tensor] | None = None  # views of a few values of each parameter...
    sample: torch.Tensor | None = None  # ...and those values when sampled

    @classmethod
    def of(cls, params: list[torch.Tensor], salt: Any = None, sample: bool = False) -> WeightsSeen:
        """The current state of ``params`` (contiguous ones), with a few values of each when ``sample``. The
        probes keep the sampled storage alive, so new storage can never reuse its address unnoticed. Records are
        never changed once made: threads may be reading them."""
        probes = [_probe(p) for p in params] if sample else None
        return cls(weights_key(params, salt), [weakref.ref(p) for p in params], probes,
                   torch.cat(probes) if probes is not None else None)

    def holds(self, params: list[torch.Tensor], salt: Any = None) -> bool:
        """Same parameters, same storage and versions, same salt, and (once sampled) the same sampled values."""
        if weights_key(params, salt) != self.key or any(ref() is not p for ref, p in zip(self.params, params)):
            return False
        return self.probes is None or torch.equal(torch.cat(self.probes), self.sample)

    def __reduce__(self) -> tuple[Any, ...]:
        return WeightsSeen, ((), [])  # a copied or unpickled record matches nothing: the cache is made again


def weights_key(params: list[torch.Tensor], salt: Any = None) -> tuple[Any, ...]:
    """Changes when a parameter gets new storage or an in-place update that bumps its version counter."""
    return tuple((p.data_ptr(), p._version) for p in params), salt


def _probe(param: torch.Tensor) -> torch.Tensor:
    """A view of ``_PROBES`` values spread over a contiguous parameter: it sees in-place updates."""
    flat = param.detach().view(-1)
    return flat[:: max(1, flat.numel() // _PROBES)]


# module -> (what its packs were made from, the packs or None until the second call with those weights)
_PACKS: weakref.WeakKeyDictionary[nn.Module, tuple[WeightsSeen, dict[str, _PackedLinear] | None]] = (
    weakref.WeakKeyDictionary())
_PROBES = 16  # values sampled per parameter: any optimizer step changes them all
_PACK_HINT = 256  # MKL asks for a row-count hint when packing; 256 suits 50 (one image) to 3200 rows


@functools.cache
def mkl_packing_available() -> bool:
    """Whether this PyTorch build has MKL's packed sgemm (x86 builds with MKL and oneDNN)."""
    if not (torch.backends.mkl.is_available() and torch.backends.mkldnn.is_available()):
        return False
    try:
        return hasattr(torch.ops.mkl, "_mkl_linear") and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


def _fp32_matmuls_exact() -> bool:
    """False while float32 CPU matmuls may round to bf16/tf32 (``cpu_bf16_matmuls``, or the user's own setting).

    MKL's packed product is always full float32, so it would silently override that choice.
    """
    try:
        # most specific first; "none" defers to the next level
        levels = (torch.backends.mkldnn.matmul.fp32_precision, torch.backends.mkldnn.fp32_precision,
                  torch.backends.fp32_precision)
    except AttributeError:  # PyTorch < 2.9: only the legacy switch exists
        return torch.get_float32_matmul_precision() == "highest"
    for level in levels:
        if level != "none":
            return level == "ieee"
    return True


class _PackedLinear:
    """``x @ (scale * W)ᵀ + bias_scale * b`` on one MKL-packed float32 weight (CPU, no autograd).

    Several (out_i, in) weights are stacked into one (sum out_i, in) product.
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None], scale: float = 1.0,
                 bias_scale: float | None = None) -> None:
        weight = torch.cat(weights) if len(weights) > 1 else weights[0]  # (out, in)
        weight = weight.detach() * scale if scale != 1.0 else weight.detach()
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.contiguous(), _PACK_HINT)
        # _mkl_linear reads (out, in) from this argument and touches its data only for a row count other than
        # the one passed, which never happens here: a zero-memory view of the right shape is enough
        self.shape = weight.new_empty(()).expand(weight.shape)
        if any(b is None for b in biases):
            self.bias = None
        else:
            bias = torch.cat(biases) if len(biases) > 1 else biases[0]  # type: ignore[arg-type]
            bias_scale = scale if bias_scale is None else bias_scale
            self.bias = bias.detach() * bias_scale if bias_scale != 1.0 else bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        return torch.ops.mkl._mkl_linear(x, self.packed, self.shape, self.bias, rows)


def _hooked(layer: nn.Module) -> bool:
    """Whether calling ``layer`` does more than its forward (forward or backward hooks, pruning, parametrized
    weights), so the fast paths that use its weights directly must call it instead."""
    return bool(layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks
                or layer._backward_pre_hooks or hasattr(layer, "parametrizations")
                or _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
                or _torch_module._global_backward_hooks or _torch_module._global_backward_pre_hooks)


def _graph_capture() -> bool:
    """Inside torch.jit tracing, torch.compile or torch.export: no branching on tensor values (they are symbolic
    or would be baked in), and the plain ops only."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling() or exporting()


def _forward_ad_active() -> bool:
    """Inside forward-mode AD (``torch.func.jvp``/``jacfwd``, ``forward_ad.dual_level``) or another functorch
    transform: MKL's packed product has no forward-AD formula."""
    return forward_ad._current_level >= 0 or torch._C._functorch.maybe_current_level() is not None


def _cpu_packs(module: nn.Module, x: torch.Tensor, layers: list[nn.Module],
               build: Callable[[], dict[str, _PackedLinear]], salt: Any = None) -> dict[str, _PackedLinear] | None:
    """The module's packs of ``layers`` if ``x`` is a CPU float32 inference input and packing is on, else None.

    ``salt``: whatever else ``build`` folds into the packs (the MLP's activation); a different one rebuilds them.
    """
    if not getattr(module, "cpu_weight_packing", False) or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if any(type(m) not in (nn.Linear, nn.Conv2d) or m.weight.dtype != torch.float32 or _hooked(m) for m in layers):
        return None  # swapped by an opt-in of clipfast.optimize (int8, upcast), mixed dtypes, or hooked
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return None  # the packed product has no backward
    if _graph_capture() or _forward_ad_active():
        return None  # exporters, compilers and function transforms see the plain ops
    if any(p.is_inference() or not p.is_contiguous() for p in params):
        return None  # inference tensors keep no version counter to tell an update by; probes need flat views
    if not (mkl_packing_available() and _fp32_matmuls_exact()):
        return None
    entry = _PACKS.get(module)
    if entry is None or not entry[0].holds(params, salt):
        # packing costs about two plain calls, so a layer packs on its second call with the same weights: a
        # one-shot use (a CLI call, one batch) never pays for it
        _PACKS[module] = (WeightsSeen.of(params, salt), None)
        return None
    if entry[1] is None:  # published whole, so a thread reading the table sees a record and its packs together
        entry = _PACKS[module] = (WeightsSeen.of(params, salt, sample=True), build())
    return entry[1]


# ---------------------------------------------------------------------------------------------------------------
# Embeddings


def _position_ids(length: int) -> torch.Tensor:
    """``arange(length)`` as (1, length); on the CPU when models are built on the meta device for loading, where
    arange would import torch's symbolic-shape machinery (a third of a second) for a buffer loading replaces."""
    device = "cpu" if torch.get_default_device().type == "meta" else None
    return torch.arange(length, device=device).expand((1, -1))


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
        self.check_length(length)
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(input_ids)
        if position_ids is None:
            # the first T rows of the table: identical to a lookup at arange(T), without the gather
            return inputs_embeds + self.position_embedding.weight[:length]
        return inputs_embeds + self.position_embedding(position_ids)

    def check_length(self, length: int) -> None:
        """The reference's error for sequences longer than the position table, with the fix in the message."""
        max_positions = self.position_embedding.weight.shape[0]
        if length > max_positions:
            raise ValueError(
                f"Sequence length must be less than max_position_embeddings (got `sequence length`: {length} and "
                f"max_position_embeddings: {max_positions}). Tokenize with truncation=True (and max_length="
                f"{max_positions}) to cut longer texts.")


def _check_text_mask(mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """A (B, T) padding mask for (B, T) ids, or a (1, T) one, which applies to every row (it broadcasts in the
    reference); any other shape is an error rather than a silently wrong or dropped mask."""
    if mask is not None and (mask.dim() != 2 or mask.shape[1] != length or mask.shape[0] not in (1, batch)):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids has shape ({batch}, {length}); "
                         "pass the attention_mask the tokenizer returned with these input_ids, shaped (batch, "
                         "sequence length).")
    return mask


class CLIPVisionEmbeddings(nn.Module):
    """Patchify with a bias-free conv, prepend the class token, add (optionally interpolated) positions."""

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
        self.cpu_weight_packing = False  # opt-in: CLIPPreTrainedModel.set_cpu_weight_packing

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
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}. Use CLIPImageProcessor to prepare images.")
        batch, _, height, width = pixel_values.shape
        if not interpolate_pos_encoding and (height != self.image_size or width != self.image_size):
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model ({self.image_size}*{self.image_size}). "
                "Resize the images to the model's size or pass interpolate_pos_encoding=True.")
        # casting here is what lets a bf16/fp16 model take the processor's float32 pixels
        pixel_values = pixel_values.to(dtype=self.patch_embedding.weight.dtype)
        if _is_patch_conv(self.patch_embedding):
            # cuDNN runs this stride == kernel convolution (plus an NCHW->NHWC copy) at a fraction of the GEMM
            # rate: a quarter of a bf16 B/32 forward on an H100/H200; oneDNN's takes ~1.4x the matmul on CPU
            packs = _cpu_packs(self, pixel_values, [self.patch_embedding], self._pack)
            patches = patch_embedding_as_matmul(pixel_values, self.patch_embedding.weight,
                                                packs["patch"] if packs is not None else None)  # (B, h*w, D)
        else:  # a convolution swapped in by the user, or hooked: call it
            patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, h*w, D)
        embeddings = torch.cat([self.class_embedding.expand(batch, 1, -1), patches], dim=1)  # (B, 1 + h*w, D)
        if interpolate_pos_encoding:
            return embeddings + self.interpolate_pos_encoding(embeddings, height, width)
        return embeddings + self.position_embedding.weight.unsqueeze(0)

    def _pack(self) -> dict[str, _PackedLinear]:
        """The patch convolution's weight as a packed (D, C*p*p) matrix (CPU inference)."""
        weight = self.patch_embedding.weight
        return {"patch": _PackedLinear([weight.reshape(weight.shape[0], -1)], [None])}


def _is_patch_conv(conv: nn.Module) -> bool:
    """Whether ``conv`` is the plain patchify convolution (stride = kernel, no padding, dilation or groups, no
    bias, not hooked) that :func:`patch_embedding_as_matmul` computes; anything else is called as it is."""
    return (type(conv) is nn.Conv2d and conv.bias is None and tuple(conv.stride) == tuple(conv.kernel_size)
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and not _hooked(conv))


def patch_embedding_as_matmul(pixel_values: torch.Tensor, weight: torch.Tensor,
                              packed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The bias-free patch convolution (stride == kernel, no padding) as one matmul: (B, C, H, W) -> (B, h*w, D).

    Rows and columns past the last whole patch are dropped, as the convolution drops them. Equal to the
    convolution up to float summation order. ``packed``, if given, multiplies by the packed weight instead.
    """
    batch, channels, height, width = pixel_values.shape
    dim, _, patch, _ = weight.shape
    rows, cols = height // patch, width // patch
    x = pixel_values[:, :, :rows * patch, :cols * patch]
    x = x.reshape(batch, channels, rows, patch, cols, patch)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * patch * patch)  # (B, h*w, C*p*p)
    return packed(x) if packed is not None else x @ weight.reshape(dim, -1).t()


# ---------------------------------------------------------------------------------------------------------------
# Transformer layers


class CLIPAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (as in the checkpoints)."""

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
        self.cpu_weight_packing = False  # opt-in: CLIPPreTrainedModel.set_cpu_weight_packing

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                causal_attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masks are additive (B, 1, T, T) floats; for flash attention ``attention_mask`` is the 2-D padding mask.

        Returns the output (B, T, D) and, if asked for, the attention probabilities (B, H, T, T).
        """
        batch, length, _ = hidden_states.shape
        packs = _cpu_packs(self, hidden_states, [self.q_proj, self.k_proj, self.v_proj, self.out_proj], self._pack)
        if packs is not None:
            qkv = packs["qkv"](hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, Dh)
        else:
            q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        # q, k, v: (B, H, T, Dh)
        dropout = self.dropout if self.training else 0.0
        backend = self.config._attn_implementation
        weights = None
        if backend == "flash_attention_2":
            out = flash_attention(q, k, v, attention_mask, self.scale, dropout, causal_attention_mask is not None)
        else:
            mask = _combine_masks(attention_mask, causal_attention_mask)
            # attention probabilities exist only in the eager math, so asking for them selects it for this call
            if backend == "eager" or output_attentions:
                out, weights = eager_attention(q, k, v, mask, self.scale, dropout)
            elif backend == "sdpa":
                # no padding: the causal mask is replaced by the kernel's own causal path (same math, faster)
                if attention_mask is None and causal_attention_mask is not None:
                    out = sdpa_attention(q, k, v, None, self.scale, dropout, is_causal=length > 1)
                else:
                    out = sdpa_attention(q, k, v, mask, self.scale, dropout, is_causal=False)
            else:
                raise ValueError(f"attn_implementation={backend!r} is not supported; choose one of "
                                 f"{list(ATTN_IMPLEMENTATIONS)}.")
        out = out.transpose(1, 2).reshape(batch, length, self.embed_dim)  # (B, T, D)
        out = packs["out"](out) if packs is not None else self.out_proj(out)
        return out, (weights if output_attentions else None)

    def _pack(self) -> dict[str, _PackedLinear]:
        """q, k, v as one packed (3D, D) projection, and the output projection (CPU inference)."""
        qkv = (self.q_proj, self.k_proj, self.v_proj)
        return {"qkv": _PackedLinear([m.weight for m in qkv], [m.bias for m in qkv]),
                "out": _PackedLinear([self.out_proj.weight], [self.out_proj.bias])}


def _combine_masks(attention_mask: torch.Tensor | None, causal_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Sum the additive padding and causal masks (either may be absent), as transformers 4.x does."""
    if attention_mask is not None and causal_mask is not None:
        return attention_mask + causal_mask
    return attention_mask if attention_mask is not None else causal_mask


class CLIPMLP(nn.Module):
    """fc1 -> activation (quick_gelu for OpenAI models) -> fc2."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.activation_fn = _activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.cpu_weight_packing = False  # opt-in: CLIPPreTrainedModel.set_cpu_weight_packing

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        folds = _folds_quick_gelu(self.activation_fn)
        # the packs depend on the activation only through the fold (its 1.702 is in them)
        packs = _cpu_packs(self, hidden_states, [self.fc1, self.fc2], self._pack, salt=folds)
        if packs is not None:
            hidden = packs["fc1"](hidden_states)
            if folds:  # the packs hold 1.702 W1, 1.702 b1 and W2 / 1.702
                return packs["fc2"](F.silu(hidden, inplace=True))
            return packs["fc2"](self.activation_fn(hidden))
        # the folded quick_gelu depends on the grad mode: a tracer (whose check reruns without grad) sees one graph
        if folds and not (torch.is_grad_enabled() and hidden_states.requires_grad) and not _graph_capture():
            if self._plain_linears(hidden_states):
                return self._quick_gelu_mlp(hidden_states)
            if _makes_new_tensor(self.fc1) and not _hooked(self.fc1):
                # layers swapped by clipfast.optimize (int8, upcast): quick_gelu in place, as silu(1.702 z) / 1.702,
                # instead of three new (B, T, intermediate) tensors (~30% of an int8 forward at batch 32)
                hidden = self.fc1(hidden_states).mul_(1.702)
                return self.fc2(F.silu(hidden, inplace=True).mul_(1 / 1.702))
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))

    def _pack(self) -> dict[str, _PackedLinear]:
        """fc1 and fc2 packed for CPU inference, with quick_gelu's 1.702 folded in as in :meth:`_quick_gelu_mlp`."""
        scale = 1.702 if _folds_quick_gelu(self.activation_fn) else 1.0
        return {"fc1": _PackedLinear([self.fc1.weight], [self.fc1.bias], scale),
                "fc2": _PackedLinear([self.fc2.weight], [self.fc2.bias], 1 / scale, bias_scale=1.0)}

    def _plain_linears(self, x: torch.Tensor) -> bool:
        """fc1 and fc2 are still plain ``nn.Linear`` in ``x``'s dtype (not swapped by an opt-in of
        clipfast.optimize, not hooked)."""
        return (type(self.fc1) is nn.Linear and type(self.fc2) is nn.Linear and self.fc1.weight.dtype == x.dtype
                and self.fc1.bias is not None and self.fc2.bias is not None
                and not _hooked(self.fc1) and not _hooked(self.fc2))

    def _quick_gelu_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """Inference MLP with quick_gelu folded into the matmuls: ``z sigmoid(1.702 z) = silu(1.702 z) / 1.702``.

        The GEMMs scale for free (``alpha``/``beta``), so the widest activation of the model takes one in-place
        pass instead of three, and no second (B, T, intermediate) tensor: ~10% of a batch-32 image forward. Same as
        the reference up to float32 rounding.
        """
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        hidden = torch.addmm(self.fc1.bias, x, self.fc1.weight.t(), beta=1.702, alpha=1.702)  # 1.702 z
        F.silu(hidden, inplace=True)
        out = torch.addmm(self.fc2.bias, hidden, self.fc2.weight.t(), alpha=1 / 1.702)
        return out.view(*shape[:-1], out.shape[-1])


def _rows_like(table: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` new embedding rows around the mean of ``table``'s rows: drawn from N(mean, 1e-9 * covariance)
    when the covariance is positive definite, else the mean itself (transformers' mean resizing)."""
    rows = table.float()
    mean = rows.mean(dim=0)
    centered = rows - mean
    covariance = centered.T @ centered / rows.shape[0]
    try:
        scale = torch.linalg.cholesky(1e-9 * covariance.double()).float()
    except RuntimeError:  # not positive definite (fewer rows than dimensions, duplicates)
        return mean.expand(count, -1).to(table.dtype)
    return (mean + torch.randn(count, mean.shape[0], device=table.device) @ scale.T).to(table.dtype)


def _makes_new_tensor(layer: nn.Module) -> bool:
    """Layers whose output is a new tensor, safe to overwrite: Linear, and its quantized / upcast replacements."""
    return isinstance(layer, nn.Linear) or type(layer).__module__.startswith(("torch.ao.nn.quantized", "clipfast."))


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


def _flag(value: Any, default: bool) -> bool:
    """An output flag from the call, else from the config (any truthy value counts)."""
    return bool(default if value is None else value)


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
        if input_ids is None:
            raise ValueError("You have to specify input_ids (token ids from CLIPTokenizer).")
        input_ids = input_ids.view(-1, input_ids.shape[-1])  # (B, T)
        batch, length = input_ids.shape
        attention_mask = _check_text_mask(attention_mask, batch, length)
        hidden_states = self.embeddings(input_ids=input_ids, position_ids=position_ids)
        dtype, device = hidden_states.dtype, hidden_states.device
        causal = _causal_mask(batch, length, dtype, device)
        # an all-ones mask is dropped (sdpa's causal fast path); tracers and exporters cannot branch on values
        unpadded = attention_mask is None or (not _graph_capture() and bool(attention_mask.all()))
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

    def pooled_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Only the pooled vector (B, D), computing no more than it depends on.

        Attention is causal, so the pooled token sees only positions up to itself: columns after the last pooled
        position are cut, and with right padding (or none) no padding mask is needed. Same numbers as ``forward``.
        Hooks on the tower's layers see the full sequence: with any, ``forward`` runs.
        """
        if input_ids is None:
            raise ValueError("You have to specify input_ids (token ids from CLIPTokenizer).")
        input_ids = input_ids.view(-1, input_ids.shape[-1])  # (B, T)
        attention_mask = _check_text_mask(attention_mask, *input_ids.shape)
        self.embeddings.check_length(input_ids.shape[1])
        if attention_mask is not None:
            attention_mask = attention_mask.expand(input_ids.shape[0], -1)  # a (1, T) mask applies to every row
        if (_graph_capture() or position_ids is not None
                or (attention_mask is not None and not _is_right_padded(attention_mask))
                or any(_hooked(m) for m in self.modules())):
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


class CLIPPreTrainedModel(nn.Module):
    """Base of the public models: weight initialisation and the transformers model API.

    ``from_pretrained`` / ``save_pretrained`` are implemented in ``clipfast.loading``.
    """

    config_class: type[PretrainedConfig] = CLIPConfig
    base_model_prefix = "clip"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings"]

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}.")
        backend = config._attn_implementation
        if backend not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation={backend!r} is not supported; choose one of "
                             f"{list(ATTN_IMPLEMENTATIONS)}.")
        self.config = config
        self.name_or_path = config._name_or_path

    def post_init(self) -> None:
        """Initialise every weight as the reference does (children first, so specific rules win), once: a model
        already initialised or loaded keeps its weights, as the reference's does."""
        if _INIT_WEIGHTS[-1] and not getattr(self, "_weights_ready", False):
            self.apply(self._init_weights)
        self._weights_ready = True

    def init_weights(self) -> None:
        """transformers' public name of :meth:`post_init`'s initialisation."""
        self.post_init()

    def enable_input_require_grads(self) -> None:
        """Make the input embeddings' output require grad, so gradient checkpointing works with frozen
        embeddings (adapters, PEFT)."""
        def require_grads(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(require_grads)

    def disable_input_require_grads(self) -> None:
        """Undo :meth:`enable_input_require_grads`."""
        hook = getattr(self, "_require_grads_hook", None)
        if hook is not None:
            hook.remove()
            self._require_grads_hook = None

    def set_attn_implementation(self, attn_implementation: str | dict[str, str]) -> None:
        """Switch the attention backend at runtime ("eager", "sdpa", "flash_attention_2", or a dict by sub-config)."""
        from clipfast.loading import check_attn_implementation

        self.config._attn_implementation = check_attn_implementation(attn_implementation)

    @property
    def base_model(self) -> nn.Module:
        """The model itself (CLIP models have no separate base model), as in transformers."""
        return getattr(self, self.base_model_prefix, self)

    framework = "pt"
    is_parallelizable = False

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes taken by the parameters (and buffers)."""
        tensors = [*self.parameters(), *(self.buffers() if return_buffers else [])]
        return sum(t.numel() * t.element_size() for t in tensors)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: clipfast never uploads. Save with ``save_pretrained`` and upload the folder with
        ``huggingface_hub.upload_folder``."""
        from clipfast.loading import refuse_push_to_hub

        refuse_push_to_hub()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the tensors that ``module``'s own rule covers."""
        for tensor, init in self._init_rules(module):
            init(tensor)

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

    # -- transformers model API ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the first parameter."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the first floating-point parameter."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (optionally only those with requires_grad, or without the embedding tables)."""
        skipped = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and id(p) not in skipped)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each encoder layer in the backward pass to save activation memory."""
        for module in self.modules():
            if isinstance(module, CLIPEncoder):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Undo :meth:`gradient_checkpointing_enable`."""
        for module in self.modules():
            if isinstance(module, CLIPEncoder):
                module.gradient_checkpointing = False

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``to()``, ``cuda()``, ``half()``... also drop the CPU weight packs, which the moved weights no longer use."""
        for module in self.modules():
            _PACKS.pop(module, None)
        return super()._apply(fn, *args, **kwargs)

    def set_cpu_weight_packing(self, enabled: bool = True) -> "CLIPPreTrainedModel":
        """Opt in to (or out of) MKL weight packing for float32 CPU inference; returns the model.

        Each encoder layer then packs its float32 weights once, on its second CPU call without autograd (a
        one-shot call never pays for packing), and multiplies by the packs from then on: the same float32 math,
        ~1.3x faster at batch 1 for ViT-B/32 (~1.05x at batch 32). The packs cost one extra copy of the Linear
        weights of each tower that ran on CPU (~340 MB for the B/32 vision tower) and are rebuilt when a parameter
        changes: a new parameter or storage, ``load_state_dict``, in-place ops, optimizer steps (fused ones
        included: a sample of each parameter's values is checked on every call). Writes through ``param.data`` to
        a few elements can slip past the sample: call this again after them (it drops the packs, so the next call
        repacks). Off: the packs are freed.

        Example:
            >>> model = CLIPModel.from_pretrained(path).eval().set_cpu_weight_packing()  # doctest: +SKIP
        """
        for module in self.modules():
            if hasattr(module, "cpu_weight_packing"):
                module.cpu_weight_packing = bool(enabled)
                _PACKS.pop(module, None)
        return self

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding (text models) or the patch embedding (vision models)."""
        raise NotImplementedError(f"{type(self).__name__} has no single input embedding.")

    def get_output_embeddings(self) -> None:
        return None

    def tie_weights(self) -> None:
        """CLIP ties no weights; present for API compatibility."""

    def can_generate(self) -> bool:
        return False

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Grow or shrink the token table (e.g. after ``tokenizer.add_tokens``), keeping existing rows, as
        transformers does: the size rounded up to ``pad_to_multiple_of``; new rows drawn around the old rows' mean
        (``mean_resizing``, with 1e-9 of their covariance) or from the initialisation rule; ``requires_grad`` kept.
        """
        old = self.get_input_embeddings()
        if not isinstance(old, nn.Embedding):
            raise TypeError(f"{type(self).__name__} has no token embedding to resize.")
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        size = old.num_embeddings if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of:
            size = -(-size // int(pad_to_multiple_of)) * int(pad_to_multiple_of)
        new = nn.Embedding(size, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            keep = min(size, old.num_embeddings)
            new.weight[:keep] = old.weight[:keep]
            if size > keep:
                new.weight[keep:] = (_rows_like(old.weight, size - keep) if mean_resizing else
                                     torch.randn_like(new.weight[keep:]) * 0.02 * self.config.initializer_factor)
        new.weight.requires_grad_(old.weight.requires_grad)
        self._text_tower().embeddings.token_embedding = new
        text_config = self.config.text_config if isinstance(self.config, CLIPConfig) else self.config
        text_config.vocab_size = size
        return new

    def _text_tower(self) -> CLIPTextTransformer:
        return self.text_model  # type: ignore[return-value]

    @classmethod
    def _from_config(cls, config: PretrainedConfig, torch_dtype: torch.dtype | None = None,
                     attn_implementation: str | None = None, **kwargs: Any) -> Any:
        """Build a randomly initialised model from a config (transformers' private constructor)."""
        from clipfast.loading import build_model

        return build_model(cls, config, torch_dtype=kwargs.pop("dtype", torch_dtype),
                           attn_implementation=attn_implementation)

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> Any:
        """Alias of :meth:`_from_config` (the Auto classes' spelling)."""
        return cls._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """Load a model from a folder or hub id; see :func:`clipfast.loading.from_pretrained` for the options.

        Example:
            >>> model = CLIPModel.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        """
        from clipfast.loading import from_pretrained

        return from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> None:
        """Write config.json and model.safetensors, loadable by clipfast and by transformers 4.x and 5.x."""
        from clipfast.loading import save_pretrained

        save_pretrained(self, save_directory, **kwargs)


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


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension, without epsilon (as the reference)."""
    return x / x.norm(p=2, dim=-1, keepdim=True)


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
        _ignore_extra("get_text_features", kwargs)
        return self.text_projection(self.text_model.pooled_output(input_ids, attention_mask, position_ids))

    def get_image_features(self, pixel_values: torch.Tensor | None = None, output_attentions: bool | None = None,
                           output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                           return_dict: bool | None = None, **kwargs: Any) -> torch.Tensor:
        """Projected (not normalized) image embeddings, shape (B, projection_dim); other keywords (the
        processor's ``input_ids``, ...) are ignored with a warning, as the reference does."""
        _ignore_extra("get_image_features", kwargs)
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
        loss = self._loss(logits, labels) if labels is not None else None
        out = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=vision_out.hidden_states,
                                    attentions=vision_out.attentions)
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """MSE for regression, cross-entropy for single-label, BCE-with-logits for multi-label classification."""
        labels = labels.to(logits.device)
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        problem = self.config.problem_type
        if problem == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if problem == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if problem == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        raise ValueError(f"problem_type={problem!r} is not one of 'regression', 'single_label_classification', "
                         "'multi_label_classification'.")


MODEL_CLASSES: dict[str, type[CLIPPreTrainedModel]] = {
    cls.__name__: cls
    for cls in (CLIPModel, CLIPTextModel, CLIPVisionModel, CLIPTextModelWithProjection,
                CLIPVisionModelWithProjection, CLIPForImageClassification)
}

__all__ = [*MODEL_CLASSES, "CLIPPreTrainedModel", "CLIPTextTransformer", "CLIPVisionTransformer", "CLIPEncoder",
           "CLIPEncoderLayer", "CLIPAttention", "CLIPMLP", "CLIPTextEmbeddings", "CLIPVisionEmbeddings",
           "ModelOutput", "BaseModelOutput", "BaseModelOutputWithPooling", "CLIPOutput", "CLIPTextModelOutput",
           "CLIPVisionModelOutput", "ImageClassifierOutput"]
