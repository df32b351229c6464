"""MKL weight packing for float32 CPU inference (opt-in): same numbers as the plain path, used only where safe."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import clipfast
from clipfast import kernels, modeling
from clipfast.optimize import cpu_bf16_matmuls, quantize_int8
from helpers.configs import tiny_config_dict
from helpers.process_state import torch_settings

pytestmark = pytest.mark.skipif(not kernels.mkl_packing_available(), reason="this PyTorch build has no MKL packing")


def _model(**overrides) -> clipfast.CLIPModel:
    return clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict(**overrides))).eval().set_cpu_weight_packing()


def _has_packs(module: torch.nn.Module) -> bool:
    return kernels._PACKS.get(module, (None, None))[1] is not None


def _packed_modules(model: torch.nn.Module) -> int:
    return sum(_has_packs(module) for module in model.modules())


def _packed_layers(model: torch.nn.Module) -> int:
    """Packed attention and MLP modules (the patch embedding, outside the encoders, not counted)."""
    return sum(_has_packs(module) for module in model.modules()
               if isinstance(module, (modeling.CLIPAttention, modeling.CLIPMLP)))


def _outputs(model: clipfast.CLIPModel, text_inputs, pixel_values) -> dict[str, torch.Tensor]:
    """The model's outputs from its second call (layers pack on their second call with the same weights)."""
    ids, mask = text_inputs
    model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, output_hidden_states=True)
    return {"text": out.text_embeds, "image": out.image_embeds, "logits": out.logits_per_image,
            "hidden": out.vision_model_output.hidden_states[-1]}


def _plain(model: clipfast.CLIPModel, text_inputs, pixel_values) -> dict[str, torch.Tensor]:
    model.set_cpu_weight_packing(False)
    try:
        with torch.no_grad():
            return _outputs(model, text_inputs, pixel_values)
    finally:
        model.set_cpu_weight_packing(True)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_packed_equals_plain(act, attn, mode, text_inputs, pixel_values):
    model = _model(text={"hidden_act": act}, vision={"hidden_act": act})
    model.config._attn_implementation = attn
    for sub in (model.config.text_config, model.config.vision_config):
        sub._attn_implementation = attn
    expected = _plain(model, text_inputs, pixel_values)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        got = _outputs(model, text_inputs, pixel_values)
    assert _packed_modules(model) == 2 * (2 + 2) + 1  # attention + MLP of 2 text and 2 vision layers, patches
    _assert_close(got, expected)
    with torch.no_grad():  # packs made under inference_mode serve a later no_grad call
        _assert_close(_outputs(model, text_inputs, pixel_values), expected)


def test_packs_follow_weight_updates(text_inputs, pixel_values):
    model = _model()
    with torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
        other = _model()
        other.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()})
        model.load_state_dict(other.state_dict())  # in-place copy_: same storage, new version
        got = _outputs(model, text_inputs, pixel_values)
    _assert_close(got, _plain(other, text_inputs, pixel_values))
    with torch.no_grad():  # a weight replaced by new storage
        layer = model.vision_model.encoder.layers[0].mlp.fc1
        layer.weight = torch.nn.Parameter(torch.randn_like(layer.weight))
        got = _outputs(model, text_inputs, pixel_values)
    _assert_close(got, _plain(model, text_inputs, pixel_values))


