"""Every model class against transformers 4.57, both directions, every output field, eager and sdpa."""

from __future__ import annotations

import pytest
import torch

import clipfast
from helpers import has_reference, reference
from helpers.configs import TINY_TEXT, TINY_VISION, tiny_config_dict

ATOL = 1e-5
CLASSES = ["CLIPModel", "CLIPTextModel", "CLIPVisionModel", "CLIPTextModelWithProjection",
           "CLIPVisionModelWithProjection", "CLIPForImageClassification"]


def _ref_config(name: str, eos: int = 98):
    transformers = reference("transformers")
    cfg = tiny_config_dict(text={"eos_token_id": eos})
    if name in ("CLIPModel", "CLIPForImageClassification"):
        return transformers.CLIPConfig(**cfg, num_labels=3)
    if "Text" in name:
        return transformers.CLIPTextConfig(**cfg["text_config"])
    return transformers.CLIPVisionConfig(**cfg["vision_config"])


def _inputs(name: str, text_inputs, pixel_values) -> dict:
    ids, mask = text_inputs
    if name == "CLIPModel":
        return dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_values,
                    return_loss=True)
    if "Text" in name:
        return dict(input_ids=ids, attention_mask=mask)
    if name == "CLIPForImageClassification":
        return dict(pixel_values=pixel_values, labels=torch.tensor([0, 2, 1, 1]))
    return dict(pixel_values=pixel_values)


