"""Fast CPU kernels behind the model's layers, each a drop-in for one layer's reference math.

A layer holds one fast path (``layer.fast``), chosen when its setting changes (the activation at construction,
``set_cpu_weight_packing``), and calls it first; the fast path returns ``None`` whenever it may not run this
call (hooks on the layer, autograd, tracing/compiling/exporting, forward-mode AD, weights of another type or
dtype), and the layer then runs its reference math. Every guard lives here, not in the model.

- :func:`patch_matmul` / :func:`packed_patches`: the stride == kernel patch convolution as one matmul.
- :func:`folded_mlp`: quick_gelu folded into the MLP's matmuls (``z sigmoid(1.702 z) = silu(1.702 z) / 1.702``).
- :func:`packed_attention` / :func:`packed_mlp`: float32 weights pre-packed for MKL (opt-in).

MKL packing. A float32 ``F.linear`` on CPU calls MKL's sgemm, which re-packs the whole weight matrix into its
blocked layout on every call. At batch 1 (50 tokens) that packing costs about as much as the product itself. So
for CPU inference (no autograd) each layer packs its weights once, keeps the packs beside the model, and runs
``cblas_sgemm_compute`` on them: same float32 math (round-off differences only), ~35% faster GEMMs at batch 1 and
~5% at batch 32. q, k and v are packed as one (3D, D) matrix, quick_gelu's 1.702 is folded into the MLP packs,
and the patch embedding is packed as the (D, C*p*p) matrix it is. Packs live in a side table keyed by module
(state_dict, deepcopy and pickling never see them) and are rebuilt when a weight changes through the parameter
(new storage or a new parameter, an in-place update that bumps its version counter, or a change seen in a sample
of its values: fused optimizers update in place without bumping it). Writes through ``param.data`` to a few
elements can go unseen, and the packs cost one extra copy of the Linear weights: hence opt-in,
``model.set_cpu_weight_packing(True)`` (the pipeline turns it on for the models it loads itself). Moving or
casting the model drops the packs.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad
from torch.nn.modules import module as _torch_module  # the global forward-hook registries

from clipfast.activations import Activation, quick_gelu

# ---------------------------------------------------------------------------------------------------------------
# Caches derived from weights, and the guards every fast path shares


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
_PACKS: weakref.WeakKeyDictionary[nn.Module, tuple[WeightsSeen, dict[str, PackedLinear] | None]] = (
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


def fp32_matmuls_exact() -> bool:
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


class PackedLinear:
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


def hooked(layer: nn.Module) -> bool:
    """Whether calling ``layer`` does more than its forward (forward or backward hooks, pruning, parametrized
    weights), so the fast paths that use its weights directly must call it instead."""
    return bool(layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks
                or layer._backward_pre_hooks or hasattr(layer, "parametrizations")
                or _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
                or _torch_module._global_backward_hooks or _torch_module._global_backward_pre_hooks)


def graph_capture() -> bool:
    """Inside torch.jit tracing, torch.compile or torch.export: no branching on tensor values (they are symbolic
    or would be baked in), and the plain ops only."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling() or exporting()


def forward_ad_active() -> bool:
    """Inside forward-mode AD (``torch.func.jvp``/``jacfwd``, ``forward_ad.dual_level``) or another functorch
    transform: MKL's packed product has no forward-AD formula."""
    return forward_ad._current_level >= 0 or torch._C._functorch.maybe_current_level() is not None


def cpu_packs(module: nn.Module, x: torch.Tensor, layers: list[nn.Module],
              build: Callable[[], dict[str, PackedLinear]], salt: Any = None) -> dict[str, PackedLinear] | None:
    """The module's packs of ``layers`` if ``x`` is a CPU float32 inference input and packing is on, else None.

    ``salt``: whatever else ``build`` folds into the packs (the MLP's activation); a different one rebuilds them.
    """
    if not getattr(module, "cpu_weight_packing", False) or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if any(type(m) not in (nn.Linear, nn.Conv2d) or m.weight.dtype != torch.float32 or hooked(m) for m in layers):
        return None  # swapped by an opt-in of clipfast.optimize (int8, upcast), mixed dtypes, or hooked
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return None  # the packed product has no backward
    if graph_capture() or forward_ad_active():
        return None  # exporters, compilers and function transforms see the plain ops
    if any(p.is_inference() or not p.is_contiguous() for p in params):
        return None  # inference tensors keep no version counter to tell an update by; probes need flat views
    if not (mkl_packing_available() and fp32_matmuls_exact()):
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