def test_training_uses_autograd_path(text_inputs, pixel_values):
    model = _model()
    with torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
    out = model(input_ids=text_inputs[0], attention_mask=text_inputs[1], pixel_values=pixel_values, return_loss=True)
    out.loss.backward()
    grad = model.vision_model.encoder.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    pixels = pixel_values.clone().requires_grad_(True)  # gradient to the input of a frozen model
    model.requires_grad_(False)
    model.get_image_features(pixel_values=pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_turning_packing_off_frees_packs(text_inputs, pixel_values):
    model = _model()
    with torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
    assert _packed_modules(model) > 0
    model.set_cpu_weight_packing(False)
    assert _packed_modules(model) == 0
    with torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
    assert _packed_modules(model) == 0


def test_copies_and_pickles_ignore_packs(text_inputs, pixel_values):
    model = _model()
    with torch.no_grad():
        expected = _outputs(model, text_inputs, pixel_values)
    clone = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    assert set(clone.state_dict()) == set(model.state_dict())
    with torch.no_grad():
        _assert_close(_outputs(clone, text_inputs, pixel_values), expected)
        _assert_close(_outputs(restored, text_inputs, pixel_values), expected)


def test_bf16_matmul_settings_are_respected(text_inputs, pixel_values):
    """With float32 matmuls allowed to round to bf16, the exact packed product would override that choice."""
    model = _model()
    with torch_settings(**{"mkldnn.matmul.fp32_precision": "bf16"}), torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
    assert _packed_modules(model) == 0
    cpu_bf16_matmuls(model)  # bf16 inside the encoders only: the patch embedding stays exact, and may pack
    with torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
    assert _packed_layers(model) == 0


def test_other_dtypes_and_swapped_layers_use_plain_path(text_inputs, pixel_values):
    model = _model().to(torch.bfloat16)
    with torch.no_grad():
        for _ in range(2):
            model.get_image_features(pixel_values=pixel_values)
    assert _packed_modules(model) == 0
    model = quantize_int8(_model())  # Linear layers only: the patch convolution stays float32
    with torch.no_grad():
        for _ in range(2):
            model.get_image_features(pixel_values=pixel_values)
    assert _packed_layers(model) == 0


def test_weights_made_under_inference_mode(text_inputs, pixel_values):
    with torch.inference_mode():
        model = _model()
        for _ in range(2):
            model.get_image_features(pixel_values=pixel_values)
    assert _packed_modules(model) == 0


def test_without_mkl_the_plain_path_runs(text_inputs, pixel_values, monkeypatch):
    monkeypatch.setattr(kernels, "mkl_packing_available", lambda: False)
    model = _model()
    with torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
    assert _packed_modules(model) == 0


@pytest.mark.parametrize("rows", [1, 7, 50, 333])
def test_packed_linear_any_row_count(rows):
    """One pack serves every row count (the packing hint is only a hint), 2-D and 3-D inputs alike."""
    linear = torch.nn.Linear(48, 40)
    packed = kernels.PackedLinear([linear.weight], [linear.bias])
    x = torch.randn(rows, 48)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), linear(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed(x.view(1, rows, 48)), linear(x).view(1, rows, 40), atol=1e-5, rtol=1e-5)
        assert packed(torch.randn(0, 48)).shape == (0, 40)


def test_moving_the_model_drops_its_packs(text_inputs, pixel_values):
    model = _model()
    with torch.no_grad():
        expected = _outputs(model, text_inputs, pixel_values)
    assert _packed_modules(model) > 0
    model.to(torch.float64)
    assert _packed_modules(model) == 0
    model.float()
    with torch.no_grad():  # back in float32 on CPU: packed again, same numbers
        _assert_close(_outputs(model, text_inputs, pixel_values), expected)
    assert _packed_modules(model) > 0


@pytest.mark.parametrize("out_features,in_features", [(1, 1), (3, 5), (37, 13), (2304, 768), (5, 3072)])
def test_packed_linear_odd_shapes(out_features, in_features):
    linear = torch.nn.Linear(in_features, out_features)
    packed = kernels.PackedLinear([linear.weight], [linear.bias], scale=1.702, bias_scale=1.0)
    x = torch.randn(9, in_features)
    with torch.no_grad():
        expected = x @ (linear.weight * 1.702).t() + linear.bias
        torch.testing.assert_close(packed(x), expected, atol=1e-4, rtol=1e-5)


def test_packing_is_opt_in(text_inputs, pixel_values):
    model = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict())).eval()
    with torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
    assert _packed_modules(model) == 0
    assert model.set_cpu_weight_packing() is model


def test_data_writes_are_seen_after_opting_in_again(text_inputs, pixel_values):
    """``param.data`` writes bump no version counter: calling set_cpu_weight_packing again repacks."""
    model = _model()
    with torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
        for param in model.parameters():
            param.data.mul_(1.01)
    model.set_cpu_weight_packing(True)
    with torch.no_grad():
        got = _outputs(model, text_inputs, pixel_values)
    _assert_close(got, _plain(model, text_inputs, pixel_values))


