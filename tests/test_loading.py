"""Configs and checkpoint I/O: file layouts, cross-class loading, dtypes, the Hub (a local stand-in) and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from safetensors.torch import save_file

import clipfast
from clipfast.errors import CheckpointError, OfflineError
from helpers import reference
from helpers.configs import TINY_TEXT, tiny_config_dict
from helpers.fake_hub import FakeHub


@pytest.fixture
def ref_folder(tmp_path):
    """A tiny CLIPModel saved by transformers 4.57 (model.safetensors + config.json)."""
    transformers = reference("transformers")
    model = transformers.CLIPModel(transformers.CLIPConfig(**tiny_config_dict(text={"eos_token_id": 98})))
    model.save_pretrained(tmp_path / "ref")
    return tmp_path / "ref"


def _logits(model, text_inputs, pixel_values):
    ids, mask = text_inputs
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values).logits_per_image


# -- configs ------------------------------------------------------------------------------------------------------


def test_config_defaults_and_round_trip(tmp_path):
    transformers = reference("transformers")
    config = clipfast.CLIPConfig()
    ref = transformers.CLIPConfig()
    for sub, ref_sub in ((config.text_config, ref.text_config), (config.vision_config, ref.vision_config)):
        for key in sub._fields:
            assert getattr(sub, key) == getattr(ref_sub, key), key
    assert config.projection_dim == 512 and config.logit_scale_init_value == 2.6592
    config.save_pretrained(tmp_path)
    again = clipfast.CLIPConfig.from_pretrained(tmp_path)
    assert {k: v for k, v in again.to_dict().items() if k != "_name_or_path"} == config.to_dict()
    assert json.loads(config.to_json_string())["text_config"]["model_type"] == "clip_text_model"
    # what we write, transformers reads
    assert transformers.CLIPConfig.from_pretrained(tmp_path).vision_config.patch_size == 32


def test_2021_hub_config_with_legacy_keys(tmp_path):
    """The openai/clip-vit-base-patch32 config.json shape: *_config_dict null, bos 0 / eos 2, generation keys."""
    data = {
        "_name_or_path": "openai/clip-vit-base-patch32", "architectures": ["CLIPModel"],
        "initializer_factor": 1.0, "logit_scale_init_value": 2.6592, "model_type": "clip", "projection_dim": 512,
        "text_config_dict": None, "vision_config_dict": None, "transformers_version": None,
        "text_config": {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "dropout": 0.0, "max_length": 20,
                        "top_k": 50, "torch_dtype": None, "hidden_size": 512, "model_type": "clip_text_model"},
        "vision_config": {"dropout": 0.0, "patch_size": 32, "torch_dtype": None},
    }
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = clipfast.CLIPConfig.from_pretrained(tmp_path)
    assert config.text_config.eos_token_id == 2 and config.text_config.max_length == 20  # unknown keys kept
    assert config.vision_config.num_channels == 3
    assert "text_config_dict" not in config.to_dict()
    text = clipfast.CLIPTextConfig.from_pretrained(tmp_path)  # sub-config out of a full CLIPConfig
    assert text.eos_token_id == 2 and text.hidden_size == 512
    vision = clipfast.CLIPVisionConfig.from_pretrained(tmp_path)
    assert vision.patch_size == 32


def test_legacy_config_dict_values_win():
    transformers = reference("transformers")
    config = clipfast.CLIPConfig(text_config={"hidden_size": 64}, text_config_dict={"hidden_size": 768})
    assert config.text_config.hidden_size == 768
    # a partial legacy dict is a full config with defaults, which win everywhere (SD 1.x safety checker files)
    for legacy in ({"hidden_size": 768}, {}):
        data = dict(text_config={"eos_token_id": 2, "bos_token_id": 0, "hidden_size": 64}, text_config_dict=legacy,
                    vision_config_dict={"patch_size": 14})
        ours, ref = clipfast.CLIPConfig(**data), transformers.CLIPConfig(**data)
        for part in ("text_config", "vision_config"):
            for key in ("eos_token_id", "bos_token_id", "hidden_size", "patch_size", "image_size"):
                assert getattr(getattr(ours, part), key, None) == getattr(getattr(ref, part), key, None), (part, key)


def test_base_config_fields_and_methods_of_the_reference(tmp_path):
    """Generic fields code written against transformers reads (custom forwards use config.use_return_dict)."""
    transformers = reference("transformers")
    ours, ref = clipfast.CLIPConfig(), transformers.CLIPConfig()
    for name in ("use_return_dict", "is_encoder_decoder", "tie_word_embeddings", "chunk_size_feed_forward",
                 "pruned_heads", "is_decoder", "add_cross_attention", "torchscript", "name_or_path"):
        for a, b in ((ours, ref), (ours.text_config, ref.text_config), (ours.vision_config, ref.vision_config)):
            assert getattr(a, name) == getattr(b, name), name
    assert ours.get_text_config() is ours.text_config and ours.vision_config.get_text_config() is ours.vision_config
    ours.update_from_string("projection_dim=256,output_hidden_states=true,logit_scale_init_value=1.5")
    assert (ours.projection_dim, ours.output_hidden_states, ours.logit_scale_init_value) == (256, True, 1.5)
    with pytest.raises(ValueError, match="existing field"):
        ours.update_from_string("no_such_field=1")
    assert "torchscript" not in ours.to_dict()  # defaults are not written to config.json
    ours.pruned_heads[1] = [0]  # a mutable default, once read, keeps changes (as the reference's dict does)
    assert ours.pruned_heads == {1: [0]}
    with pytest.raises(ValueError, match="cannot parse pad_token_id"):
        ours.update_from_string("pad_token_id=5")  # a field without a type to parse by, as the reference refuses
    labelled = clipfast.CLIPConfig(id2label={0: "cat", 1: "dog", 2: "car"}, num_labels=2)
    assert labelled.id2label == {0: "cat", 1: "dog", 2: "car"} and labelled.num_labels == 3  # as the reference
    ours.save_pretrained(tmp_path)
    assert clipfast.AutoConfig.from_pretrained(tmp_path / "config.json").projection_dim == 256


def test_v5_config_dtype_key_and_from_text_vision_configs():
    config = clipfast.CLIPConfig.from_dict({"model_type": "clip", "dtype": "bfloat16", "text_config": {}})
    assert config.torch_dtype == config.dtype == torch.bfloat16 and config.to_dict()["torch_dtype"] == "bfloat16"
    # any dtype or name assigned is kept by name: JSON, repr and the reference's torch.dtype view all work
    for value in (torch.float16, "float16", "torch.float16"):
        config.torch_dtype = value
        assert config.torch_dtype is torch.float16 and json.loads(config.to_json_string())["torch_dtype"] == "float16"
        assert torch.zeros(1, dtype=config.torch_dtype).dtype == torch.float16 and "float16" in repr(config)
    config.update_from_string("torch_dtype=bfloat16")
    assert config.dtype is torch.bfloat16
    loaded = clipfast.CLIPConfig.from_dict(config.to_dict(), torch_dtype=torch.float32)
    assert loaded.torch_dtype is torch.float32 and loaded.to_dict()["torch_dtype"] == "float32"
    both = clipfast.CLIPConfig.from_text_vision_configs(clipfast.CLIPTextConfig(hidden_size=64),
                                                        clipfast.CLIPVisionConfig(patch_size=16), projection_dim=7)
    assert both.text_config.hidden_size == 64 and both.vision_config.patch_size == 16 and both.projection_dim == 7
    config, unused = clipfast.CLIPConfig.from_dict({}, projection_dim=3, nonsense=1, return_unused_kwargs=True)
    assert config.projection_dim == 3 and unused == {"nonsense": 1}


def test_attn_implementation_propagates_to_sub_configs(ref_folder):
    model = clipfast.CLIPModel.from_pretrained(ref_folder, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    assert model.config.text_config._attn_implementation == "eager"
    assert model.text_model.encoder.layers[0].self_attn.config._attn_implementation == "eager"
    assert clipfast.CLIPModel.from_pretrained(ref_folder).config.vision_config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="eager"):
        clipfast.CLIPModel.from_pretrained(ref_folder, attn_implementation="flex")


# -- file layouts ---------------------------------------------------------------------------------------------------


def test_sharded_safetensors_round_trip(ref_folder, tmp_path, text_inputs, pixel_values):
    transformers = reference("transformers")
    model = clipfast.CLIPModel.from_pretrained(ref_folder)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    again = clipfast.CLIPModel.from_pretrained(tmp_path / "sharded")
    ref = transformers.CLIPModel.from_pretrained(tmp_path / "sharded")
    expected = _logits(model, text_inputs, pixel_values)
    assert torch.equal(_logits(again, text_inputs, pixel_values), expected)
    assert torch.allclose(_logits(ref, text_inputs, pixel_values), expected, atol=1e-5)


def test_pytorch_bin_with_legacy_position_ids(ref_folder, tmp_path, text_inputs, pixel_values):
    """Hub files before transformers 4.31 carry the position_ids buffers; they are ignored silently."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel.from_pretrained(ref_folder)
    state = dict(ref.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(TINY_TEXT["max_position_embeddings"])[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(226)[None]
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text((ref_folder / "config.json").read_text())
    model, info = clipfast.CLIPModel.from_pretrained(folder, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    assert "text_model.embeddings.position_ids" not in model.state_dict()
    assert torch.allclose(_logits(model, text_inputs, pixel_values), _logits(ref, text_inputs, pixel_values),
                          atol=1e-5)


def test_variant_and_subfolder(ref_folder, tmp_path):
    """diffusers-style repos: text_encoder/ holding a CLIPTextModel, weights as model.fp16.safetensors."""
    transformers = reference("transformers")
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_TEXT)).half()
    text.save_pretrained(tmp_path / "repo" / "text_encoder", variant="fp16")
    model = clipfast.CLIPTextModel.from_pretrained(tmp_path / "repo", subfolder="text_encoder", variant="fp16",
                                                   torch_dtype="auto")
    assert model.dtype == torch.float16


def test_sharded_variant(tmp_path, text_inputs, pixel_values):
    """transformers names a sharded variant's index model.safetensors.index.fp16.json."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel(transformers.CLIPConfig(**tiny_config_dict())).half()
    ref.save_pretrained(tmp_path, variant="fp16", max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.fp16.json").exists()
    model = clipfast.CLIPModel.from_pretrained(tmp_path, variant="fp16", torch_dtype="auto")
    assert model.dtype == torch.float16
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_dtype_options(ref_folder):
    assert clipfast.CLIPModel.from_pretrained(ref_folder).dtype == torch.float32
    assert clipfast.CLIPModel.from_pretrained(ref_folder, torch_dtype="auto").dtype == torch.float32
    assert clipfast.CLIPModel.from_pretrained(ref_folder, dtype=torch.float16).dtype == torch.float16
    assert clipfast.CLIPModel.from_pretrained(ref_folder, torch_dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="floating-point"):
        clipfast.CLIPModel.from_pretrained(ref_folder, torch_dtype="int8")


def test_loading_does_not_initialise_random_weights_first(ref_folder, monkeypatch):
    calls = []
    original = torch.Tensor.normal_

    def spy(self, *args, **kwargs):
        if not self.is_meta:
            calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "normal_", spy)
    clipfast.CLIPModel.from_pretrained(ref_folder)
    assert calls == []


# -- one checkpoint, many classes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel",
                                  "CLIPVisionModelWithProjection"])
def test_clipmodel_checkpoint_loads_into_each_tower(name, tmp_path, text_inputs, pixel_values):
    # projection_dim equal at both levels, as in the OpenAI checkpoints (transformers reads the sub-config's)
    transformers = reference("transformers")
    config = transformers.CLIPConfig(**dict(tiny_config_dict(text={"eos_token_id": 98}), projection_dim=32))
    transformers.CLIPModel(config).save_pretrained(tmp_path)
    ours = getattr(clipfast, name).from_pretrained(tmp_path)
    ref = getattr(transformers, name).from_pretrained(tmp_path)
    kwargs = dict(input_ids=text_inputs[0], attention_mask=text_inputs[1]) if "Text" in name else dict(
        pixel_values=pixel_values)
    with torch.no_grad():
        a, b = ref(**kwargs), ours(**kwargs)
    for x, y in zip(a.to_tuple(), b.to_tuple()):
        assert torch.allclose(x, y, atol=1e-5)


def test_projection_class_takes_the_composite_projection_dim(ref_folder, text_inputs):
    """Sub-configs may carry a stale projection_dim (32 here, 24 at the top): the checkpoint's 24 wins."""
    model = clipfast.CLIPTextModelWithProjection.from_pretrained(ref_folder)
    full = clipfast.CLIPModel.from_pretrained(ref_folder)
    with torch.no_grad():
        assert torch.allclose(model(*text_inputs).text_embeds, full.get_text_features(*text_inputs), atol=1e-6)


def test_plain_tower_out_of_a_clipmodel_keeps_its_own_projection_dim(ref_folder):
    """Only projection towers take the composite's projection_dim; a plain tower's config is its sub-config."""
    transformers = reference("transformers")
    for cls in ("CLIPTextModel", "CLIPVisionModel"):
        ours = getattr(clipfast, cls).from_pretrained(ref_folder).config
        ref = getattr(transformers, cls).from_pretrained(ref_folder).config
        assert ours.projection_dim == ref.projection_dim
    config = clipfast.CLIPConfig(**tiny_config_dict(), id2label={0: "cat", 1: "dog"})
    assert config.to_dict()["id2label"] == {0: "cat", 1: "dog"} == transformers.CLIPConfig(
        **tiny_config_dict(), id2label={0: "cat", 1: "dog"}).to_dict()["id2label"]
    assert json.loads(config.to_json_string())["id2label"] == {"0": "cat", "1": "dog"}


def test_text_checkpoint_into_projection_class_initialises_the_head(tmp_path):
    transformers = reference("transformers")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_TEXT)).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="text_projection.weight"):
        model, info = clipfast.CLIPTextModelWithProjection.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == ["text_projection.weight"]
    weight = model.text_projection.weight
    assert not weight.is_meta and 0.05 < weight.std().item() < 0.4  # N(0, hidden**-0.5) as the reference


