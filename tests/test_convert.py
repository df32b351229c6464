"""OpenAI and open_clip checkpoints: loading, conversion both ways, refusals and safety, against open_clip itself.

Every parity model is a tiny open_clip model with random weights, saved in the layout its format uses; clipfast's
outputs must equal open_clip's (and, after conversion, transformers') within 1e-5. Those tests skip without
open_clip / transformers; the tests of the source decision, the TorchScript reader's safety and the refusals make
their checkpoints with clipfast and torch alone, and run on a plain install.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import clipfast
from clipfast import convert as cv
from clipfast import formats, torchscript
from clipfast.cli import main
from clipfast.constants import OPENAI_CLIP_MEAN
from clipfast.errors import CheckpointError
from helpers import reference as import_reference
from helpers.openclip_models import (IMAGENET, OPEN_CLIP_GELU, OPENAI_LIKE, build, clipfast_outputs, inputs,
                                     openai_state_dict, reference, save_module_archive, save_open_clip_folder,
                                     save_torchscript)

ATOL = 1e-5
OPENAI_MEAN = list(OPENAI_CLIP_MEAN)


@pytest.fixture
def cli_env():
    """``main()`` quiets huggingface_hub for its process (HF_HUB_VERBOSITY); called in-process here, the variable
    is put back as it was after the test."""
    before = os.environ.get("HF_HUB_VERBOSITY")
    yield
    if before is None:
        os.environ.pop("HF_HUB_VERBOSITY", None)
    else:
        os.environ["HF_HUB_VERBOSITY"] = before


def assert_same(ours: dict, ref: dict) -> None:
    for name in ("image", "text", "logits"):
        torch.testing.assert_close(ours[name], ref[name], atol=ATOL, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def openai_model():
    return build(OPENAI_LIKE)


@pytest.fixture(scope="module")
def gelu_model():
    return build(OPEN_CLIP_GELU, seed=1)


# ---------------------------------------------------------------------------------------------------------------
# OpenAI files


@pytest.mark.parametrize("kind", ["script", "trace", "state_dict"])
def test_openai_files_match_open_clip(openai_model, tmp_path, kind):
    path = tmp_path / "ViT-tiny.pt"
    if kind == "state_dict":
        torch.save(openai_model.state_dict(), path)
    else:
        save_torchscript(openai_model, path, trace=kind == "trace")
    pixels, ids = inputs()
    model, tokenizer, processor = clipfast.load(path)
    assert_same(clipfast_outputs(model, pixels, ids), reference(openai_model, pixels, ids))
    assert model.config.text_config.hidden_act == "quick_gelu" and model.config.vision_config.num_attention_heads == 2
    assert tokenizer.model_max_length == 16 and processor.size == {"shortest_edge": 32}
    assert tokenizer.text_cleaning == "openai"  # open_clip's ids, HTML entities and all
    assert processor.image_mean == OPENAI_MEAN
    # from_pretrained takes the same files, for any model class
    text = clipfast.CLIPTextModelWithProjection.from_pretrained(path)
    torch.testing.assert_close(text(input_ids=ids).text_embeds, reference(openai_model, pixels, ids)["text"],
                               atol=ATOL, rtol=1e-4)


def test_configless_state_dicts_outside_openais_models_warn(openai_model, tmp_path, monkeypatch):
    """A bare state dict is read with OpenAI's conventions; when its shapes are not one of OpenAI's released models
    (an open_clip checkpoint without its config, say) that is said, since it may load silently wrong."""
    gelu = dict(OPENAI_LIKE, quick_gelu=False)
    torch.save(build(gelu).state_dict(), tmp_path / "laion.bin")
    with pytest.warns(UserWarning, match="not one of OpenAI's released CLIP models.*open_clip_config="):
        clipfast.CLIPModel.from_pretrained(tmp_path / "laion.bin")
    with warnings.catch_warnings():  # with its config: no warning
        warnings.simplefilter("error")
        clipfast.CLIPModel.from_pretrained(tmp_path / "laion.bin", open_clip_config=gelu)
    torch.save(openai_model.state_dict(), tmp_path / "b32.pt")
    vision, text = OPENAI_LIKE["vision_cfg"], OPENAI_LIKE["text_cfg"]
    monkeypatch.setattr(formats, "_OPENAI_VITS", {(vision["width"], vision["layers"], vision["patch_size"],
                                             vision["image_size"], text["width"], text["layers"],
                                             OPENAI_LIKE["embed_dim"])})
    with warnings.catch_warnings():  # OpenAI's shapes (this tiny model stands in for them here): no warning
        warnings.simplefilter("error")
        clipfast.CLIPModel.from_pretrained(tmp_path / "b32.pt")


def test_openai_fp16_fp32_mix_is_upcast(openai_model, tmp_path):
    """OpenAI stored convolutions, linears, attention and projections in fp16: read exactly, as float32."""
    open_clip = import_reference("open_clip")
    mixed = build(OPENAI_LIKE)
    open_clip.model.convert_weights_to_lp(mixed, dtype=torch.float16)
    assert {p.dtype for p in mixed.parameters()} == {torch.float16, torch.float32}
    save_torchscript(mixed, tmp_path / "mixed.pt")
    model = clipfast.CLIPModel.from_pretrained(tmp_path / "mixed.pt")
    assert model.dtype == torch.float32
    pixels, ids = inputs()
    assert_same(clipfast_outputs(model, pixels, ids), reference(mixed.float(), pixels, ids))


def test_auto_dtype_loads_foreign_checkpoints_as_stored(openai_model, gelu_model, tmp_path):
    """torch_dtype="auto": the dtype holding most of the values (OpenAI's fp16 with a few fp32 tensors: fp16)."""
    open_clip = import_reference("open_clip")
    mixed = build(OPENAI_LIKE)
    open_clip.model.convert_weights_to_lp(mixed, dtype=torch.float16)
    save_torchscript(mixed, tmp_path / "mixed.pt")
    torch.save({k: v.half() for k, v in gelu_model.state_dict().items()}, tmp_path / "half.pt")
    (tmp_path / "half.json").write_text(json.dumps(OPEN_CLIP_GELU))
    for path in (tmp_path / "mixed.pt", tmp_path / "half.pt"):
        assert clipfast.CLIPModel.from_pretrained(path, torch_dtype="auto").dtype == torch.float16
        assert clipfast.CLIPModel.from_pretrained(path).dtype == torch.float32
    torch.save(openai_model.state_dict(), tmp_path / "full.pt")
    assert clipfast.CLIPModel.from_pretrained(tmp_path / "full.pt", torch_dtype="auto").dtype == torch.float32


def test_corrupt_torchscript_pickles_are_checkpoint_errors(tmp_path, monkeypatch):
    """Whatever a fuzzed data.pkl makes the reader raise (even MemoryError) is one CheckpointError."""
    path = save_module_archive(openai_state_dict(), tmp_path / "a.pt")
    for error in (MemoryError(), RecursionError("deep"), OverflowError("big")):
        def explode(self, error=error):
            raise error

        monkeypatch.setattr(torchscript._TorchScriptUnpickler, "load", explode)
        with pytest.raises(CheckpointError, match="could not be read as a TorchScript archive"):
            torchscript.read_torchscript(str(path))


def test_torchscript_reader_drops_non_weights(tmp_path):
    state = torchscript.read_torchscript(str(save_module_archive(openai_state_dict(), tmp_path / "a.pt")))
    assert "attn_mask" in state and "visual.conv1.weight" in state
    torch.testing.assert_close(state, openai_state_dict(), rtol=0, atol=0)
    converted = formats.openai_to_hf(state)
    assert not any("attn_mask" in k for k in converted)
    assert set(converted) == set(clipfast.CLIPModel(formats.config_from_weights(converted)).state_dict())


# ---------------------------------------------------------------------------------------------------------------
# open_clip files


@pytest.mark.parametrize("layout", ["pt_with_stem_json", "safetensors_with_open_clip_config", "explicit_config",
                                    "hub_folder"])
def test_open_clip_layouts_match_open_clip(gelu_model, tmp_path, layout):
    pixels, ids = inputs()
    state = gelu_model.state_dict()
    kwargs = {}
    if layout == "pt_with_stem_json":
        source = tmp_path / "my-model.pt"
        torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in state.items()}}, source)
        (tmp_path / "my-model.json").write_text(json.dumps(OPEN_CLIP_GELU))
    elif layout == "safetensors_with_open_clip_config":
        source = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(source))
        (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_GELU,
                                                                    "preprocess_cfg": IMAGENET}))
    elif layout == "explicit_config":
        source = tmp_path / "weights.bin"
        torch.save(state, source)
        kwargs["open_clip_config"] = OPEN_CLIP_GELU
    else:
        source = save_open_clip_folder(gelu_model, OPEN_CLIP_GELU, tmp_path / "repo", IMAGENET)
    model, _, processor = clipfast.load(source, **kwargs)
    assert_same(clipfast_outputs(model, pixels, ids), reference(gelu_model, pixels, ids))
    config = model.config
    assert config.vision_config.hidden_act == "gelu" and config.vision_config.num_attention_heads == 3
    assert config.vision_config.intermediate_size == 249 and config.text_config.intermediate_size == 49
    expected_mean = IMAGENET["mean"] if layout in ("hub_folder", "safetensors_with_open_clip_config") \
        else OPENAI_MEAN
    assert processor.image_mean == expected_mean
    loaded = clipfast.CLIPModel.from_pretrained(source, **kwargs)
    assert_same(clipfast_outputs(loaded, pixels, ids), reference(gelu_model, pixels, ids))
    auto = clipfast.AutoModel.from_pretrained(source, **kwargs)  # the Auto classes take these sources too
    assert_same(clipfast_outputs(auto, pixels, ids), reference(gelu_model, pixels, ids))