@pytest.mark.parametrize("where", ["fc1", "q_proj", "patch_embedding", "global"])
def test_hooked_layers_are_called(where, text_inputs, pixel_values):
    """Forward hooks (feature capture, pruning, ...) on a layer make the fast paths call that layer."""
    model = _model()
    layer = {"fc1": model.vision_model.encoder.layers[1].mlp.fc1,
             "q_proj": model.vision_model.encoder.layers[0].self_attn.q_proj,
             "patch_embedding": model.vision_model.embeddings.patch_embedding,
             "global": model.vision_model.encoder.layers[0].mlp.fc2}[where]
    seen = []

    def hook(module, args, output):
        if module is not layer:
            return None
        seen.append(output.shape)
        return output * 2  # a hook that changes the output must change the result

    if where == "global":
        handle = torch.nn.modules.module.register_module_forward_hook(hook)
    else:
        handle = layer.register_forward_hook(hook)
    try:
        expected = _plain(model, text_inputs, pixel_values)
        seen.clear()
        with torch.no_grad():
            got = _outputs(model, text_inputs, pixel_values)
    finally:
        handle.remove()
    assert seen, "the hook did not run"
    _assert_close(got, expected)
    with torch.no_grad():
        unhooked = _outputs(model, text_inputs, pixel_values)
    assert not torch.allclose(unhooked["image"], got["image"])


def test_pipeline_packs_the_model_it_loads(tmp_path):
    clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict())).save_pretrained(tmp_path)
    from clipfast.pipelines import _load_source

    model, _, _ = _load_source(str(tmp_path), None, object(), object(), None, {}, True, {})
    assert all(m.cpu_weight_packing for m in model.modules() if hasattr(m, "cpu_weight_packing"))


@pytest.mark.parametrize("overrides", [{}, dict(text={"hidden_act": "gelu", "num_attention_heads": 2},
                                                vision={"hidden_act": "gelu", "image_size": 33, "patch_size": 5,
                                                        "num_channels": 1})], ids=["default", "gelu-1ch-odd"])
def test_packed_model_matches_transformers(overrides, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = tiny_config_dict(**overrides)
    ref = transformers.CLIPModel(transformers.CLIPConfig(**config)).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path).set_cpu_weight_packing()
    vision = config["vision_config"]
    pixels = torch.randn(3, vision.get("num_channels", 3), vision["image_size"], vision["image_size"])
    ids = torch.randint(1, 97, (2, 9))
    ids[:, -1] = 98
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.inference_mode():
        expected = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True)
        ours(input_ids=ids, attention_mask=mask, pixel_values=pixels)  # layers pack on their second call
        got = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True)
    assert _packed_modules(ours) > 0
    for name in ("logits_per_image", "text_embeds", "image_embeds"):
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    for a, b in zip(got.vision_model_output.hidden_states, expected.vision_model_output.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_one_shot_use_does_not_pack(text_inputs, pixel_values):
    """Packing costs about two plain calls: a layer packs on its second call with the same weights."""
    model = _model()
    ids, mask = text_inputs
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
        assert _packed_modules(model) == 0
        model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
        assert _packed_modules(model) == 2 * (2 + 2) + 1
        with torch.no_grad():  # new weights: the next call is plain again, the one after repacks
            model.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(1.5)
        model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
        assert not _has_packs(model.vision_model.encoder.layers[0].mlp)
        model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
        assert _has_packs(model.vision_model.encoder.layers[0].mlp)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_packs_follow_fused_optimizer_steps(optimizer, text_inputs, pixel_values):
    """Fused optimizers update weights in place without bumping version counters: the sampled values tell."""
    model = _model()
    make = {"adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
            "sgd": lambda p: torch.optim.SGD(p, lr=1e-1, fused=True)}[optimizer]
    opt = make(model.parameters())
    for _ in range(2):
        with torch.no_grad():
            _outputs(model, text_inputs, pixel_values)  # evaluation packs the layers
        assert _packed_layers(model) > 0
        model.train()
        ids, mask = text_inputs
        model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, return_loss=True).loss.backward()
        opt.step()
        opt.zero_grad()
        model.eval()
        with torch.no_grad():
            got = _outputs(model, text_inputs, pixel_values)
        _assert_close(got, _plain(model, text_inputs, pixel_values))


def test_replaced_parameters_are_never_mistaken_for_the_old_ones(text_inputs, pixel_values):
    """A weight replaced twice may land at the old address with the same version: the packs are made again."""
    model = _model()
    layer = model.vision_model.encoder.layers[0].mlp.fc1
    with torch.no_grad():
        for trial in range(4):
            _outputs(model, text_inputs, pixel_values)
            original = layer.weight
            layer.weight = torch.nn.Parameter(torch.randn_like(original))
            layer.weight = torch.nn.Parameter(original.detach().clone() + 0.5 * (trial + 1))
            del original
            got = _outputs(model, text_inputs, pixel_values)
            _assert_close(got, _plain(model, text_inputs, pixel_values))


