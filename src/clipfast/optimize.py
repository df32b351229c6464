"""Opt-in speed-ups for inference, each trading something (exactness, memory or start-up time) for speed.

None of these runs by default; ``benchmarks/bench_optimize.py`` measures what each buys and costs:

- :func:`quantize_int8`: dynamic int8 quantisation of every ``nn.Linear`` (CPU only; embeddings move slightly).
- :func:`cpu_bf16_as_fp32`: a bfloat16 model that keeps its bf16 weights but computes in float32, for CPUs
  without native bf16 (no AVX512-BF16 / AMX), where bf16 matmuls are two orders of magnitude slower than fp32.
- :func:`compile`: ``torch.compile`` of the encoders (costs tens of seconds on the first call of each shape).
- :func:`cpu_bf16_matmuls`: a float32 model whose encoder matmuls run on the CPU's bf16 units (AMX /
  AVX512-BF16) with float32 accumulation; weights, state_dict and outputs stay float32.

The exact one lives on the models themselves: ``model.set_cpu_weight_packing()`` packs the float32 weights once for
MKL (same math, ~1.3x at batch 1 on CPU, one extra copy of the Linear weights).

Each function changes the model in place and returns it, so calls chain:

    >>> from clipfast import CLIPModel                                    # doctest: +SKIP
    >>> from clipfast.optimize import quantize_int8                       # doctest: +SKIP
    >>> model = quantize_int8(CLIPModel.from_pretrained("openai/clip-vit-base-patch32"))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipfast.kernels import WeightsSeen, cpu_has_amx, cpu_has_native_bf16
from clipfast.modeling import CLIPEncoder

__all__ = ["quantize_int8", "cpu_has_native_bf16", "cpu_bf16_as_fp32", "UpcastLinear", "cpu_bf16_matmuls", "compile"]


def quantize_int8(model: nn.Module, per_channel: bool = True, engine: str | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` by a dynamically quantised int8 one (weights int8, activations quantised per call).

    CPU inference only. ``per_channel=True`` keeps one scale per output row, which keeps the embeddings much
    closer to float32 than one scale per matrix, at about the same speed. The patch embedding, embeddings and
    LayerNorms stay float32.

    ``engine`` is the quantized backend whose kernels the layers are packed for (the layers keep it whatever
    ``torch.backends.quantized.engine`` says later). By default: ``"onednn"`` on CPUs with AMX, whose int8 tile
    units it uses (a 1600x768 @ 768x3072 layer took 3.1 ms instead of 9.9 ms with ``"x86"``; same embeddings),
    else the current engine (``"x86"``/fbgemm on x86).

    Example:
        >>> model = quantize_int8(model.eval())                            # doctest: +SKIP
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("quantize_int8 runs on CPU only; call model.to('cpu') first (on GPU, use bfloat16).")
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        raise ValueError("quantize_int8 needs a float32 model; call model.float() first.")
    supported = torch.backends.quantized.supported_engines
    engine = engine or ("onednn" if cpu_has_amx() and "onednn" in supported else torch.backends.quantized.engine)
    if engine not in supported:
        raise ValueError(f"engine={engine!r} is not a quantized engine of this PyTorch build; choose one of "
                         f"{[e for e in supported if e != 'none']}.")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine  # read while the weights are packed, not after
        with warnings.catch_warnings():
            # torch >= 2.9 flags torch.ao.quantization as deprecated in favour of torchao, an extra download;
            # the eager dynamic path still works and is what this opt-in uses
            warnings.filterwarnings("ignore", message=r"torch\.(ao\.quantization|quantize_per)")
            return quantize_dynamic(model.eval(), {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    finally:
        torch.backends.quantized.engine = previous


class UpcastLinear(nn.Module):
    """A Linear whose stored weight stays in its low-precision dtype but multiplies in float32.

    With ``cache=True`` a float32 copy of the weight is kept beside it (faster, but three times the bf16 memory),
    made again when the weight changes (``load_state_dict``, an optimizer step, new storage); otherwise the weight
    is upcast on every call. The parameters keep the names ``weight`` and ``bias``, so ``state_dict()`` is
    unchanged.
    """

    def __init__(self, linear: nn.Linear, cache: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.cache = cache
        self.register_buffer("weight_fp32", None, persistent=False)
        self._seen: WeightsSeen | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.float() if self.bias is not None else None
        return F.linear(x.float(), self._float_weight(), bias)

    def _float_weight(self) -> torch.Tensor:
        """The weight in float32: the cached copy while it still matches the weight (autograd always upcasts)."""
        weight = self.weight
        if not self.cache or (torch.is_grad_enabled() and weight.requires_grad) or not weight.is_contiguous():
            return weight.float()
        seen, cached = self._seen, self.weight_fp32
        if cached is None or seen is None or not seen.holds([weight]):
            # the copy first, then the record that vouches for it: a thread that sees the new record finds the
            # new copy (one that sees the old record makes its own)
            seen, cached = WeightsSeen.of([weight], sample=True), weight.detach().float()
            self.weight_fp32, self._seen = cached, seen
        return cached

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, stored={self.weight.dtype}"


def _upcast_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: floating tensor arguments to float32 (pixel_values cast to the model's bf16 dtype)."""
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def cpu_bf16_as_fp32(model: nn.Module, cache: bool = False) -> nn.Module:
    """Make a bfloat16/float16 model compute in float32 while its Linear weights stay in 16 bits.

    For CPUs without native bf16 (see :func:`cpu_has_native_bf16`), where a bf16 model is several times slower
    than float32. Every ``nn.Linear`` becomes an :class:`UpcastLinear`; the small remaining parameters (patch
    convolution, LayerNorms, position and class embeddings, logit scale) become float32, and the token
    embedding stays 16-bit (a lookup costs nothing to upcast). Outputs are float32. The results equal a float32
    model that holds the bf16-rounded weights, up to float32 rounding.

    Example:
        >>> model = CLIPModel.from_pretrained(path, torch_dtype=torch.bfloat16)   # doctest: +SKIP
        >>> if not cpu_has_native_bf16():                                        # doctest: +SKIP
        ...     model = cpu_bf16_as_fp32(model)
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, UpcastLinear(child, cache=cache))
    token_table = _token_embedding(model)
    for module in model.modules():
        if isinstance(module, UpcastLinear) or module is token_table:
            continue
        if isinstance(module, nn.Conv2d):
            module.register_forward_pre_hook(_upcast_input)
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.float()
    return model


def _token_embedding(model: nn.Module) -> nn.Module | None:
    """The text token table, kept 16-bit: the largest non-Linear tensor, and a lookup reads only a few rows."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        table = get() if get is not None else None
    except NotImplementedError:  # CLIPPreTrainedModel subclasses without a single input embedding
        return None
    return table if isinstance(table, nn.Embedding) else None