def test_open_clip_repo_from_the_hub(gelu_model, tmp_path):
    """``hf-hub:org/name`` and a plain id of a repo without config.json, served by a loopback Hub stand-in."""
    from helpers.fake_hub import FakeHub

    repo = save_open_clip_folder(gelu_model, OPEN_CLIP_GELU, tmp_path / "repo", IMAGENET)
    code = """
        import clipfast, torch
        a, tok, proc = clipfast.load("hf-hub:org/tiny-open-clip")
        b = clipfast.CLIPModel.from_pretrained("org/tiny-open-clip")
        ids = torch.tensor([[1, 5, 99, 0]])
        same = torch.equal(a.get_text_features(input_ids=ids), b.get_text_features(input_ids=ids))
        auto = clipfast.AutoProcessor.from_pretrained("org/tiny-open-clip")  # from open_clip_config.json alone
        same_proc = auto.image_processor.to_dict() == proc.to_dict() and auto.tokenizer.model_max_length == \
            tok.model_max_length
        changed = clipfast.AutoProcessor.from_pretrained("org/tiny-open-clip", do_normalize=False,
                                                         model_max_length=9)
        same_proc = same_proc and changed.image_processor.do_normalize is False and \
            changed.tokenizer.model_max_length == 9
        print("OK", same, proc.image_mean == [0.485, 0.456, 0.406], same_proc)
    """
    with FakeHub({"org/tiny-open-clip": repo}) as url:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
        run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 0, run.stderr
    assert "OK True True True" in run.stdout