def assert_same(a, b, path="out"):
    """Recursively compare two outputs (ModelOutput / tuple / tensor) field by field."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.shape == b.shape, f"{path}: {a.shape} vs {b.shape}"
        assert torch.allclose(a.float(), b.float(), atol=ATOL, rtol=1e-4), f"{path}: max diff {(a - b).abs().max()}"
        return
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{path}: {list(a.keys())} vs {list(b.keys())}"
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
        return
    assert isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)), f"{path}: {type(a)} vs {type(b)}"
    assert len(a) == len(b), f"{path}: len {len(a)} vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert_same(x, y, f"{path}[{i}]")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", CLASSES)
def test_transformers_checkpoint_loads_and_matches(name, attn, tmp_path, text_inputs, pixel_values):
    transformers = reference("transformers")
    ref = getattr(transformers, name)(_ref_config(name)).eval()
    ref.save_pretrained(tmp_path)
    ours = getattr(clipfast, name).from_pretrained(tmp_path, attn_implementation=attn)
    ref = getattr(transformers, name).from_pretrained(tmp_path, attn_implementation="eager").eval()
    inputs = _inputs(name, text_inputs, pixel_values)
    flags = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        assert_same(ref(**inputs, **flags), ours(**inputs, **flags))
        assert_same(ref(**inputs, return_dict=False), ours(**inputs, return_dict=False))


@pytest.mark.parametrize("name", CLASSES)
def test_clipfast_checkpoint_loads_in_transformers(name, tmp_path, text_inputs, pixel_values):
    transformers = reference("transformers")
    config_cls = {"CLIPModel": clipfast.CLIPConfig, "CLIPForImageClassification": clipfast.CLIPConfig}
    cfg = tiny_config_dict(text={"eos_token_id": 98})
    if name in config_cls:
        config = clipfast.CLIPConfig(**cfg, num_labels=3)
    elif "Text" in name:
        config = clipfast.CLIPTextConfig(**cfg["text_config"])
    else:
        config = clipfast.CLIPVisionConfig(**cfg["vision_config"])
    ours = getattr(clipfast, name)(config).eval()
    ours.save_pretrained(tmp_path)
    ref, info = getattr(transformers, name).from_pretrained(tmp_path, attn_implementation="eager",
                                                            output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    inputs = _inputs(name, text_inputs, pixel_values)
    with torch.no_grad():
        assert_same(ref.eval()(**inputs, output_hidden_states=True), ours(**inputs, output_hidden_states=True))


@pytest.mark.parametrize("eos", [2, 98, 49407])
def test_pooling_rules_match_reference(eos, tmp_path, text_inputs):
    """eos_token_id == 2 selects the legacy argmax rule; other values pool at the first EOS (index 0 if none)."""
    transformers = reference("transformers")
    ref = transformers.CLIPTextModel(_ref_config("CLIPTextModel", eos=eos)).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPTextModel.from_pretrained(tmp_path)
    ids, mask = text_inputs
    ids[0, 2] = 97  # not the max id anywhere: legacy argmax must still pick the EOS (98)
    with torch.no_grad():
        assert_same(ref(ids, mask).pooler_output, ours(ids, mask).pooler_output)


def test_get_features_are_tensors_matching_reference(tmp_path, text_inputs, pixel_values):
    transformers = reference("transformers")
    ref = transformers.CLIPModel(_ref_config("CLIPModel")).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path)
    ids, mask = text_inputs
    with torch.no_grad():
        text, image = ours.get_text_features(ids, mask), ours.get_image_features(pixel_values)
        assert isinstance(text, torch.Tensor) and text.shape == (4, 24)
        assert_same(ref.get_text_features(input_ids=ids, attention_mask=mask), text)
        assert_same(ref.get_image_features(pixel_values=pixel_values), image)


def test_interpolate_pos_encoding_matches_reference(tmp_path):
    transformers = reference("transformers")
    ref = transformers.CLIPModel(_ref_config("CLIPModel")).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 22, 40)  # non-square and not the native 30x30
    with pytest.raises(ValueError, match="doesn't match model"):
        ours.get_image_features(pixels)
    with torch.no_grad():
        a = ref.vision_model(pixels, interpolate_pos_encoding=True)
        b = ours.vision_model(pixels, interpolate_pos_encoding=True)
    assert b.last_hidden_state.shape == (2, 1 + 11 * 20, 32)
    assert_same(a, b)


def test_eager_equals_sdpa(text_inputs, pixel_values):
    config = clipfast.CLIPConfig(**tiny_config_dict())
    eager = clipfast.CLIPModel(config).eval()
    config_sdpa = clipfast.CLIPConfig(**tiny_config_dict())
    config_sdpa._attn_implementation = "sdpa"
    sdpa = clipfast.CLIPModel(config_sdpa).eval()
    sdpa.load_state_dict(eager.state_dict())
    eager.config._attn_implementation = "eager"
    ids, mask = text_inputs
    for m in (mask, None):
        with torch.no_grad():
            assert_same(eager(ids, pixel_values, m), sdpa(ids, pixel_values, m))


def test_padding_does_not_change_a_texts_embedding(text_inputs):
    """A text's embedding is independent of what else is in its batch (right padding + causal attention)."""
    model = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict(text={"eos_token_id": 98}))).eval()
    ids, mask = text_inputs
    with torch.no_grad():
        batched = model.get_text_features(ids, mask)
        for row in range(len(ids)):
            length = int(mask[row].sum())
            alone = model.get_text_features(ids[row: row + 1, :length], mask[row: row + 1, :length])
            assert torch.allclose(alone, batched[row: row + 1], atol=1e-5)


def test_bf16_on_cpu_is_close_to_fp32(text_inputs, pixel_values, tmp_path):
    model = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict(text={"eos_token_id": 98}))).eval()
    model.save_pretrained(tmp_path)
    bf16 = clipfast.CLIPModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.logit_scale.dtype == torch.bfloat16
    ids, mask = text_inputs
    with torch.no_grad():
        a = model(ids, pixel_values, mask)
        b = bf16(ids, pixel_values, mask)  # float32 pixels into a bf16 model, as the processor gives them
    assert b.logits_per_image.dtype == torch.bfloat16
    assert torch.allclose(a.image_embeds, b.image_embeds.float(), atol=3e-2)
    assert torch.allclose(a.text_embeds, b.text_embeds.float(), atol=3e-2)


