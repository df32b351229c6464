"""clipfast.optimize on tiny models: outputs stay close to float32, the API and state_dict keys are unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clipfast import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection
from clipfast.optimize import (UpcastLinear, compile, cpu_bf16_as_fp32, cpu_bf16_matmuls, cpu_has_native_bf16,
                               quantize_int8)

# wide enough (64) that int8 rounding averages out, small enough to run in milliseconds
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture
def model() -> CLIPModel:
    config = CLIPConfig(text_config=dict(TINY, vocab_size=99), vision_config=dict(TINY, image_size=32, patch_size=8),
                        projection_dim=32)
    return CLIPModel(config).eval()


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 98, (3, 9))
    ids[:, -1] = 98  # eos_token_id of the tiny config's vocab is its largest id
    return torch.rand(3, 3, 32, 32), ids


def _embeddings(model: nn.Module, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return model.get_image_features(pixel_values=pixels), model.get_text_features(input_ids=ids)


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.cosine_similarity(a.float(), b.float(), dim=-1).min())


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_int8_close_to_fp32(model, inputs, per_channel):
    image, text = _embeddings(model, *inputs)
    quantized = quantize_int8(copy.deepcopy(model), per_channel=per_channel)
    linears = [m for m in quantized.modules() if type(m) is nn.Linear]
    assert not linears, "every nn.Linear should be replaced by a quantized one"
    q_image, q_text = _embeddings(quantized, *inputs)
    assert q_image.shape == image.shape and q_image.dtype == torch.float32
    # random tiny weights are harder on int8 than trained full-size ones (benchmarks report the real figure)
    assert _min_cosine(q_image, image) > 0.98
    assert _min_cosine(q_text, text) > 0.98


@pytest.mark.parametrize("engine", [e for e in ("x86", "fbgemm", "onednn") if e in
                                    torch.backends.quantized.supported_engines])
def test_quantize_int8_each_engine_close_and_global_engine_restored(model, inputs, engine):
    """The layers are packed for ``engine`` and keep it; the process-wide engine setting is left as it was."""
    before = torch.backends.quantized.engine
    image, text = _embeddings(model, *inputs)
    quantized = quantize_int8(copy.deepcopy(model), engine=engine)
    assert torch.backends.quantized.engine == before
    q_image, q_text = _embeddings(quantized, *inputs)
    assert _min_cosine(q_image, image) > 0.98 and _min_cosine(q_text, text) > 0.98


def test_quantize_int8_unknown_engine_is_a_clear_error(model):
    with pytest.raises(ValueError, match="quantized engine"):
        quantize_int8(model, engine="tpu")


def test_quantize_int8_refuses_non_fp32(model):
    with pytest.raises(ValueError, match="float32"):
        quantize_int8(model.to(torch.bfloat16))


@pytest.mark.parametrize("cache", [False, True])
def test_cpu_bf16_as_fp32_matches_fp32_with_rounded_weights(model, inputs, cache):
    pixels, ids = inputs
    pixels = pixels.to(torch.bfloat16)  # callers cast pixel_values to the model's dtype
    rounded = copy.deepcopy(model).to(torch.bfloat16).float()  # float32 compute on bf16-rounded weights
    expected = _embeddings(rounded, pixels.float(), ids)
    upcast = cpu_bf16_as_fp32(model.to(torch.bfloat16), cache=cache)
    image, text = _embeddings(upcast, pixels, ids)
    assert image.dtype == text.dtype == torch.float32
    torch.testing.assert_close(image, expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(text, expected[1], rtol=1e-4, atol=1e-5)


def test_cpu_bf16_as_fp32_cache_follows_weight_changes(model, inputs):
    """The cached float32 weights are made again after load_state_dict, an optimizer step or new storage."""
    import pickle

    pixels, ids = inputs
    pixels = pixels.to(torch.bfloat16)
    cached = cpu_bf16_as_fp32(copy.deepcopy(model).to(torch.bfloat16), cache=True)
    plain = cpu_bf16_as_fp32(copy.deepcopy(model).to(torch.bfloat16), cache=False)
    _embeddings(cached, pixels, ids)  # fills the caches
    other = {k: v + 0.05 * torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
             for k, v in cached.state_dict().items()}
    for net in (cached, plain):
        net.load_state_dict(other)
    for got, want in zip(_embeddings(cached, pixels, ids), _embeddings(plain, pixels, ids)):
        torch.testing.assert_close(got, want)
    layer = cached.vision_model.encoder.layers[0].mlp.fc1
    for net in (cached, plain):  # a fused optimizer updates in place without bumping the version counter
        net.vision_model.encoder.layers[0].mlp.fc1.weight.grad = torch.ones_like(layer.weight)
        torch.optim.SGD([net.vision_model.encoder.layers[0].mlp.fc1.weight], lr=0.5, fused=True).step()
    for got, want in zip(_embeddings(cached, pixels, ids), _embeddings(plain, pixels, ids)):
        torch.testing.assert_close(got, want)
    restored = pickle.loads(pickle.dumps(cached))  # caches are not pickled; copies make their own
    for got, want in zip(_embeddings(restored, pixels, ids), _embeddings(plain, pixels, ids)):
        torch.testing.assert_close(got, want)


def test_cpu_bf16_as_fp32_cache_shared_by_threads(model, inputs):
    """Threads calling one cached model while its float32 copies are made each get the plain path's answer."""
    from concurrent.futures import ThreadPoolExecutor

    pixels, ids = inputs
    pixels = pixels.to(torch.bfloat16)
    plain = cpu_bf16_as_fp32(copy.deepcopy(model).to(torch.bfloat16), cache=False)
    want = _embeddings(plain, pixels, ids)
    for _ in range(3):
        cached = cpu_bf16_as_fp32(copy.deepcopy(model).to(torch.bfloat16), cache=True)
        with ThreadPoolExecutor(6) as pool:
            for got in pool.map(lambda _: _embeddings(cached, pixels, ids), range(24)):
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b)