def test_real_tokenizer_padding_agrees_with_open_clip(tmp_path):
    """clipfast's tokenizer pads with 49407 and open_clip's with 0; the pooled text embeddings agree."""
    open_clip = import_reference("open_clip")
    cfg = {**OPENAI_LIKE, "text_cfg": {**OPENAI_LIKE["text_cfg"], "vocab_size": 49408, "context_length": 77}}
    reference_model = build(cfg)
    torch.save(reference_model.state_dict(), tmp_path / "openai.pt")
    model, tokenizer, _ = clipfast.load(tmp_path / "openai.pt")
    texts = ["a photo of a cat", "a diagram", "two dogs playing in the snow"]
    ours = tokenizer(texts, padding="max_length", return_tensors="pt")
    theirs = open_clip.get_tokenizer("ViT-B-32")(texts)
    assert torch.equal(ours.input_ids[ours.attention_mask.bool()], theirs[theirs != 0])
    with torch.no_grad():
        torch.testing.assert_close(model.get_text_features(**ours), reference_model.encode_text(theirs),
                                   atol=ATOL, rtol=1e-4)


def test_pipeline_takes_an_openai_file(tmp_path):
    """pipeline(model=file.pt) brings OpenAI's vocabulary and preprocessing along with the weights."""
    from PIL import Image

    torch.save(openai_state_dict(vocab_size=49408, context_length=77), tmp_path / "openai.pt")
    image = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8))
    clip = clipfast.pipeline("zero-shot-image-classification", model=str(tmp_path / "openai.pt"), device="cpu")
    got = clip(image, candidate_labels=["cat", "dog"])
    model, tokenizer, processor = clipfast.load(tmp_path / "openai.pt")
    with torch.no_grad():
        text = tokenizer(["This is a photo of cat.", "This is a photo of dog."], padding=True, return_tensors="pt")
        logits = model(**text, pixel_values=processor(image, return_tensors="pt")["pixel_values"]).logits_per_image
    expected = logits.softmax(dim=-1)[0].tolist()
    assert {r["label"]: r["score"] for r in got} == pytest.approx({"cat": expected[0], "dog": expected[1]},
                                                                  abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# conversion: to transformers, and back to the source formats


@pytest.mark.parametrize("source_kind", ["openai_torchscript", "open_clip_folder"])
@pytest.mark.usefixtures("cli_env")
def test_convert_to_hf_loads_in_transformers_and_clipfast(openai_model, gelu_model, tmp_path, source_kind):
    transformers = import_reference("transformers")

    if source_kind == "openai_torchscript":
        ref_model, source = openai_model, save_torchscript(openai_model, tmp_path / "ViT.pt")
    else:
        ref_model = gelu_model
        source = save_open_clip_folder(gelu_model, OPEN_CLIP_GELU, tmp_path / "repo", IMAGENET)
    assert main(["convert", str(source), str(tmp_path / "hf")]) == 0
    files = set(os.listdir(tmp_path / "hf"))
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
            "special_tokens_map.json", "tokenizer.json", "preprocessor_config.json"} <= files
    pixels, ids = inputs()
    expected = reference(ref_model, pixels, ids)
    assert_same(clipfast_outputs(transformers.CLIPModel.from_pretrained(tmp_path / "hf"), pixels, ids), expected)
    assert_same(clipfast_outputs(clipfast.CLIPModel.from_pretrained(tmp_path / "hf"), pixels, ids), expected)
    processor = transformers.CLIPImageProcessor.from_pretrained(tmp_path / "hf")
    assert processor.crop_size == {"height": 32, "width": 32} and processor.resample == 3
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(tmp_path / "hf")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # the converted folder round-trips through clipfast.load with its tokenizer and processor
    for source in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):
        model, ours_tok, ours_proc = clipfast.load(source)
        assert ours_tok.model_max_length == 16 and ours_proc.image_mean == processor.image_mean
        assert_same(clipfast_outputs(model, pixels, ids), expected)