def test_fp16_forward_and_backward_on_cpu(text_inputs, pixel_values):
    model = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict())).half()
    ids, mask = text_inputs
    pixels = pixel_values.clone().half().requires_grad_(True)
    out = model(ids, pixels, mask, return_loss=True)
    out.loss.backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all()


def test_loss_gradients_and_training_step(text_inputs, pixel_values):
    model = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict()))
    model.gradient_checkpointing_enable()
    model.train()
    ids, mask = text_inputs
    out = model(ids, pixel_values[:1].repeat(4, 1, 1, 1), mask, return_loss=True)
    out.loss.backward()
    assert model.logit_scale.grad is not None
    assert all(p.grad is not None for p in model.text_model.parameters() if p.requires_grad)


def test_initialization_matches_reference_statistics():
    """As transformers' test_initialization: logit_scale = ln(1/0.07); means near 0 (weights) or 1 (norms)."""
    transformers = reference("transformers")
    torch.manual_seed(0)
    ours = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict()))
    torch.manual_seed(0)
    ref = transformers.CLIPModel(transformers.CLIPConfig(**tiny_config_dict()))
    assert abs(ours.logit_scale.item() - 2.6592) < 1e-4
    ref_sd = ref.state_dict()
    for key, tensor in ours.state_dict().items():
        # same rules -> same standard deviation per tensor (within sampling noise)
        std_ours, std_ref = tensor.float().std().item() if tensor.numel() > 1 else 0, 0
        if tensor.numel() > 1:
            std_ref = ref_sd[key].float().std().item()
        assert abs(std_ours - std_ref) <= 0.35 * max(std_ref, 1e-6) + 1e-6, key


def test_output_access_styles(text_inputs, pixel_values):
    model = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict())).eval()
    ids, mask = text_inputs
    out = model(ids, pixel_values, mask, output_hidden_states=1)  # truthy non-bool flag
    assert out["text_embeds"] is out.text_embeds and out[0] is out.logits_per_image
    assert "loss" not in out and len(out.to_tuple()) == 6
    hidden = out.vision_model_output["hidden_states"]
    assert len(hidden) == TINY_VISION["num_hidden_layers"] + 1 and hidden[-2].shape == hidden[-1].shape
    assert isinstance(out.to_tuple()[4], tuple)
    tup = model(ids, pixel_values, mask, return_loss=True, return_dict=False)
    assert len(tup) == 7 and tup[0].dim() == 0


def test_int32_ids_and_positional_inputs(text_inputs, pixel_values):
    model = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict())).eval()
    ids, mask = text_inputs
    with torch.no_grad():
        a = model(ids.int(), pixel_values, mask.int())
        b = model(ids, pixel_values, mask)
    assert torch.equal(a.logits_per_text, b.logits_per_text)