def test_classifier_from_clip_checkpoint(ref_folder):
    with pytest.warns(UserWarning, match="classifier"):
        model = clipfast.CLIPForImageClassification.from_pretrained(ref_folder, num_labels=5)
    assert model.classifier.out_features == 5 and model.classifier.bias.abs().sum() == 0


def test_unexpected_keys_are_reported_by_name(ref_folder, tmp_path):
    transformers = reference("transformers")
    state = dict(transformers.CLIPModel.from_pretrained(ref_folder).state_dict())
    state["text_model.extra_head.weight"] = torch.zeros(2)
    (tmp_path / "config.json").write_text((ref_folder / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning, match="extra_head"):
        _, info = clipfast.CLIPModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == ["text_model.extra_head.weight"]


# -- errors ---------------------------------------------------------------------------------------------------------


def test_folder_without_weights(ref_folder):
    (ref_folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="No model weights found"):
        clipfast.CLIPModel.from_pretrained(ref_folder)


def test_folder_without_config(ref_folder):
    (ref_folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        clipfast.CLIPModel.from_pretrained(ref_folder)


def test_config_of_another_model_type(ref_folder):
    data = json.loads((ref_folder / "config.json").read_text())
    data["model_type"] = "siglip"
    (ref_folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="'siglip'"):
        clipfast.CLIPModel.from_pretrained(ref_folder)


def test_text_only_folder_into_clipmodel_is_refused(tmp_path):
    transformers = reference("transformers")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_TEXT)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="clip_text_model"):
        clipfast.CLIPModel.from_pretrained(tmp_path)