@pytest.mark.usefixtures("cli_env")
def test_round_trip_to_openai_loads_in_open_clip(openai_model, tmp_path):
    open_clip = import_reference("open_clip")
    save_torchscript(openai_model, tmp_path / "orig.pt")
    assert main(["convert", str(tmp_path / "orig.pt"), str(tmp_path / "hf")]) == 0
    # the converted folder is for transformers too: transformers' text cleaning, as its tokenizer would do
    assert "text_cleaning" not in json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back.pt"), "--to", "openai"]) == 0
    state = torch.load(tmp_path / "back.pt", weights_only=True)
    rebuilt = build(OPENAI_LIKE, seed=5)
    rebuilt.load_state_dict(state)  # strict: exactly open_clip's keys
    pixels, ids = inputs()
    assert_same(reference(rebuilt, pixels, ids), reference(openai_model, pixels, ids))
    # open_clip's own OpenAI loader reads the file too (it builds the model from the shapes; it tries
    # torch.jit.load first, which is fine on a file this test wrote)
    with warnings.catch_warnings():  # torch.jit.load's deprecation note
        warnings.simplefilter("ignore")
        loaded = open_clip.load_openai_model(str(tmp_path / "back.pt"), precision="fp32", device="cpu")
    assert loaded.visual.transformer.resblocks[0].attn.num_heads == 2


@pytest.mark.usefixtures("cli_env")
def test_round_trip_to_open_clip_loads_in_open_clip(gelu_model, tmp_path):
    """gelu + truncating MLP ratios: the config written back rebuilds exactly the same widths."""
    open_clip = import_reference("open_clip")
    source = save_open_clip_folder(gelu_model, OPEN_CLIP_GELU, tmp_path / "repo", {**IMAGENET, "resize_mode": "squash"})
    cv.convert(source, tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "open_clip"]) == 0
    rebuilt = open_clip.create_model(f"local-dir:{tmp_path / 'back'}")
    pixels, ids = inputs()
    assert_same(reference(rebuilt.eval(), pixels, ids), reference(gelu_model, pixels, ids))
    written = json.loads((tmp_path / "back" / "open_clip_config.json").read_text())
    preprocess = written["preprocess_cfg"]
    assert preprocess["resize_mode"] == "squash" and preprocess["mean"] == IMAGENET["mean"]
    assert not written["model_cfg"]["quick_gelu"]


@pytest.mark.usefixtures("cli_env")
def test_hf_folder_without_processor_to_open_clip_uses_the_image_size(tmp_path):
    """A folder from model.save_pretrained alone: the open_clip preprocess size is the model's image size."""
    config = clipfast.CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37,
                                                  num_hidden_layers=1, num_attention_heads=2),
                                 vision_config=dict(image_size=48, patch_size=8, hidden_size=32, intermediate_size=37,
                                                    num_hidden_layers=1, num_attention_heads=2), projection_dim=16)
    clipfast.CLIPModel(config).save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "oc"), "--to", "open_clip"]) == 0
    written = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    assert written["preprocess_cfg"]["size"] == 48 and written["model_cfg"]["vision_cfg"]["image_size"] == 48
    model, _, processor = clipfast.load(tmp_path / "oc")
    assert processor.crop_size == {"height": 48, "width": 48}


def test_mlp_ratio_survives_open_clip_truncation():
    for width in range(8, 200, 4):
        for intermediate in range(width, 5 * width):
            assert int(width * formats._mlp_ratio(width, intermediate)) == intermediate


def test_to_openai_refuses_models_outside_openai_conventions(gelu_model, tmp_path):
    source = save_open_clip_folder(gelu_model, OPEN_CLIP_GELU, tmp_path / "repo")
    with pytest.raises(CheckpointError, match="quick_gelu and heads = width / 64"):
        cv.convert(source, tmp_path / "x.pt", to="openai")
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------------------------------------------------------
# preprocessing settings


def test_preprocess_settings():
    squash = formats.image_processor_config({"resize_mode": "squash", "interpolation": "bilinear", **IMAGENET}, 224)
    assert squash["size"] == {"height": 224, "width": 224} and not squash["do_center_crop"] and squash["resample"] == 2
    assert formats.open_clip_preprocess(squash)["resize_mode"] == "squash"
    with pytest.raises(CheckpointError, match="resize_mode 'longest'"):
        formats.image_processor_config({"resize_mode": "longest"}, 224)
    with pytest.raises(CheckpointError, match="interpolation 'nearest'"):
        formats.image_processor_config({"interpolation": "nearest"}, 224)