def test_cpu_bf16_as_fp32_keeps_weights_and_keys(model):
    keys = set(model.state_dict())
    upcast = cpu_bf16_as_fp32(model.to(torch.bfloat16))
    assert set(upcast.state_dict()) == keys
    layers = [m for m in upcast.modules() if isinstance(m, UpcastLinear)]
    assert layers and all(m.weight.dtype == torch.bfloat16 for m in layers)
    assert upcast.text_model.embeddings.token_embedding.weight.dtype == torch.bfloat16
    assert not any(isinstance(m, nn.Linear) for m in upcast.modules())


def test_cpu_bf16_as_fp32_forward_and_vision_only():
    config = CLIPConfig(text_config=dict(TINY, vocab_size=99), vision_config=dict(TINY, image_size=32, patch_size=8),
                       projection_dim=32).vision_config
    vision = CLIPVisionModelWithProjection(config).eval().to(torch.bfloat16)
    out = cpu_bf16_as_fp32(vision)(pixel_values=torch.rand(2, 3, 32, 32, dtype=torch.bfloat16))
    assert out.image_embeds.shape == (2, config.projection_dim) and out.image_embeds.dtype == torch.float32


def test_cpu_has_native_bf16_is_a_bool():
    assert isinstance(cpu_has_native_bf16(), bool)


def test_cpu_bf16_matmuls_close_to_fp32_and_restores_the_setting(model, inputs):
    image, text = _embeddings(model, *inputs)
    keys = set(model.state_dict())
    before = torch.backends.mkldnn.matmul.fp32_precision
    fast = cpu_bf16_matmuls(copy.deepcopy(model))
    f_image, f_text = _embeddings(fast, *inputs)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert set(fast.state_dict()) == keys and all(p.dtype == torch.float32 for p in fast.parameters())
    assert f_image.dtype == f_text.dtype == torch.float32
    assert _min_cosine(f_image, image) > 0.999 and _min_cosine(f_text, text) > 0.999


def test_cpu_bf16_matmuls_is_on_only_inside_the_encoders(model, inputs):
    seen = []
    encoder = model.vision_model.encoder
    encoder.register_forward_hook(lambda *_: seen.append(torch.backends.mkldnn.matmul.fp32_precision))
    cpu_bf16_matmuls(model)  # its hooks run around the one above
    _embeddings(model, *inputs)
    assert seen == ["bf16"]
    encoder.layers[0].register_forward_pre_hook(lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _embeddings(model, *inputs)
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"


def test_cpu_bf16_matmuls_refuses_bf16_and_foreign_models(model):
    with pytest.raises(ValueError, match="float32"):
        cpu_bf16_matmuls(model.to(torch.bfloat16))
    with pytest.raises(ValueError, match="CLIPEncoder"):
        cpu_bf16_matmuls(nn.Linear(2, 2))


def test_compile_refuses_foreign_models():
    with pytest.raises(ValueError, match="CLIPEncoder"):
        compile(nn.Linear(2, 2))


# torch.compile of even a tiny model takes about 30 s on a 2-core CPU (inductor starts a C++ toolchain):
# `-m "not slow"` leaves it out of a quick run
@pytest.mark.slow
def test_compile_same_outputs_and_keys(model, inputs):
    image, text = _embeddings(model, *inputs)
    keys = set(model.state_dict())
    compiled = compile(copy.deepcopy(model))
    c_image, c_text = _embeddings(compiled, *inputs)
    assert set(compiled.state_dict()) == keys
    torch.testing.assert_close(c_image, image, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c_text, text, rtol=1e-4, atol=1e-5)


def test_swapped_mlp_layers_keep_quick_gelu(model):
    """With int8 (or any swapped) layers the MLP applies quick_gelu in place; same values as the plain formula."""
    from clipfast.modeling import quick_gelu

    mlp = quantize_int8(copy.deepcopy(model)).vision_model.encoder.layers[0].mlp
    x = torch.randn(2, 5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(mlp(x), mlp.fc2(quick_gelu(mlp.fc1(x))), atol=1e-5, rtol=1e-4)

    class Cached(nn.Module):  # a user's layer that hands back a tensor it keeps: must not be overwritten
        def __init__(self) -> None:
            super().__init__()
            self.value = torch.randn(2, 5, 128)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.value

    mlp.fc1 = Cached()
    before = mlp.fc1.value.clone()
    with torch.inference_mode():
        torch.testing.assert_close(mlp(x), mlp.fc2(quick_gelu(before)))
    assert torch.equal(mlp.fc1.value, before)