def test_text_longer_than_positions_is_a_clear_error():
    model = clipfast.CLIPTextModel(clipfast.CLIPTextConfig(**TINY_TEXT))
    with pytest.raises(ValueError, match="truncation=True"):
        model(torch.ones(1, TINY_TEXT["max_position_embeddings"] + 1, dtype=torch.long))
    full = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict()))
    ids = torch.full((2, TINY_TEXT["max_position_embeddings"] + 4), 98)  # padded past the table, EOS early
    ids[:, :3] = 5
    with pytest.raises(ValueError, match="truncation=True"):
        full.get_text_features(input_ids=ids)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_mask_shapes(attn, tmp_path):
    """A (1, T) mask applies to every row (it broadcasts in the reference); other shapes are clear errors, even
    all-ones masks that sdpa would not need."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel(_ref_config("CLIPModel")).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path, attn_implementation=attn)
    ids = torch.randint(1, 97, (3, 10))
    ids[:, 6] = 98
    one_row = torch.ones(1, 10, dtype=torch.long)
    one_row[0, 8:] = 0
    with torch.no_grad():
        for mask in (one_row, torch.ones(1, 10, dtype=torch.long)):
            assert_same(ref.get_text_features(input_ids=ids, attention_mask=mask),
                        ours.get_text_features(input_ids=ids, attention_mask=mask))
            assert_same(ref.text_model(input_ids=ids, attention_mask=mask),
                        ours.text_model(input_ids=ids, attention_mask=mask))
        for shape in ((3, 9), (3, 12), (2, 10), (3, 1, 10)):
            for call in (ours.get_text_features, ours.text_model):
                with pytest.raises(ValueError, match="attention_mask has shape"):
                    call(input_ids=ids, attention_mask=torch.ones(shape, dtype=torch.long))


def test_hooks_on_the_text_tower_see_the_full_sequence(tmp_path, text_inputs):
    """get_text_features computes only up to the pooled token, unless a hook is there to see the rest."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel(_ref_config("CLIPModel")).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path)
    ids, mask = text_inputs
    ids = torch.cat([ids, torch.full((ids.shape[0], 6), 98)], dim=1)
    mask = torch.cat([mask, torch.zeros(mask.shape[0], 6, dtype=mask.dtype)], dim=1)
    seen = {}
    for model, name in ((ref, "ref"), (ours, "ours")):
        handles = [model.text_model.encoder.layers[0].register_forward_hook(
                       lambda m, a, out, name=name: seen.setdefault(name, []).append(tuple(a[0].shape))),
                   model.text_model.final_layer_norm.register_forward_hook(
                       lambda m, a, out, name=name: seen.setdefault(name, []).append(tuple(out.shape)))]
        with torch.no_grad():
            features = model.get_text_features(input_ids=ids, attention_mask=mask)
        for handle in handles:
            handle.remove()
        seen[name + "-features"] = features
    assert seen["ours"] == seen["ref"] == [tuple(ids.shape) + (TINY_TEXT["hidden_size"],)] * 2
    assert_same(seen["ref-features"], seen["ours-features"])


def test_module_names_and_api_match_reference():
    transformers = reference("transformers")
    ours = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict()))
    ref = transformers.CLIPModel(transformers.CLIPConfig(**tiny_config_dict()))
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert isinstance(ours.visual_projection, torch.nn.Linear)
    assert isinstance(ours.logit_scale, torch.nn.Parameter) and ours.logit_scale.requires_grad
    assert ours.get_input_embeddings() is ours.text_model.embeddings.token_embedding
    assert ours.num_parameters() == ref.num_parameters()
    new = ours.resize_token_embeddings(120)
    assert new.num_embeddings == 120 and ours.config.text_config.vocab_size == 120