def test_inexpressible_preprocessing_fails_load_but_not_the_model(gelu_model, tmp_path):
    source = save_open_clip_folder(gelu_model, OPEN_CLIP_GELU, tmp_path / "repo", {"resize_mode": "longest"})
    with pytest.raises(CheckpointError, match="longest"):
        clipfast.load(source)
    with pytest.raises(CheckpointError, match="longest"):
        cv.convert(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert clipfast.CLIPModel.from_pretrained(source).config.vision_config.image_size == 32


# ---------------------------------------------------------------------------------------------------------------
# architectures CLIPModel cannot express


def _tiny(**changes):
    cfg = json.loads(json.dumps(OPEN_CLIP_GELU))
    for section, values in changes.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg


@pytest.mark.parametrize("cfg, found", [
    (_tiny(vision_cfg={"layers": [1, 1, 1, 1], "width": 16, "head_width": 8}), "ResNet image tower"),
    (_tiny(vision_cfg={"ls_init_value": 1e-4}), "layer scale"),
    (_tiny(init_logit_bias=-10.0), "SigLIP"),
    (_tiny(vision_cfg={"attentional_pool": True, "attn_pooler_heads": 3}), "attentional pooling"),
    (_tiny(text_cfg={"qk_norm": True}), "custom attention blocks"),
    (_tiny(vision_cfg={"scale_heads": True}), "custom attention blocks"),
    (_tiny(text_cfg={"scale_fc": True}), "custom attention blocks"),
], ids=["resnet", "layer_scale", "siglip", "attentional_pool", "qk_norm", "scale_heads", "scale_fc"])
def test_inexpressible_architectures_are_refused_by_name(tmp_path, cfg, found):
    open_clip = import_reference("open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=found):  # the config names it
        clipfast.CLIPModel.from_pretrained(tmp_path / "w.pt", open_clip_config=cfg)
    with pytest.raises(CheckpointError, match=found):  # and so do the keys, without a config
        clipfast.load(tmp_path / "w.pt")


def test_non_square_image_size_is_refused(tmp_path):
    """A [h, w] image size is refused even when its patch grid has a square count (2 x 8 patches read as 4 x 4
    would put the position embeddings on the wrong patches)."""
    open_clip = import_reference("open_clip")
    cfg = _tiny(vision_cfg={"image_size": [16, 64], "patch_size": 8})
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**cfg).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"non-square size \[16, 64\]"):
        clipfast.CLIPModel.from_pretrained(tmp_path / "w.pt", open_clip_config=cfg)
    square = _tiny(vision_cfg={"image_size": [32, 32], "patch_size": [8, 8]})  # the list form of a square is fine
    torch.save(open_clip.CLIP(**square).state_dict(), tmp_path / "s.pt")
    assert clipfast.CLIPModel.from_pretrained(tmp_path / "s.pt", open_clip_config=square).config.vision_config \
        .image_size == 32
    with pytest.raises(CheckpointError, match="image_size=48, but the weights have a 4x4 patch grid"):
        clipfast.CLIPModel.from_pretrained(tmp_path / "s.pt", open_clip_config=_tiny(vision_cfg={"image_size": 48}))


@pytest.mark.parametrize("text_cfg, found", [({"hf_tokenizer_name": "google/mt5-base"},
                                              "the tokenizer 'google/mt5-base'"),
                                             ({"tokenizer_kwargs": {"clean": "whitespace"}}, "tokenizer_kwargs"),
                                             ({"tokenizer_kwargs": {"reduction_mask": "simple"}}, "tokenizer_kwargs"),
                                             ({"tokenizer_kwargs": {"clean": "lower", "context_length": 16}}, None)])
def test_open_clip_models_with_another_tokenizer(tmp_path, text_cfg, found):
    """The model loads; asking for its tokenizer (load, AutoProcessor) is a clear error when open_clip would
    tokenize with something else than OpenAI's plain BPE, never a tokenizer that gives other ids."""
    open_clip = import_reference("open_clip")
    cfg = _tiny(text_cfg=text_cfg)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in open_clip.CLIP(**_tiny()).state_dict().items()},
              tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    clipfast.CLIPModel.from_pretrained(tmp_path)
    if found is None:
        assert clipfast.load(tmp_path)[1].model_max_length == 16
        return
    for make in (clipfast.load, clipfast.AutoProcessor.from_pretrained):
        with pytest.raises(CheckpointError, match=f"uses .*{found}.*OpenAI's BPE"):
            make(tmp_path)