def test_activation_swapped_after_packing(text_inputs, pixel_values):
    """The MLP packs fold quick_gelu's 1.702 in: another activation makes them again."""
    model = _model()
    with torch.no_grad():
        _outputs(model, text_inputs, pixel_values)
        for layer in model.vision_model.encoder.layers:
            layer.mlp.activation_fn = torch.nn.GELU()
        got = _outputs(model, text_inputs, pixel_values)
    _assert_close(got, _plain(model, text_inputs, pixel_values))


def test_forward_mode_ad_sees_the_plain_ops(pixel_values):
    """jvp through a packed model: MKL's packed product has no forward-AD formula, so the plain ops run."""
    model = _model(vision={"hidden_act": "quick_gelu"})
    model.config.vision_config._attn_implementation = "eager"  # sdpa has no forward AD
    tangent = torch.randn_like(pixel_values)
    with torch.no_grad():
        for _ in range(2):
            model.get_image_features(pixel_values=pixel_values)
        packed = torch.func.jvp(lambda p: model.get_image_features(pixel_values=p), (pixel_values,), (tangent,))
        model.set_cpu_weight_packing(False)
        plain = torch.func.jvp(lambda p: model.get_image_features(pixel_values=p), (pixel_values,), (tangent,))
    assert packed[1].abs().max() > 0
    torch.testing.assert_close(packed[1], plain[1], atol=1e-5, rtol=1e-5)


def test_swapped_layers_with_other_geometry_are_called(pixel_values):
    """Only the plain patchify convolution becomes a matmul, and only biased Linears take the folded MLP: other
    layers are called as they are (the ground truth: the same model with a no-op hook, which forces the call)."""
    model = _model()
    embeddings = model.vision_model.embeddings
    width = embeddings.patch_embedding.out_channels
    for conv in (torch.nn.Conv2d(3, width, 2, 2, bias=True),  # 30 px: a 15 x 15 grid either way
                 torch.nn.Conv2d(3, width, 4, 2, padding=1, bias=False)):
        embeddings.patch_embedding = conv
        with torch.no_grad():
            for _ in range(2):
                got = model.get_image_features(pixel_values=pixel_values)
            handle = conv.register_forward_hook(lambda module, args, output: None)
            want = model.get_image_features(pixel_values=pixel_values)
            handle.remove()
        torch.testing.assert_close(got, want)
    mlp = model.text_model.encoder.layers[0].mlp
    for name in ("fc1", "fc2"):
        linear = getattr(mlp, name)
        setattr(mlp, name, torch.nn.Linear(linear.in_features, linear.out_features, bias=False))
        with torch.no_grad():
            hidden = torch.randn(2, 5, mlp.fc1.in_features)
            torch.testing.assert_close(mlp(hidden), mlp.fc2(mlp.activation_fn(mlp.fc1(hidden))))
        setattr(mlp, name, linear)


def test_backward_hooks_on_the_patch_convolution_fire(pixel_values):
    model = _model()
    calls = []
    handle = model.vision_model.embeddings.patch_embedding.register_full_backward_hook(
        lambda module, grad_in, grad_out: calls.append(grad_out[0].shape))
    try:
        model.get_image_features(pixel_values=pixel_values.clone().requires_grad_()).sum().backward()
    finally:
        handle.remove()
    assert len(calls) == 1



def test_threads_sharing_a_model_while_it_packs(text_inputs, pixel_values):
    """Threads calling one model at once while its layers pack (again after each reset) each get their own
    answer: a pack and the record of what it was made from are published together."""
    from concurrent.futures import ThreadPoolExecutor

    model = _model()
    ids, mask = text_inputs
    want = _plain(model, text_inputs, pixel_values)
    model.set_cpu_weight_packing(False)
    with torch.no_grad():
        want_rows = model.get_image_features(pixel_values=pixel_values)

    def call(index: int) -> None:
        with torch.inference_mode():
            if index % 2:
                row = index % len(pixel_values)
                got = model.get_image_features(pixel_values=pixel_values[row:row + 1])
                torch.testing.assert_close(got, want_rows[row:row + 1], atol=1e-5, rtol=1e-5)
            else:
                out = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
                torch.testing.assert_close(out.logits_per_image, want["logits"], atol=1e-5, rtol=1e-5)

    for _ in range(3):
        model.set_cpu_weight_packing()  # fresh: the layers pack during the concurrent calls
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(call, range(48)))
        assert _packed_layers(model) > 0
        model.set_cpu_weight_packing(False)