def test_flash_attention_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the GPU script")
    config = clipfast.CLIPConfig(**tiny_config_dict())
    config._attn_implementation = "flash_attention_2"
    model = clipfast.CLIPModel(config)
    with pytest.raises(ValueError, match="CUDA"):
        model(torch.ones(1, 3, dtype=torch.long), torch.randn(1, 3, 30, 30))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_gpu_half_precision_matches_fp32(attn, text_inputs, pixel_values, tmp_path):
    model = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict(text={"eos_token_id": 98}))).eval()
    model.save_pretrained(tmp_path)
    gpu = clipfast.CLIPModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16, attn_implementation=attn,
                                             device_map="cuda")
    ids, mask = text_inputs
    with torch.no_grad():
        a = model(ids, pixel_values, mask)
        b = gpu(ids.cuda(), pixel_values.cuda(), mask.cuda())
    assert torch.allclose(a.text_embeds, b.text_embeds.float().cpu(), atol=4e-2)
    assert torch.allclose(a.image_embeds, b.image_embeds.float().cpu(), atol=4e-2)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_text_features_fast_path_equals_full_forward(attn, text_inputs, tmp_path):
    """get_text_features cuts columns after the pooled token and drops the padding mask: same numbers."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel(_ref_config("CLIPModel", eos=2)).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path, attn_implementation=attn)
    ids, mask = text_inputs
    long_ids = torch.cat([ids, torch.full((4, 20), 98)], dim=1)  # padded far beyond the longest text
    long_mask = torch.cat([mask, torch.zeros(4, 20, dtype=mask.dtype)], dim=1)
    left_mask = long_mask.flip(1)  # left padding: not right-padded, so the full forward runs
    position_ids = torch.arange(long_ids.shape[1])[None]
    with torch.no_grad():
        short_mask = long_mask.clone()
        short_mask[0, 5:] = 0  # row 0's EOS (position 8) falls outside its mask
        for kwargs in (dict(attention_mask=long_mask), dict(), dict(attention_mask=left_mask),
                       dict(attention_mask=short_mask),
                       dict(attention_mask=long_mask, position_ids=position_ids)):
            expected = ref.get_text_features(input_ids=long_ids, **kwargs)
            assert_same(expected, ours.get_text_features(input_ids=long_ids, **kwargs))


VARIED = [
    dict(text={"hidden_act": "gelu", "eos_token_id": 2}, vision={"hidden_act": "gelu", "patch_size": 4}),
    dict(text={"hidden_act": "gelu_new", "layer_norm_eps": 1e-6, "num_attention_heads": 2},
         vision={"image_size": 33, "patch_size": 5, "num_channels": 1, "num_attention_heads": 8}),
    dict(text={"max_position_embeddings": 12, "num_hidden_layers": 3, "intermediate_size": 16},
         vision={"hidden_size": 48, "intermediate_size": 20, "num_hidden_layers": 1}),
]


@pytest.mark.parametrize("overrides", VARIED, ids=["gelu", "gelu_new-1ch-odd-size", "shapes"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_varied_configs_match_reference(overrides, attn, tmp_path):
    """Architectures off the beaten path: other activations, odd image/patch sizes, one channel, other shapes."""
    transformers = reference("transformers")
    config = tiny_config_dict(**{k: dict(v) for k, v in overrides.items()})
    ref = transformers.CLIPModel(transformers.CLIPConfig(**config, logit_scale_init_value=1.5)).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path, attn_implementation=attn)
    vision = config["vision_config"]
    pixels = torch.randn(3, vision.get("num_channels", 3), vision["image_size"], vision["image_size"])
    length = min(9, config["text_config"]["max_position_embeddings"])
    ids = torch.randint(1, 97, (2, length))
    ids[:, -1] = 98
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    with torch.no_grad():
        assert_same(ref(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True),
                    ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True))


@pytest.mark.parametrize("size,patch,channels", [(30, 2, 3), (33, 5, 1), (224, 32, 3), (47, 14, 3)])
def test_patch_embedding_as_matmul_equals_convolution(size, patch, channels):
    """The CUDA path of the patch embedding (one matmul) against the convolution, odd sizes included."""
    from clipfast.modeling import patch_embedding_as_matmul

    conv = torch.nn.Conv2d(channels, 16, patch, stride=patch, bias=False)
    x = torch.randn(3, channels, size, size + 3)
    expected = conv(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(patch_embedding_as_matmul(x, conv.weight), expected, atol=1e-5, rtol=1e-5)


def _reference_activations() -> list[str]:
    if not has_reference("transformers"):  # collection time: the parametrized test skips itself
        return ["quick_gelu"]
    from transformers.activations import ACT2CLS

    return sorted(name for name in ACT2CLS if name != "xielu")  # xielu: learned, CUDA-kernel activation of Apertus


@pytest.mark.parametrize("act", _reference_activations())
def test_every_reference_activation_matches(act, tmp_path):
    """Every hidden_act of transformers' table builds and matches, in both towers (prelu with its weight)."""
    transformers = reference("transformers")
    config = tiny_config_dict(text={"hidden_act": act}, vision={"hidden_act": act})
    torch.manual_seed(0)
    ref = transformers.CLIPModel(transformers.CLIPConfig(**config)).eval()
    if act == "prelu":
        with torch.no_grad():
            weights = [p for name, p in ref.named_parameters() if name.endswith("activation_fn.weight")]
            for i, param in enumerate(weights):
                param.fill_(0.1 + 0.05 * i)
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path).eval()
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    ids = torch.randint(1, 97, (2, 7))
    ids[:, -1] = 98
    pixels = torch.randn(2, 3, config["vision_config"]["image_size"], config["vision_config"]["image_size"])
    with torch.no_grad():
        assert_same(ref(input_ids=ids, pixel_values=pixels), ours(input_ids=ids, pixel_values=pixels))
    with pytest.raises(ValueError, match="hidden_act='nope' is not supported"):
        clipfast.CLIPTextModel(clipfast.CLIPTextConfig(**{**TINY_TEXT, "hidden_act": "nope"}))