def test_open_clip_image_size_is_the_models_crop(tmp_path):
    """open_clip crops to the model's image_size, which need not be a multiple of the patch size (the conv drops the
    rest), whatever preprocess_cfg's size says, and rounds half-pixel crop offsets to even (torchvision); the
    model and processors clipfast.load gives follow it, to the pixel."""
    open_clip = import_reference("open_clip")
    from PIL import Image

    rng = np.random.default_rng(0)
    # crops that start on whole pixels, on half pixels that round down, and on half pixels that round up
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((48, 36), (41, 36), (39, 36), (36, 43), (50, 41), (64, 97))]
    for image_size, preprocess in ((36, {}), (32, {"size": 48})):
        cfg = _tiny(vision_cfg={"image_size": image_size})
        folder = tmp_path / f"oc{image_size}"
        folder.mkdir()
        torch.manual_seed(0)
        reference = open_clip.CLIP(**cfg).eval()
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
                  folder / "open_clip_model.safetensors")
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}))
        model, _, processor = clipfast.load(folder)
        _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        want = torch.stack([transform(image) for image in images])
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        assert model.config.vision_config.image_size == image_size and pixels.shape[-1] == image_size
        torch.testing.assert_close(pixels, want, atol=1e-6, rtol=0)
        fast = clipfast.CLIPImageProcessorFast(**processor.to_dict())(images, return_tensors="pt")["pixel_values"]
        assert (fast - want).abs().max() <= 0.02  # one uint8 level, the fast class's PIL lane
        with torch.no_grad():
            torch.testing.assert_close(model.get_image_features(pixel_values=pixels), reference.encode_image(want),
                                       atol=1e-5, rtol=1e-5)
        # a converted folder crops as transformers does, for transformers to read alike
        cv.convert(folder, tmp_path / f"hf{image_size}")
        written = json.loads((tmp_path / f"hf{image_size}" / "preprocessor_config.json").read_text())
        assert "crop_rounding" not in written


@pytest.mark.parametrize("key, found", [("text_decoder.resblocks.0.ln_1.weight", "CoCa"),
                                        ("text.transformer.embeddings.word_embeddings.weight", "Hugging Face text"),
                                        ("visual.mystery.weight", "Unknown tensors")])
def test_foreign_keys_are_refused_not_dropped(openai_model, tmp_path, key, found):
    state = {**openai_model.state_dict(), key: torch.zeros(2)}
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=found):
        clipfast.CLIPModel.from_pretrained(tmp_path / "w.pt")


def _coca_keys() -> dict:
    """What a CoCa checkpoint adds to a CLIP's keys: the attentional pooler, the text CLS token, the decoder."""
    return {"visual.attn_pool.query": torch.zeros(4, 8), "visual.attn_pool.ln_q.weight": torch.ones(8),
            "text.cls_emb": torch.zeros(64), "text_decoder.resblocks.0.cross_attn.in_proj_weight": torch.zeros(3, 3),
            "text_decoder.ln_final.weight": torch.ones(64)}


@pytest.mark.parametrize("extra, found", [
    (_coca_keys(), "CoCa: a captioning model with a text decoder"),
    ({k: v for k, v in _coca_keys().items() if not k.startswith("text_decoder.")},  # its contrastive part alone
     "CoCa: a captioning model with a text decoder"),
    ({"visual.attn_pool.query": torch.zeros(4, 8)}, "attentional pooling"),  # a CLIP with an attentional pooler
])
def test_coca_keys_are_named(tmp_path, extra, found):
    """CoCa is named as the architecture it is, not by the first part of it CLIPModel lacks (issue 17)."""
    torch.save({**openai_state_dict(), **extra}, tmp_path / "w.pt")
    for make in (clipfast.CLIPModel.from_pretrained, clipfast.load):
        with pytest.raises(CheckpointError, match=found) as error:
            make(tmp_path / "w.pt")
        if "CoCa" in found:
            assert "clipfast loads plain CLIP ViTs" in str(error.value) and "open_clip" in str(error.value)


def test_coca_config_is_named_before_its_options(tmp_path):
    """open_clip's CoCa configs set vision_cfg.attentional_pool too; the refusal names CoCa (multimodal_cfg)."""
    coca = {"embed_dim": 32, "vision_cfg": {**OPENAI_LIKE["vision_cfg"], "attentional_pool": True,
                                            "attn_pooler_heads": 2, "output_tokens": True},
            "text_cfg": {**OPENAI_LIKE["text_cfg"], "embed_cls": True, "output_tokens": True},
            "multimodal_cfg": {"context_length": 16, "vocab_size": 100, "width": 64, "heads": 1, "layers": 1},
            "custom_text": True}
    torch.save(openai_state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"describes CoCa: a captioning model with a text decoder "
                                              r"\(multimodal_cfg\); clipfast loads plain CLIP ViTs"):
        clipfast.CLIPModel.from_pretrained(tmp_path / "w.pt", open_clip_config=coca)
    folder = tmp_path / "repo"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in {**openai_state_dict(), **_coca_keys()}.items()},
              str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": coca, "preprocess_cfg": {}}))
    for make in (clipfast.load, clipfast.AutoModel.from_pretrained, lambda f: cv.convert(f, tmp_path / "hf")):
        with pytest.raises(CheckpointError, match="CoCa: a captioning model"):
            make(folder)