def test_corrupt_safetensors(ref_folder):
    path = ref_folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        clipfast.CLIPModel.from_pretrained(ref_folder)


def test_mismatched_shapes_name_the_tensors(ref_folder):
    transformers = reference("transformers")
    data = json.loads((ref_folder / "config.json").read_text())
    data["projection_dim"] = 16
    (ref_folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"text_projection.weight: checkpoint \(24, 32\), model \(16, 32\)"):
        clipfast.CLIPModel.from_pretrained(ref_folder)
    with pytest.warns(UserWarning, match="newly initialized"):
        model, info = clipfast.CLIPModel.from_pretrained(ref_folder, ignore_mismatched_sizes=True,
                                                         output_loading_info=True)
    assert model.text_projection.weight.shape == (16, 32)
    _, ref_info = transformers.CLIPModel.from_pretrained(ref_folder, ignore_mismatched_sizes=True,
                                                         output_loading_info=True)
    assert info["mismatched_keys"] == ref_info["mismatched_keys"] == ["text_projection.weight",
                                                                      "visual_projection.weight"]


def test_base_model_prefix_is_stripped(ref_folder, tmp_path, text_inputs, pixel_values):
    """Weights saved from a wrapper module (keys "clip.text_model...."), as transformers strips base_model_prefix."""
    transformers = reference("transformers")
    ref = transformers.CLIPModel.from_pretrained(ref_folder)
    folder = tmp_path / "wrapped"
    folder.mkdir()
    (folder / "config.json").write_text((ref_folder / "config.json").read_text())
    save_file({"clip." + k: v.contiguous() for k, v in ref.state_dict().items()}, folder / "model.safetensors")
    model, info = clipfast.CLIPModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.allclose(_logits(model, text_inputs, pixel_values), _logits(ref, text_inputs, pixel_values),
                          atol=1e-5)
    text, info = clipfast.CLIPTextModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and torch.equal(text.text_model.final_layer_norm.weight,
                                                     ref.text_model.final_layer_norm.weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, None])