def cpu_bf16_matmuls(model: nn.Module) -> nn.Module:
    """Run the encoders' float32 matmuls on the CPU's bf16 units (AMX / AVX512-BF16), accumulating in float32.

    While an encoder runs, oneDNN's float32 matmul precision is set to ``"bf16"`` (as
    ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` would do for the whole process) and restored
    after, even on error. Inputs of each matmul are rounded to bfloat16; weights, LayerNorms, softmax, the
    residual stream, ``state_dict()`` and outputs stay float32. Not exact: on a full-size ViT-B/32 (random
    weights) the image embeddings keep a cosine of ~0.999995 to float32 (a bfloat16 model: ~0.99995). On a
    2-core Sapphire-Rapids-class Xeon with AMX the image encoder ran ~1.3x (batch 1) to ~1.5x (batch 32)
    faster than float32 (``benchmarks/bench_optimize.py --parts bf16``); a whole bfloat16 model is faster still
    but less accurate. Without native bf16 (see :func:`cpu_has_native_bf16`) PyTorch keeps float32 math, so
    this changes nothing. The setting is process-wide while a forward runs: other threads' matmuls during that
    time use it too.

    Example:
        >>> model = cpu_bf16_matmuls(CLIPModel.from_pretrained(path))     # doctest: +SKIP
    """
    encoders = [m for m in model.modules() if isinstance(m, CLIPEncoder)]
    if not encoders:
        raise ValueError(f"{type(model).__name__} has no CLIPEncoder; pass a clipfast CLIP model.")
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        raise ValueError("cpu_bf16_matmuls needs a float32 model; a bfloat16 model already computes in bf16.")
    for encoder in encoders:
        encoder.register_forward_pre_hook(_bf16_matmuls_on)
        encoder.register_forward_hook(_bf16_matmuls_off, always_call=True)
    return model


_SAVED_PRECISION: list[str] = []  # a stack: nested encoders restore in order


def _bf16_matmuls_on(module: nn.Module, args: tuple[Any, ...]) -> None:
    _SAVED_PRECISION.append(torch.backends.mkldnn.matmul.fp32_precision)
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"


def _bf16_matmuls_off(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    torch.backends.mkldnn.matmul.fp32_precision = _SAVED_PRECISION.pop()


def compile(model: nn.Module, **kwargs: Any) -> nn.Module:
    """``torch.compile`` every transformer encoder of the model in place (state_dict keys unchanged).

    The encoders hold nearly all the compute, and both ``forward`` and ``get_text_features`` /
    ``get_image_features`` go through them. ``kwargs`` go to ``torch.compile`` (``mode=``, ``dynamic=``, ...).
    Compilation happens on the first call of each input shape and takes tens of seconds on CPU.

    Example:
        >>> model = compile(model, dynamic=True)                           # doctest: +SKIP
    """
    encoders = [m for m in model.modules() if isinstance(m, CLIPEncoder)]
    if not encoders:
        raise ValueError(f"{type(model).__name__} has no CLIPEncoder to compile; pass a clipfast CLIP model.")
    for encoder in encoders:
        encoder.compile(**kwargs)
    return model