def test_outputs_rebuild_from_mappings_like_the_reference(text_inputs, pixel_values):
    """Trainer's nested_detach / Accelerate rebuild outputs with type(out)(mapping) or from (key, value) pairs."""
    reference("transformers")
    ours = clipfast.CLIPForImageClassification(clipfast.CLIPConfig(**tiny_config_dict(), num_labels=3))
    out = ours(pixel_values=pixel_values, labels=torch.tensor([0, 2, 1, 1]))
    for rebuilt in (type(out)({k: v.detach() for k, v in out.items()}),
                    type(out)((k, v) for k, v in out.items()), type(out)(list(out.items()))):
        assert list(rebuilt.keys()) == ["loss", "logits"] and torch.equal(rebuilt.logits, out.logits)
        assert rebuilt[0] is rebuilt.loss and rebuilt.to_tuple()[1] is rebuilt.logits
    from transformers.trainer_pt_utils import nested_detach

    assert torch.equal(nested_detach(out).logits, out.logits)
    plain = clipfast.modeling.BaseModelOutput(torch.zeros(2), (torch.ones(1),))  # tensors stay values
    assert plain.hidden_states[0].item() == 1 and plain.last_hidden_state.shape == (2,)
    for mutate in (lambda: out.pop("loss"), lambda: out.update(loss=None), lambda: out.setdefault("x", 1),
                   lambda: out.__delitem__("loss")):
        with pytest.raises(TypeError, match="keeps its fields"):
            mutate()
    plain.attentions = (torch.ones(1),)  # a field that was None stays out of the keys, as in the reference
    assert list(plain.keys()) == ["last_hidden_state", "hidden_states"] and len(plain.to_tuple()) == 2
    plain.last_hidden_state = torch.ones(3)
    assert plain["last_hidden_state"].shape == (3,) and plain[0].shape == (3,)


