"""The two snippets users run, with only the import changed, against transformers 4.57 on the same checkpoint;
and the pipeline's own behaviour (batching, ties, streaming, devices, saving), which needs no reference library.

For the parity tests the hub id becomes a folder in the Hub repo's layout (a full-size ViT-B/32 with random weights
written by transformers, plus tokenizer and preprocessor files); the COCO URL becomes a loopback server serving a
real photo. The other tests use a tiny model folder written by clipfast alone.
"""

from __future__ import annotations

import io
import json
import socket
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import clipfast
from clipfast.errors import CheckpointError, ImageLoadError, InputError
from helpers import reference
from helpers.loopback import serve

LABELS = ["a photo of a cat", "a photo of a dog", "a photo of a car"]
DEVICE = 0 if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A full-size random ViT-B/32 folder written by transformers (for the parity tests)."""
    transformers = reference("transformers")
    reference("open_clip")  # the tokenizer files are built from open_clip's copy of the vocabulary
    from helpers.tokenizer_files import hub_dir

    folder = tmp_path_factory.mktemp("clip-vit-base-patch32")
    torch.manual_seed(0)
    transformers.CLIPModel(transformers.CLIPConfig()).save_pretrained(folder)
    processor = transformers.CLIPProcessor(image_processor=transformers.CLIPImageProcessor(),
                                           tokenizer=transformers.CLIPTokenizerFast.from_pretrained(hub_dir()))
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random CLIP folder (32-pixel images, OpenAI's vocabulary) written by clipfast alone."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    config = clipfast.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4), projection_dim=16)
    clipfast.CLIPModel(config).save_pretrained(folder)
    clipfast.CLIPTokenizerFast.from_openai_vocab().save_pretrained(folder)
    clipfast.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder)
    return folder


@pytest.fixture(scope="module")
def photo_bytes():
    """A real photo (scikit-image's cat) as JPEG; a smooth synthetic picture where scikit-image is not installed."""
    try:
        from skimage import data

        array = data.chelsea()
    except ImportError:
        y, x = np.mgrid[0:300, 0:451]
        array = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(photo_bytes):
    """Loopback HTTP: /cat.jpg (a real photo), /missing (404), /text (not an image), /slow (never answers)."""
    routes = {"/cat.jpg": (200, "image/jpeg", photo_bytes), "/text": (200, "text/html", b"<html>hello</html>"),
              "/slow": lambda handler: time.sleep(5)}
    with serve(routes) as url:
        yield url


def _snippet_one(module, model, url, dtype):
    clip = module.pipeline(task="zero-shot-image-classification", model=model, torch_dtype=dtype,
                           device=DEVICE if module is clipfast else ("cuda:0" if DEVICE == 0 else "cpu"))
    return clip(url, candidate_labels=LABELS)


def test_snippet_one_pipeline_fp32(hub_folder, server):
    transformers = reference("transformers")
    ours = _snippet_one(clipfast, str(hub_folder), f"{server}/cat.jpg", torch.float32)
    ref = _snippet_one(transformers, str(hub_folder), f"{server}/cat.jpg", torch.float32)
    assert [r["label"] for r in ours] == [r["label"] for r in ref]
    for a, b in zip(ours, ref):
        assert abs(a["score"] - b["score"]) < 1e-4
    assert abs(sum(r["score"] for r in ours) - 1) < 1e-5


def test_snippet_one_pipeline_bf16(hub_folder, server):
    transformers = reference("transformers")
    ours = _snippet_one(clipfast, str(hub_folder), f"{server}/cat.jpg", torch.bfloat16)
    ref = _snippet_one(transformers, str(hub_folder), f"{server}/cat.jpg", torch.bfloat16)
    assert [r["label"] for r in ours] == [r["label"] for r in ref]
    for a, b in zip(ours, ref):
        assert abs(a["score"] - b["score"]) < 2e-2


def _snippet_two(module, model_id, url, dtype):
    import requests

    model = module.AutoModel.from_pretrained(model_id, torch_dtype=dtype, attn_implementation="sdpa")
    processor = module.AutoProcessor.from_pretrained(model_id)
    image = Image.open(requests.get(url, stream=True).raw)
    inputs = processor(text=LABELS, images=image, return_tensors="pt", padding=True)
    outputs = model(**inputs)
    probs = outputs.logits_per_image.softmax(dim=1)
    idx = probs.argmax(dim=1).item()
    return LABELS[idx], probs.float()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_snippet_two_auto_classes(hub_folder, server, dtype, tol):
    transformers = reference("transformers")
    label, probs = _snippet_two(clipfast, str(hub_folder), f"{server}/cat.jpg", dtype)
    ref_label, ref_probs = _snippet_two(transformers, str(hub_folder), f"{server}/cat.jpg", dtype)
    assert label == ref_label
    assert torch.allclose(probs, ref_probs, atol=tol)


def test_batched_equals_one_at_a_time(tiny_folder, server, photo_bytes, tmp_path):
    path = tmp_path / "cat.png"
    Image.open(io.BytesIO(photo_bytes)).rotate(90, expand=True).save(path)
    clip = clipfast.pipeline("zero-shot-image-classification", model=str(tiny_folder), device="cpu")
    images = [f"{server}/cat.jpg", str(path), Image.open(path), photo_bytes]
    batched = clip(images, candidate_labels=["cat", "dog", "car", "tree"], batch_size=3)
    single = [clip(image, candidate_labels=["cat", "dog", "car", "tree"]) for image in images]
    assert len(batched) == 4
    for a, b in zip(batched, single):
        assert [r["label"] for r in a] == [r["label"] for r in b]
        assert all(abs(x["score"] - y["score"]) < 1e-5 for x, y in zip(a, b))
    assert len(clip(str(path), candidate_labels=["cat", "dog", "car"], top_k=2)) == 2


def test_pipeline_bad_inputs(tiny_folder, server):
    clip = clipfast.pipeline("zero-shot-image-classification", model=str(tiny_folder), device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(ImageLoadError):
        clip(f"http://127.0.0.1:{closed_port}/x.jpg", candidate_labels=["a"])
    start = time.time()
    with pytest.raises(ImageLoadError):
        clip(f"{server}/slow", candidate_labels=["a"], timeout=0.5)
    assert time.time() - start < 4
    with pytest.raises(ImageLoadError, match="404"):
        clip(f"{server}/missing", candidate_labels=["a"])
    with pytest.raises(ImageLoadError):
        clip(f"{server}/text", candidate_labels=["a"])
    with pytest.raises(InputError, match="empty"):
        clip(f"{server}/cat.jpg", candidate_labels=[])
    with pytest.raises(InputError, match="required"):
        clip(f"{server}/cat.jpg")
    for template in ("a {} photo of {style}", "{} next to {}", "constant", None):
        with pytest.raises(InputError, match="hypothesis_template"):
            clip(f"{server}/cat.jpg", candidate_labels=["a"], hypothesis_template=template)


def test_bare_string_labels_are_split_on_commas(tiny_folder, server):
    """Documented choice: "cat, dog" means two labels (as transformers' text zero-shot pipeline), never letters."""
    clip = clipfast.pipeline("zero-shot-image-classification", model=str(tiny_folder), device="cpu")
    out = clip(f"{server}/cat.jpg", candidate_labels="cat, dog")
    assert sorted(r["label"] for r in out) == ["cat", "dog"]
    assert [r["label"] for r in clip(f"{server}/cat.jpg", candidate_labels="cat")] == ["cat"]


def test_equal_prompts_tie_in_candidate_order_on_every_call(tiny_folder, photo_bytes):
    """Equal prompts are encoded once, so they tie exactly and keep the candidate order (as the reference), also
    after the pipeline's weight packing starts (whose rows' last bits can depend on their batch position)."""
    clip = clipfast.pipeline("zero-shot-image-classification", model=str(tiny_folder), device="cpu")
    image = Image.open(io.BytesIO(photo_bytes))
    for _ in range(3):
        out = clip(image, candidate_labels=["B", "b", "b "])  # one token sequence: "this is a photo of b ."
        assert [r["label"] for r in out] == ["B", "b", "b "] and len({r["score"] for r in out}) == 1
        out = clip(image, candidate_labels=["dog", "cat", "dog"])
        dogs = [i for i, r in enumerate(out) if r["label"] == "dog"]
        assert dogs[1] == dogs[0] + 1 and out[dogs[0]]["score"] == out[dogs[1]]["score"]
    embeds = clip.text_embeddings(["x", "y", "x", "X "])  # "X " tokenizes as "x"
    assert torch.equal(embeds[0], embeds[2]) and torch.equal(embeds[0], embeds[3]) and embeds.shape[0] == 4
    images = [image, image.rotate(90), image.transpose(0)]
    for ranked in clip(images, candidate_labels=["cat", "Cat", "cat ", "dog"]):
        cats = [r for r in ranked if r["label"].strip().lower() == "cat"]
        assert [r["label"] for r in cats] == ["cat", "Cat", "cat "] and len({r["score"] for r in cats}) == 1


def test_generators_stream_results_like_the_reference(hub_folder, photo_bytes):
    transformers = reference("transformers")
    image = Image.open(io.BytesIO(photo_bytes))
    images = [image, image.rotate(90), image.transpose(0)]
    labels = ["a photo of a cat", "a photo of a dog"]
    ours = clipfast.pipeline("zero-shot-image-classification", model=str(hub_folder), device="cpu")
    ref = transformers.pipeline("zero-shot-image-classification", model=str(hub_folder), device="cpu")
    streamed = ours((im for im in images), candidate_labels=labels, batch_size=2)
    assert not isinstance(streamed, list)
    got, want = list(streamed), list(ref((im for im in images), candidate_labels=labels))
    assert [[r["label"] for r in row] for row in got] == [[r["label"] for r in row] for row in want]
    for row_a, row_b in zip(got, want):
        for a, b in zip(row_a, row_b):
            assert abs(a["score"] - b["score"]) < 1e-5
    with pytest.raises(InputError, match="hypothesis_template"):
        ours(iter(images), candidate_labels=labels, hypothesis_template="{} and {x}")  # raised at once


def test_cuda_device_without_cuda_warns_and_runs_on_cpu(tiny_folder, server):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        clip = clipfast.pipeline("zero-shot-image-classification", model=str(tiny_folder), device=0)
    assert clip.device.type == "cpu"
    with pytest.raises(InputError, match="not a device"):
        clipfast.pipeline("zero-shot-image-classification", model=str(tiny_folder), device="gpu-please")


def test_pipeline_save_and_reload(tiny_folder, server, tmp_path):
    clip = clipfast.pipeline("zero-shot-image-classification", model=str(tiny_folder), device="cpu")
    clip.save_pretrained(tmp_path / "saved")
    again = clipfast.pipeline("zero-shot-image-classification", model=str(tmp_path / "saved"), device="cpu")
    a = clip(f"{server}/cat.jpg", candidate_labels=LABELS)
    b = again(f"{server}/cat.jpg", candidate_labels=LABELS)
    assert a == b


def test_unknown_task_is_refused():
    with pytest.raises(InputError, match="zero-shot-image-classification"):
        clipfast.pipeline("text-generation", model="x")


# -- CLIPProcessor ------------------------------------------------------------------------------------------------


def test_processor_matches_reference_and_routes_kwargs(hub_folder, photo_bytes):
    transformers = reference("transformers")
    image = Image.open(io.BytesIO(photo_bytes))
    ours = clipfast.CLIPProcessor.from_pretrained(hub_folder)
    ref = transformers.CLIPProcessor.from_pretrained(hub_folder)
    kwargs = dict(text=["a cat", "a much longer caption of a dog"], images=[image, image], return_tensors="pt",
                  padding="max_length", max_length=12, truncation=True)
    a, b = ours(**kwargs), ref(**kwargs)
    assert list(a.keys()) == list(b.keys()) == ["pixel_values", "input_ids", "attention_mask"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    sized = ours(images=image, size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                 return_tensors="pt")
    assert sized["pixel_values"].shape == (1, 3, 64, 64)
    assert ours.model_input_names == ref.model_input_names == ["pixel_values", "input_ids", "attention_mask"]
    assert ours.batch_decode(a["input_ids"], skip_special_tokens=True)[0] == "a cat"
    assert ours(["a cat"], return_tensors="pt").tokens() == ["<|startoftext|>", "a</w>", "cat</w>", "<|endoftext|>"]
    with pytest.raises(ValueError, match="either text or images"):
        ours()
    # positional arguments in transformers 4.57's order (images, text) and in the older 4.x order (text, images)
    for args in ((image, "a cat"), ("a cat", image)):
        got = ours(*args, return_tensors="pt")
        assert list(got) == ["pixel_values", "input_ids", "attention_mask"]
        assert torch.equal(got["pixel_values"], a["pixel_values"][:1]) and got["input_ids"].tolist() == [
            a["input_ids"][0][:4].tolist()]
    assert list(ours(image, return_tensors="pt")) == list(ref(image, return_tensors="pt")) == ["pixel_values"]
    assert list(ours("a cat", return_tensors="pt")) == ["input_ids", "attention_mask"]
    path = str(hub_folder / "photo.jpg")
    image.save(path)
    calls = [((path, "a cat"), {}), (([path, path], "a cat"), {}), ((path,), {}), (([path],), {}),
             ((None, "a cat"), {}), ((image,), {"text": "a cat"})]
    for args, kwargs in calls:  # transformers 4.57's own calls
        got, want = ours(*args, return_tensors="pt", **kwargs), ref(*args, return_tensors="pt", **kwargs)
        assert list(got) == list(want), (args, kwargs)
        for key in want:
            assert torch.allclose(got[key].float(), want[key].float(), atol=1e-6), (args, key)
    for args, kwargs in ((("a cat",), {"images": image}), (("a cat", path), {})):  # the older (text, images)
        got = ours(*args, return_tensors="pt", **kwargs)
        want = ref(text="a cat", images=kwargs.get("images", path), return_tensors="pt")
        assert list(got) == list(want), (args, kwargs)
        for key in want:
            assert torch.allclose(got[key].float(), want[key].float(), atol=1e-6), (args, key)
        for key in want:
            assert torch.allclose(got[key].float(), want[key].float(), atol=1e-6), (args, key)
    with pytest.raises(TypeError, match="positional"):
        ours(image, "a cat", "extra")


def test_processor_ignores_unknown_arguments_with_a_warning(tiny_folder, caplog):
    ours = clipfast.CLIPProcessor.from_pretrained(tiny_folder)
    with caplog.at_level("WARNING"):
        got = ours(text="x", colour="red")
    assert "`colour` is not a valid argument" in caplog.text and got["input_ids"] == [49406, 343, 49407]


def test_processor_from_pretrained_forwards_component_kwargs(tiny_folder):
    processor = clipfast.CLIPProcessor.from_pretrained(tiny_folder, do_normalize=False, bos_token="(BOS)")
    assert processor.image_processor.do_normalize is False
    assert processor.tokenizer.bos_token == "(BOS)"


def test_processor_save_load_both_layouts(hub_folder, tmp_path, photo_bytes):
    transformers = reference("transformers")
    image = Image.open(io.BytesIO(photo_bytes))
    processor = clipfast.CLIPProcessor.from_pretrained(hub_folder)
    processor.save_pretrained(tmp_path / "v4")
    assert (tmp_path / "v4" / "preprocessor_config.json").exists()
    ref = transformers.CLIPProcessor.from_pretrained(tmp_path / "v4")  # what we write, transformers reads
    expected = processor(images=image, return_tensors="pt")["pixel_values"]
    assert torch.allclose(ref(images=image, return_tensors="pt")["pixel_values"], expected, atol=1e-6)
    # the transformers 5.x layout: processor_config.json holding the image processor, no preprocessor_config.json
    v5 = tmp_path / "v5"
    processor.tokenizer.save_pretrained(v5)
    settings = json.loads((tmp_path / "v4" / "preprocessor_config.json").read_text())
    (v5 / "processor_config.json").write_text(json.dumps({"image_processor": settings,
                                                          "processor_class": "CLIPProcessor"}))
    again = clipfast.AutoProcessor.from_pretrained(v5)
    assert torch.equal(again(images=image, return_tensors="pt")["pixel_values"], expected)


# -- Auto classes -------------------------------------------------------------------------------------------------


def test_auto_classes_map_by_model_type(hub_folder, tmp_path):
    transformers = reference("transformers")
    from helpers.configs import TINY_TEXT, tiny_config_dict

    tiny = tmp_path / "tiny"
    transformers.CLIPModel(transformers.CLIPConfig(**tiny_config_dict())).save_pretrained(tiny)
    assert type(clipfast.AutoModel.from_pretrained(tiny)) is clipfast.CLIPModel
    assert type(clipfast.AutoModelForZeroShotImageClassification.from_pretrained(tiny)) is clipfast.CLIPModel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = clipfast.AutoModelForImageClassification.from_pretrained(tiny)
    assert type(classifier) is clipfast.CLIPForImageClassification
    text = tmp_path / "text"
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_TEXT)).save_pretrained(text)
    assert type(clipfast.AutoModel.from_pretrained(text)) is clipfast.CLIPTextModel
    assert type(clipfast.AutoConfig.from_pretrained(text)) is clipfast.CLIPTextConfig
    for head in (clipfast.AutoModelForImageClassification, clipfast.AutoModelForZeroShotImageClassification):
        with pytest.raises(CheckpointError, match="cannot load a 'clip_text_model' checkpoint"):
            head.from_pretrained(text)  # a tower has no head (the reference: "Unrecognized configuration class")
    config = clipfast.AutoConfig.from_pretrained(tiny)
    assert type(clipfast.AutoModel.from_config(config)) is clipfast.CLIPModel
    assert type(clipfast.AutoTokenizer.from_pretrained(hub_folder)) is clipfast.CLIPTokenizerFast
    assert type(clipfast.AutoTokenizer.from_pretrained(hub_folder, use_fast=False)) is clipfast.CLIPTokenizer
    assert type(clipfast.AutoImageProcessor.from_pretrained(hub_folder)) is clipfast.CLIPImageProcessor
    assert type(clipfast.AutoImageProcessor.from_pretrained(hub_folder, use_fast=True)) is \
        clipfast.CLIPImageProcessorFast


def test_auto_unknown_model_type_names_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip", "architectures": ["SiglipModel"]}))
    for auto in (clipfast.AutoModel, clipfast.AutoConfig):
        with pytest.raises(CheckpointError, match="'siglip'"):
            auto.from_pretrained(tmp_path)