def test_config_records_the_loaded_dtype(ref_folder, dtype):
    transformers = reference("transformers")
    model = clipfast.CLIPModel.from_pretrained(ref_folder, torch_dtype=dtype)
    ref = transformers.CLIPModel.from_pretrained(ref_folder, torch_dtype=dtype)
    for ours, theirs in ((model.config, ref.config), (model.config.text_config, ref.config.text_config),
                         (model.config.vision_config, ref.config.vision_config)):
        assert ours.torch_dtype == theirs.torch_dtype == model.dtype
        assert ours.to_dict()["torch_dtype"] == str(model.dtype).removeprefix("torch.")


def test_attn_implementation_per_tower(ref_folder):
    choice = {"text_config": "eager", "vision_config": "sdpa"}
    model = clipfast.CLIPModel.from_pretrained(ref_folder, attn_implementation=choice)
    assert (model.config.text_config._attn_implementation, model.config.vision_config._attn_implementation) == (
        "eager", "sdpa")
    assert model.text_model.encoder.layers[0].self_attn.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="attn_implementation='fast'"):
        clipfast.CLIPModel.from_pretrained(ref_folder, attn_implementation={"text_config": "fast"})


def test_missing_path_and_file_instead_of_folder(tmp_path, ref_folder):
    with pytest.raises(CheckpointError, match="does not exist"):
        clipfast.CLIPModel.from_pretrained(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(CheckpointError, match="is a file"):
        clipfast.CLIPConfig.from_pretrained(str(ref_folder / "model.safetensors"))


def test_malicious_pickle_in_pytorch_bin_is_refused(ref_folder, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (ref_folder / "model.safetensors").unlink()
    torch.save({"x": Evil()}, ref_folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        clipfast.CLIPModel.from_pretrained(ref_folder)
    assert not marker.exists()


# -- the Hub ------------------------------------------------------------------------------------------------------


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_hub_download_cache_and_offline(ref_folder, tmp_path):
    """A hub id resolves through huggingface_hub (served by a loopback stand-in), then works offline from cache."""
    cache = tmp_path / "hf_home"
    code = """
        import sys, torch, clipfast
        model = clipfast.CLIPModel.from_pretrained("tiny-org/tiny-clip")
        text = clipfast.CLIPTextModel.from_pretrained("tiny-org/tiny-clip", revision="main")
        print("OK", model.config.projection_dim, text.config.hidden_size)
    """
    with FakeHub({"tiny-org/tiny-clip": ref_folder}) as url:
        online = _run(code, {"HF_ENDPOINT": url, "HF_HOME": str(cache), "HF_HUB_OFFLINE": "0"})
        assert online.returncode == 0, online.stderr
        assert "OK 24 32" in online.stdout
        unknown = _run('import clipfast; clipfast.CLIPModel.from_pretrained("tiny-org/missing")',
                       {"HF_ENDPOINT": url, "HF_HOME": str(cache), "HF_HUB_OFFLINE": "0"})
        assert "CheckpointError" in unknown.stderr and "neither a local folder nor a model id" in unknown.stderr
    # server gone: offline mode serves from the cache
    offline = _run(code, {"HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    # an unresolvable Hub (no network) without the offline flag: the cache is used at once, no retry loop
    unreachable = _run(code, {"HF_HOME": str(cache), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://hub.invalid"})
    assert unreachable.returncode == 0, unreachable.stderr
    missing = _run('import clipfast; clipfast.CLIPModel.from_pretrained("tiny-org/other")',
                   {"HF_HOME": str(cache), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://hub.invalid"})
    assert "Cannot reach the Hugging Face Hub" in missing.stderr
    # only the config of a repo cached (AutoConfig ran online), then the model offline: say the weights are missing
    with FakeHub({"tiny-org/partial": ref_folder}) as url:
        config_only = _run('import clipfast; clipfast.AutoConfig.from_pretrained("tiny-org/partial")',
                           {"HF_ENDPOINT": url, "HF_HOME": str(cache), "HF_HUB_OFFLINE": "0"})
        assert config_only.returncode == 0, config_only.stderr
    partial = _run('import clipfast; clipfast.CLIPModel.from_pretrained("tiny-org/partial")',
                   {"HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"})
    assert "OfflineError" in partial.stderr and "not in the local cache" in partial.stderr


def test_offline_and_not_cached_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="offline mode is on"):
        clipfast.CLIPModel.from_pretrained("openai/clip-vit-base-patch32", cache_dir=tmp_path)


def test_cache_dir_stand_in_with_local_files_only(ref_folder, tmp_path):
    """A hand-built cache in huggingface_hub's layout is found with local_files_only=True."""
    snap = tmp_path / "cache" / "models--org--clip" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snap / name).write_bytes((ref_folder / name).read_bytes())
    (tmp_path / "cache" / "models--org--clip" / "refs").mkdir()
    (tmp_path / "cache" / "models--org--clip" / "refs" / "main").write_text("a" * 40)
    model = clipfast.CLIPModel.from_pretrained("org/clip", cache_dir=tmp_path / "cache", local_files_only=True)
    assert model.config.projection_dim == 24


def test_import_and_run_without_torchvision(ref_folder):
    code = f"""
        import sys
        sys.modules["torchvision"] = None  # any import of torchvision now fails
        import torch, clipfast
        model = clipfast.CLIPModel.from_pretrained({str(ref_folder)!r})
        out = model(torch.tensor([[0, 5, 98]]), torch.randn(1, 3, 30, 30))
        assert "torchvision" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("OK", tuple(out.logits_per_image.shape))
    """
    result = _run(code, {})
    assert result.returncode == 0, result.stderr
    assert "OK (1, 1)" in result.stdout


def test_import_is_cheap():
    result = _run("import sys, clipfast; print('torch' in sys.modules)", {})
    assert result.stdout.strip() == "False"


def test_loading_leaves_torch_init_functions_alone(ref_folder):
    """Building on the meta device silences torch.nn.init for the build only, even when the build fails."""
    before = {name: getattr(torch.nn.init, name) for name in ("normal_", "uniform_", "kaiming_uniform_", "ones_")}
    clipfast.CLIPModel.from_pretrained(ref_folder)
    with pytest.raises(ValueError):
        clipfast.CLIPModel.from_pretrained(ref_folder, attn_implementation="nonsense")
    data = json.loads((ref_folder / "config.json").read_text())
    data["text_config"]["num_attention_heads"] = 5  # 32 is not divisible by 5: the build itself raises
    (ref_folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="divisible"):
        clipfast.CLIPModel.from_pretrained(ref_folder)
    assert {name: getattr(torch.nn.init, name) for name in before} == before
    fresh = torch.nn.Linear(4, 4)
    assert fresh.weight.abs().sum() > 0  # initialised as usual afterwards


def test_bf16_on_a_cpu_without_bf16_hardware_warns(ref_folder, monkeypatch):
    import clipfast.loading

    monkeypatch.setattr(clipfast.loading, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="cpu_bf16_as_fp32"):
        clipfast.CLIPModel.from_pretrained(ref_folder, torch_dtype=torch.bfloat16)
    monkeypatch.setattr(clipfast.loading, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clipfast.CLIPModel.from_pretrained(ref_folder, torch_dtype=torch.bfloat16)