def test_features_ignore_other_inputs_with_a_warning(tmp_path, text_inputs, pixel_values):
    """get_*_features(**processor_output): the other modality's keys are dropped with a warning, as the reference."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel(_ref_config("CLIPModel")).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path)
    ids, mask = text_inputs
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, token_type_ids=torch.zeros_like(ids))
    with torch.no_grad(), pytest.warns(UserWarning, match="not valid for `get_text_features`"):
        text = ours.get_text_features(**inputs)
    with torch.no_grad(), pytest.warns(UserWarning, match="not valid for `get_image_features`"):
        image = ours.get_image_features(**inputs)
    with torch.no_grad():
        assert_same(ref.get_text_features(input_ids=ids, attention_mask=mask), text)
        assert_same(ref.get_image_features(pixel_values=pixel_values), image)


def test_model_api_of_the_reference(tmp_path):
    """post_init keeps loaded weights; resize_token_embeddings pads, mean-resizes and keeps requires_grad; the
    small helpers user code calls exist; push_to_hub is a clear error."""
    transformers = reference("transformers")
    ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_TEXT))
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPTextModel.from_pretrained(tmp_path)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.post_init()
    ours.init_weights()
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())
    table = ours.get_input_embeddings()
    with torch.no_grad():
        table.weight.add_(1.0)
    table.weight.requires_grad_(False)
    new = ours.resize_token_embeddings(TINY_TEXT["vocab_size"] + 2, pad_to_multiple_of=8)
    assert new.num_embeddings == 104 == ours.config.vocab_size and not new.weight.requires_grad
    assert torch.equal(new.weight[:99], table.weight)
    assert abs(new.weight[99:].mean().item() - table.weight.mean().item()) < 0.05  # around the old rows' mean
    assert ours.num_parameters(exclude_embeddings=True) == ours.num_parameters() - 104 * TINY_TEXT["hidden_size"] - \
        TINY_TEXT["max_position_embeddings"] * TINY_TEXT["hidden_size"]
    assert ours.base_model is ours and ours.framework == "pt" and ours.get_memory_footprint() > 0
    ours.enable_input_require_grads()
    ours.requires_grad_(False)
    assert ours(input_ids=torch.tensor([[5, 6, 98]])).last_hidden_state.requires_grad
    ours.disable_input_require_grads()
    assert not ours(input_ids=torch.tensor([[5, 6, 98]])).last_hidden_state.requires_grad
    ours.set_attn_implementation("eager")
    assert ours.text_model.encoder.layers[0].self_attn.config._attn_implementation == "eager"
    for call in (lambda: ours.push_to_hub("me/model"), lambda: ours.save_pretrained(tmp_path / "x", push_to_hub=True)):
        with pytest.raises(NotImplementedError, match="upload_folder"):
            call()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_export_and_trace_like_the_reference(text_inputs, pixel_values):
    """torch.export (outputs are pytree nodes, no branching on mask values) and torch.jit.trace with autograd on
    (one graph whatever the grad mode) work, and the captured programs give the eager numbers."""
    model = clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict())).eval()
    ids, mask = text_inputs
    with torch.no_grad():
        eager = model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask)
    exported = torch.export.export(model, (ids, pixel_values, mask))
    with torch.no_grad():
        out = exported.module()(ids, pixel_values, mask)
    assert type(out).__name__ == "CLIPOutput"
    torch.testing.assert_close(out.logits_per_image, eager.logits_per_image)
    model.config.return_dict = False  # tracing takes tuples, as with transformers
    traced = torch.jit.trace(model, (ids, pixel_values, mask))  # autograd on: the parameters require grad
    with torch.no_grad():
        torch.testing.assert_close(traced(ids, pixel_values, mask)[0], eager.logits_per_image)


@pytest.mark.parametrize("packed", [False, True])
def test_activation_is_a_hookable_module_like_the_reference(packed, tmp_path, text_inputs, pixel_values):
    """mlp.activation_fn is a module (named_modules, hooks): a hook sees what the reference's hook sees, and a hook
    that changes the activation changes the result, even on the folded quick_gelu and packed paths."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel(_ref_config("CLIPModel")).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path).set_cpu_weight_packing(packed)
    assert "vision_model.encoder.layers.0.mlp.activation_fn" in dict(ours.named_modules())
    seen = {}
    for model, name in ((ref, "ref"), (ours, "ours")):
        layer = model.vision_model.encoder.layers[0].mlp.activation_fn
        handle = layer.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out) or out * 0.5)
        with torch.no_grad():
            for _ in range(3):  # packing starts on the second call
                features = model.get_image_features(pixel_values=pixel_values)
        handle.remove()
        seen[name + "-features"] = features
    assert_same(seen["ref"], seen["ours"])
    assert_same(seen["ref-features"], seen["ours-features"])


def test_towers_are_called_with_keywords_like_the_reference(tmp_path, text_inputs, pixel_values):
    """Pre-hooks registered with_kwargs=True on a tower see keyword arguments, as with transformers."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel(_ref_config("CLIPModel")).eval()
    ref.save_pretrained(tmp_path)
    ours = clipfast.CLIPModel.from_pretrained(tmp_path)
    ids, mask = text_inputs
    for model in (ours, ref):
        seen = []
        handles = [tower.register_forward_pre_hook(lambda m, args, kwargs: seen.append((len(args), sorted(kwargs))),
                                                   with_kwargs=True)
                   for tower in (model.text_model, model.vision_model)]
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
        for handle in handles:
            handle.remove()
        names = {k for _, ks in seen for k in ks}
        assert all(count == 0 for count, _ in seen) and {"input_ids", "pixel_values"} <= names