def drop_packs(module: nn.Module) -> None:
    """Forget the packs of ``module`` (its weights moved, or packing was switched)."""
    _PACKS.pop(module, None)


# ---------------------------------------------------------------------------------------------------------------
# Patch embedding


def is_patch_conv(conv: nn.Module) -> bool:
    """Whether ``conv`` is the plain patchify convolution (stride = kernel, no padding, dilation or groups, no
    bias, not hooked) that :func:`patch_embedding_as_matmul` computes; anything else is called as it is."""
    return (type(conv) is nn.Conv2d and conv.bias is None and tuple(conv.stride) == tuple(conv.kernel_size)
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and not hooked(conv))


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


def patch_matmul(embeddings: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor | None:
    """The patch embedding (B, h*w, D) as a matmul, or None when ``patch_embedding`` is not the plain patchify
    convolution. cuDNN runs this stride == kernel convolution (plus an NCHW->NHWC copy) at a fraction of the GEMM
    rate: a quarter of a bf16 B/32 forward on an H100/H200; oneDNN's takes ~1.4x the matmul on CPU."""
    conv = embeddings.patch_embedding
    return patch_embedding_as_matmul(pixel_values, conv.weight) if is_patch_conv(conv) else None


def packed_patches(embeddings: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor | None:
    """:func:`patch_matmul` on the MKL-packed (D, C*p*p) weight when packing may serve this call."""
    conv = embeddings.patch_embedding
    if not is_patch_conv(conv):
        return None

    def build() -> dict[str, PackedLinear]:
        return {"patch": PackedLinear([conv.weight.reshape(conv.weight.shape[0], -1)], [None])}

    packs = cpu_packs(embeddings, pixel_values, [conv], build)
    return patch_embedding_as_matmul(pixel_values, conv.weight, packs["patch"] if packs is not None else None)


# ---------------------------------------------------------------------------------------------------------------
# Attention


def packed_attention(attn: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                     causal_attention_mask: torch.Tensor | None,
                     output_attentions: bool) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``CLIPAttention.forward`` with q, k, v as one packed (3D, D) projection and a packed output projection."""
    layers = [attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj]

    def build() -> dict[str, PackedLinear]:
        qkv = layers[:3]
        return {"qkv": PackedLinear([m.weight for m in qkv], [m.bias for m in qkv]),
                "out": PackedLinear([attn.out_proj.weight], [attn.out_proj.bias])}

    packs = cpu_packs(attn, hidden_states, layers, build)
    if packs is None:
        return None
    batch, length, _ = hidden_states.shape
    qkv = packs["qkv"](hidden_states).view(batch, length, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, Dh)
    out, weights = attn.attend(q, k, v, attention_mask, causal_attention_mask, output_attentions)  # (B, T, D)
    return packs["out"](out), weights


# ---------------------------------------------------------------------------------------------------------------
# MLP


def folds_quick_gelu(activation: nn.Module) -> bool:
    """Whether the MLP may fold this activation into its matmuls: quick_gelu, not hooked (hooks see it called)."""
    return isinstance(activation, Activation) and activation.fn is quick_gelu and not hooked(activation)


def mlp_fast_path(activation: nn.Module) -> Callable[..., torch.Tensor | None] | None:
    """The MLP's default fast path: the folded quick_gelu for a quick_gelu MLP, else none."""
    return folded_mlp if isinstance(activation, Activation) and activation.fn is quick_gelu else None


def folded_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The MLP with quick_gelu folded in, when the activation is quick_gelu and no autograd or tracer is watching.

    The folded product depends on the grad mode: a tracer (whose check reruns without grad) must see one graph.
    """
    if not folds_quick_gelu(mlp.activation_fn) or (torch.is_grad_enabled() and x.requires_grad) or graph_capture():
        return None
    if _plain_linears(mlp, x):
        return _quick_gelu_mlp(mlp.fc1, mlp.fc2, x)
    if _makes_new_tensor(mlp.fc1) and not hooked(mlp.fc1):
        # layers swapped by clipfast.optimize (int8, upcast): quick_gelu in place, as silu(1.702 z) / 1.702,
        # instead of three new (B, T, intermediate) tensors (~30% of an int8 forward at batch 32)
        hidden = mlp.fc1(x).mul_(1.702)
        return mlp.fc2(F.silu(hidden, inplace=True).mul_(1 / 1.702))
    return None


def packed_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The MLP on MKL-packed fc1/fc2 (quick_gelu's 1.702 folded into the packs), else :func:`folded_mlp`."""
    folds = folds_quick_gelu(mlp.activation_fn)
    scale = 1.702 if folds else 1.0

    def build() -> dict[str, PackedLinear]:
        return {"fc1": PackedLinear([mlp.fc1.weight], [mlp.fc1.bias], scale),
                "fc2": PackedLinear([mlp.fc2.weight], [mlp.fc2.bias], 1 / scale, bias_scale=1.0)}

    # the packs depend on the activation only through the fold (its 1.702 is in them)
    packs = cpu_packs(mlp, x, [mlp.fc1, mlp.fc2], build, salt=folds)
    if packs is None:
        return folded_mlp(mlp, x)
    hidden = packs["fc1"](x)
    if folds:  # the packs hold 1.702 W1, 1.702 b1 and W2 / 1.702
        return packs["fc2"](F.silu(hidden, inplace=True))
    return packs["fc2"](mlp.activation_fn(hidden))


def _plain_linears(mlp: nn.Module, x: torch.Tensor) -> bool:
    """fc1 and fc2 are still plain ``nn.Linear`` in ``x``'s dtype (not swapped by an opt-in of clipfast.optimize,
    not hooked)."""
    fc1, fc2 = mlp.fc1, mlp.fc2
    return (type(fc1) is nn.Linear and type(fc2) is nn.Linear and fc1.weight.dtype == x.dtype
            and fc1.bias is not None and fc2.bias is not None and not hooked(fc1) and not hooked(fc2))


def _quick_gelu_mlp(fc1: nn.Linear, fc2: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Inference MLP with quick_gelu folded into the matmuls: ``z sigmoid(1.702 z) = silu(1.702 z) / 1.702``.

    The GEMMs scale for free (``alpha``/``beta``), so the widest activation of the model takes one in-place
    pass instead of three, and no second (B, T, intermediate) tensor: ~10% of a batch-32 image forward. Same as
    the reference up to float32 rounding.
    """
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    hidden = torch.addmm(fc1.bias, x, fc1.weight.t(), beta=1.702, alpha=1.702)  # 1.702 z
    F.silu(hidden, inplace=True)
    out = torch.addmm(fc2.bias, hidden, fc2.weight.t(), alpha=1 / 1.702)
    return out.view(*shape[:-1], out.shape[-1])


def _makes_new_tensor(layer: nn.Module) -> bool:
    """Layers whose output is a new tensor, safe to overwrite: Linear, and its quantized / upcast replacements."""
    return isinstance(layer, nn.Linear) or type(layer).__module__.startswith(("torch.ao.nn.quantized", "clipfast."))


# ---------------------------------------------------------------------------------------------------------------
# CPU features


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tile units (int8/bf16 matrix engines), as PyTorch reports it."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), as oneDNN reports it.

    Without it (e.g. AVX2-only CPUs), PyTorch's bf16 matmul falls back to a scalar path under 1 GFLOP/s.
    """
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is None or not torch.backends.mkldnn.is_available():
        return False
    return bool(check())
