"""CUDA checks: the reference's numbers on the GPU, half precision, flash attention, compile, the GPU processor.

The pipeline runs on the GPU in tests/test_pipeline.py (its DEVICE is CUDA where there is one).

Every test here skips without a CUDA GPU (CI has none); ``benchmarks/gpu_check.sh`` runs them on a lent GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clipfast
from helpers import reference
from helpers.configs import tiny_config_dict

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_tf32():
    """Parity on the GPU means full fp32 matmuls: TF32 would move both libraries by ~1e-3."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture
def saved(tmp_path):
    """A tiny random checkpoint written by transformers."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel(transformers.CLIPConfig(**tiny_config_dict(text={"eos_token_id": 98}))).eval()
    ref.save_pretrained(tmp_path)
    return tmp_path, ref


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_fp32_on_cuda_matches_transformers(saved, attn, text_inputs, pixel_values):
    transformers = reference("transformers")
    path, _ = saved
    ref = transformers.CLIPModel.from_pretrained(path, attn_implementation=attn).cuda().eval()
    ours = clipfast.CLIPModel.from_pretrained(path, attn_implementation=attn, device_map="cuda").eval()
    ids, mask = (t.cuda() for t in text_inputs)
    pixels = pixel_values.cuda()
    with torch.no_grad():
        a = ref(ids, pixels, mask, return_loss=True, output_hidden_states=True)
        b = ours(ids, pixels, mask, return_loss=True, output_hidden_states=True)
    for key in ("logits_per_image", "text_embeds", "image_embeds", "loss"):
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-5)
    for x, y in zip(b.vision_model_output.hidden_states, a.vision_model_output.hidden_states):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_transformers(saved, dtype, text_inputs, pixel_values):
    transformers = reference("transformers")
    path, _ = saved
    ref = transformers.CLIPModel.from_pretrained(path, torch_dtype=dtype, attn_implementation="sdpa").cuda().eval()
    ours = clipfast.CLIPModel.from_pretrained(path, torch_dtype=dtype, device_map="cuda").eval()
    ids, mask = (t.cuda() for t in text_inputs)
    pixels = pixel_values.cuda().to(dtype)
    with torch.no_grad():
        a, b = ref(ids, pixels, mask), ours(ids, pixels, mask)
    assert b.image_embeds.dtype == dtype
    for key in ("text_embeds", "image_embeds"):
        cos = torch.nn.functional.cosine_similarity(a[key].float(), b[key].float(), dim=-1)
        assert cos.min() > 0.999, (key, cos)


def test_flash_attention_equals_sdpa_with_padding(saved, text_inputs, pixel_values):
    """flash_attention_2 (the flash_attn package or PyTorch's kernel) on right-padded text and on images."""
    path, _ = saved
    kwargs = dict(torch_dtype=torch.bfloat16, device_map="cuda")
    sdpa = clipfast.CLIPModel.from_pretrained(path, attn_implementation="sdpa", **kwargs).eval()
    flash = clipfast.CLIPModel.from_pretrained(path, attn_implementation="flash_attention_2", **kwargs).eval()
    ids, mask = (t.cuda() for t in text_inputs)
    pixels = pixel_values.cuda().bfloat16()
    with torch.no_grad():
        a, b = sdpa(ids, pixels, mask), flash(ids, pixels, mask)
    for key in ("text_embeds", "image_embeds"):
        torch.testing.assert_close(b[key].float(), a[key].float(), atol=2e-2, rtol=2e-2)


def test_compile_on_cuda_matches_eager(saved, pixel_values):
    from clipfast.optimize import compile as compile_model

    path, _ = saved
    model = clipfast.CLIPModel.from_pretrained(path, device_map="cuda").eval()
    pixels = pixel_values.cuda()
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=pixels)
        got = compile_model(model).get_image_features(pixel_values=pixels)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_fast_processor_on_cuda_equals_exact_class():
    """The GPU resampler reproduces Pillow's arithmetic: uint8 images give the exact class's pixels."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((480, 640), (333, 500), (97, 61))]
    exact = clipfast.CLIPImageProcessor()(images, return_tensors="pt").pixel_values
    fast = clipfast.CLIPImageProcessorFast()(images, return_tensors="pt", device="cuda").pixel_values
    assert fast.device.type == "cuda"
    assert (fast.cpu() - exact).abs().max() <= 1e-6