def test_open_clip_coca_model_is_named(tmp_path):
    """A real (tiny) open_clip CoCa, as open_clip saves it, with and without its config."""
    open_clip = import_reference("open_clip")
    cfg = {"embed_dim": 24, "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8,
                                           "image_size": 32, "attentional_pool": True, "attn_pooler_heads": 2,
                                           "output_tokens": True},
           "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1,
                        "embed_cls": True, "output_tokens": True},
           "multimodal_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1,
                              "attn_pooler_heads": 2}}
    model = open_clip.CoCa(**cfg)
    folder = save_open_clip_folder(model, cfg, tmp_path / "coca")
    torch.save(model.state_dict(), tmp_path / "coca.pt")
    for source in (folder, tmp_path / "coca.pt"):
        with pytest.raises(CheckpointError, match="CoCa: a captioning model with a text decoder"):
            clipfast.load(source)


@pytest.mark.parametrize("state, found", [
    ({"layer1.0.conv1.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)},
     r"tensors \(e.g. \['fc.bias', 'layer1.0.conv1.weight'\]\) have none of a CLIP checkpoint's keys"),
    ({"epoch": 3, "name": "run"}, "holds no weight tensors"),
])
def test_files_that_are_not_clip_are_named(tmp_path, state, found):
    """A weights file of another model is refused for what it is, not as a CLIP with unknown tensors."""
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=found):
        clipfast.load(tmp_path / "other.pt")


def test_open_clip_config_sections_must_be_objects(tmp_path):
    torch.save(openai_state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"vision_cfg is a str \('ViT-B-32'\); it must be an object"):
        clipfast.CLIPModel.from_pretrained(tmp_path / "w.pt",
                                           open_clip_config={"vision_cfg": "ViT-B-32", "text_cfg": {}})


# ---------------------------------------------------------------------------------------------------------------
# the one decision: which reader a source goes to


def test_source_kind(tmp_path):
    pt = save_module_archive(openai_state_dict(), tmp_path / "ViT.pt")
    hf = tmp_path / "hf"
    cv.convert(pt, hf)
    oc = tmp_path / "oc"
    cv.convert(pt, oc, to="open_clip")
    both = tmp_path / "both"  # a folder with both configs is a transformers folder
    cv.convert(pt, both)
    cv.convert(pt, both, to="open_clip")
    (tmp_path / "sub").mkdir()
    cv.convert(pt, tmp_path / "sub" / "oc", to="open_clip")
    cases = {str(pt): "file", str(hf): "hf", str(hf / "model.safetensors"): "file", str(oc): "open_clip",
             str(both): "hf", "hf-hub:org/name": "open_clip", str(tmp_path / "missing"): "hf",
             "./no/such/folder": "hf"}
    for source, kind in cases.items():
        assert formats.source_kind(source) == kind, source
        assert formats.is_foreign(source) is (kind != "hf")
    assert formats.source_kind(tmp_path / "sub", subfolder="oc") == "open_clip"
    assert formats.source_kind(hf, subfolder="model.safetensors") == "file"
    for kind, source in (("file", pt), ("open_clip", oc), ("hf", hf)):
        ckpt = formats.read_checkpoint(source, kind=kind)
        assert ckpt.foreign is (kind != "hf") and ckpt.config.projection_dim == OPENAI_LIKE["embed_dim"]


def test_every_loader_asks_the_one_decision_once(tmp_path, monkeypatch):
    """clipfast.load, from_pretrained, the processor and the pipeline each ask formats.source_kind once per call,
    and read the checkpoint with its answer; no other module decides."""
    pt = save_module_archive(openai_state_dict(vocab_size=49408, context_length=77), tmp_path / "ViT.pt")
    oc = tmp_path / "oc"
    cv.convert(pt, oc, to="open_clip")
    calls = []
    decide = formats.source_kind
    monkeypatch.setattr(formats, "source_kind", lambda *a, **k: calls.append(a[0]) or decide(*a, **k))
    for make, source in ((clipfast.load, pt), (clipfast.CLIPModel.from_pretrained, pt),
                         (clipfast.CLIPTextModelWithProjection.from_pretrained, oc),
                         (clipfast.CLIPProcessor.from_pretrained, oc),
                         (lambda s: clipfast.pipeline(model=str(s)), pt), (lambda s: cv.convert(s, tmp_path / "x"), oc)):
        calls.clear()
        make(source)
        assert calls == [str(source)] or calls == [source], (make, calls)
    from clipfast import auto, loading, pipelines, processing

    for module in (cv, auto, loading, processing, pipelines):
        assert not hasattr(module, "is_foreign") and not hasattr(module, "source_kind"), module



def test_the_decision_and_processors_load_without_torch():
    """formats' source decision and config readers serve the processor and tokenizer layers: importing them (and
    the Auto classes) loads no torch, as before the readers moved out of convert."""
    code = "import sys, clipfast.formats, clipfast.processing, clipfast.auto; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr

# ---------------------------------------------------------------------------------------------------------------
# safety: nothing in a file runs


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _replace_members(source, destination, replace):
    """A copy of the zip ``source`` with each member's bytes passed through ``replace(name, data)``."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(destination, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, replace(item.filename, src.read(item.filename)))
    return destination


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL opcodes
@pytest.mark.usefixtures("cli_env")
def test_torchscript_archive_with_planted_pickle_is_refused(tmp_path, capsys, protocol):
    good = save_module_archive(openai_state_dict(), tmp_path / "good.pt")
    marker = tmp_path / "pwned"
    evil = _replace_members(good, tmp_path / "ViT-B-32.pt", lambda name, data: pickle.dumps(
        {"visual": _Evil(marker)}, protocol=protocol) if name.endswith("/data.pkl") else data)
    assert torchscript.is_torchscript(str(evil))
    with pytest.raises(CheckpointError, match=r"system.*refuses"):
        clipfast.load(evil)
    assert main(["convert", str(evil), str(tmp_path / "out")]) == 1
    assert "system" in capsys.readouterr().err
    assert not marker.exists()


def test_torchscript_extension_codes_meet_the_allow_list(tmp_path):
    """copyreg extension codes (EXT opcodes) name a global without GLOBAL: they go through find_class too."""
    import copyreg

    marker = tmp_path / "pwned"
    good = save_module_archive(openai_state_dict(), tmp_path / "good.pt")
    copyreg.add_extension("posix", "system", 0x7FFF0001)
    try:
        payload = pickle.dumps(_Evil(marker), protocol=2)
    finally:
        copyreg.remove_extension("posix", "system", 0x7FFF0001)
    assert pickle.EXT4 in payload  # the pickle names os.system by its code only
    copyreg.add_extension("posix", "system", 0x7FFF0001)  # the reader's process knows the code
    try:
        evil = _replace_members(good, tmp_path / "ext.pt",
                                lambda name, data: payload if name.endswith("/data.pkl") else data)
        with pytest.raises(CheckpointError, match=r"posix\.system.*refuses"):
            torchscript.read_torchscript(str(evil))
    finally:
        copyreg.remove_extension("posix", "system", 0x7FFF0001)
    assert not marker.exists()


def test_torchscript_storage_sizes_are_checked_before_reading(tmp_path):
    """A data record whose size disagrees with its pickle record is refused before it is decompressed (a small
    zip that would expand into a huge buffer never does)."""
    good = save_module_archive(openai_state_dict(), tmp_path / "good.pt")
    short = _replace_members(good, tmp_path / "short.pt",
                             lambda name, data: data[:-4] if "/data/" in name else data)
    with pytest.raises(CheckpointError, match="bytes, its record says"):
        torchscript.read_torchscript(str(short))


def test_torchscript_deep_module_nesting_is_refused(tmp_path):
    """A hostile archive nesting module records 100,000 levels deep (each holding the last) is refused with one
    CheckpointError, neither a RecursionError nor keys that grow without bound."""
    depth = 100_000
    ops = [pickle.PROTO + bytes([2])]
    for i in range(depth):  # record i holds {"m": record i-1}; each is memoized and fetched back by index
        inner = pickle.LONG_BINGET + (i - 1).to_bytes(4, "little") if i else pickle.NONE
        ops += [pickle.GLOBAL, b"__torch__.M\nM\n", pickle.EMPTY_TUPLE, pickle.NEWOBJ, pickle.EMPTY_DICT,
                pickle.SHORT_BINUNICODE + b"\x01m", inner, pickle.SETITEM, pickle.BUILD,
                pickle.LONG_BINPUT + i.to_bytes(4, "little"), pickle.POP]
    ops += [pickle.LONG_BINGET + (depth - 1).to_bytes(4, "little"), pickle.STOP]
    good = save_module_archive(openai_state_dict(), tmp_path / "good.pt")
    nested = _replace_members(good, tmp_path / "nested.pt",
                              lambda name, data: b"".join(ops) if name.endswith("/data.pkl") else data)
    with pytest.raises(CheckpointError, match="nests module records deeper than 64 levels"):
        clipfast.load(nested)


def test_plain_pt_with_planted_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"visual.proj": _Evil(marker)}, tmp_path / "ViT-B-32.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        clipfast.CLIPModel.from_pretrained(tmp_path / "ViT-B-32.pt")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# command line


@pytest.mark.usefixtures("cli_env")
def test_cli_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    assert main(["convert", "--help"]) == 0
    assert "--to {hf,openai,open_clip}" in capsys.readouterr().out
    assert main(["convert", "a", "b", "--to", "onnx"]) == 2
    assert main([]) == 2
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clipfast: error:")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 1
    assert "--force" in capsys.readouterr().err
