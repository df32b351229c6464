"""Every bad model input gets one clear error where it enters the model (issue 17); good edge inputs still work.

Token ids, masks and position ids are checked once per text batch (the tower's entry, for ``forward`` and
``get_text_features`` alike), pixels where they enter the vision embeddings. Errors keep the types a transformers
user catches (ValueError; IndexError for ids outside the vocabulary; TypeError for wrong types), with
clipfast's InputError on top. No reference library is needed here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import clipfast
from clipfast.errors import InputError
from clipfast.model_inputs import InputIndexError, InputTypeError
from helpers.configs import tiny_config_dict

VOCAB = 99  # tiny_config_dict's vocab_size
IDS = torch.tensor([[0, 5, 98]])


@pytest.fixture(scope="module")
def model() -> clipfast.CLIPModel:
    return clipfast.CLIPModel(clipfast.CLIPConfig(**tiny_config_dict())).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(2, 3, 30, 30)


def _text_entries(model: clipfast.CLIPModel, pixels: torch.Tensor):
    """Every way token ids enter: the full model, get_text_features and the text-only classes."""
    config = model.config.text_config
    text = clipfast.CLIPTextModel(config).eval()
    with_projection = clipfast.CLIPTextModelWithProjection(config).eval()
    return {"forward": lambda **kw: model(pixel_values=pixels, **kw),
            "get_text_features": lambda **kw: model.get_text_features(**kw),
            "CLIPTextModel": lambda **kw: text(**kw),
            "CLIPTextModelWithProjection": lambda **kw: with_projection(**kw)}


ENTRIES = ["forward", "get_text_features", "CLIPTextModel", "CLIPTextModelWithProjection"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 1000, -1, -(2**40)])
def test_token_ids_outside_the_vocabulary(entry, bad, model, pixels):
    ids = IDS.clone()
    ids[0, 1] = bad
    with pytest.raises(InputIndexError, match=rf"input_ids holds {bad}, outside \[0, {VOCAB}\) \(vocab_size={VOCAB}\)"):
        _text_entries(model, pixels)[entry](input_ids=ids)


def test_id_range_error_is_what_transformers_users_catch(model):
    with pytest.raises(IndexError, match="resize_token_embeddings"):
        model.get_text_features(input_ids=torch.tensor([[1, VOCAB]]))
    with pytest.raises(ValueError):
        model.get_text_features(input_ids=torch.tensor([[1, VOCAB]]))


def test_resized_vocabulary_is_the_bound(model):
    import copy

    grown = copy.deepcopy(model)
    grown.resize_token_embeddings(VOCAB + 5)
    with torch.no_grad():
        assert grown.get_text_features(input_ids=torch.tensor([[1, VOCAB + 4]])).shape == (1, 24)
    with pytest.raises(InputIndexError, match=f"vocab_size={VOCAB + 5}"):
        grown.get_text_features(input_ids=torch.tensor([[1, VOCAB + 5]]))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.uint8, torch.int16])
def test_non_integer_ids(entry, dtype, model, pixels):
    with pytest.raises(InputTypeError, match=rf"input_ids must hold integer token ids .*got {dtype}"):
        _text_entries(model, pixels)[entry](input_ids=IDS.to(dtype))


def test_int32_ids_are_accepted(model):
    with torch.no_grad():
        torch.testing.assert_close(model.get_text_features(input_ids=IDS.int()), model.get_text_features(input_ids=IDS))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("ids", [torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long),
                                 torch.zeros(0, dtype=torch.long), torch.tensor(5)],
                         ids=["empty sequence", "empty batch", "empty 1-D", "0-D"])
def test_empty_ids(entry, ids, model, pixels):
    with pytest.raises(InputError, match=r"input_ids is empty \(shape"):
        _text_entries(model, pixels)[entry](input_ids=ids)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kind", ["list", "numpy", "tuple"])
def test_ids_that_are_not_tensors(entry, kind, model, pixels):
    value = {"list": [[0, 5, 98]], "numpy": np.array([[0, 5, 98]]), "tuple": ((0, 5, 98),)}[kind]
    expected = {"list": "list", "numpy": "numpy.ndarray", "tuple": "tuple"}[kind]
    with pytest.raises(TypeError, match=rf"input_ids must be a torch.Tensor, got {expected}.*return_tensors='pt'"):
        _text_entries(model, pixels)[entry](input_ids=value)


@pytest.mark.parametrize("mask", [[[1, 1, 1]], np.ones((1, 3), dtype=np.int64)], ids=["list", "numpy"])
def test_masks_that_are_not_tensors(mask, model):
    with pytest.raises(InputTypeError, match="attention_mask must be a torch.Tensor.*return_tensors='pt'"):
        model.get_text_features(input_ids=IDS, attention_mask=mask)


@pytest.mark.parametrize("mask", [torch.ones(1, 4), torch.ones(1, 3, 1), torch.ones(3, 3), torch.ones(3),
                                  torch.ones(2, 4, dtype=torch.bool)],
                         ids=["longer", "3-D", "other batch", "1-D for a batch", "bool, wrong shape"])
def test_masks_of_the_wrong_shape(mask, model, pixels):
    ids = IDS.expand(2, -1)
    for entry in _text_entries(model, pixels).values():
        with pytest.raises(InputError, match=r"attention_mask has shape .* but input_ids has shape \(2, 3\)"):
            entry(input_ids=ids, attention_mask=mask)


def test_mask_kinds_that_work(model):
    """int, bool and float masks, a (1, T) mask for a batch, and 1-D ids with a 1-D mask (one sequence)."""
    ids = torch.tensor([[0, 5, 98, 98], [3, 4, 7, 98]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        want = model.get_text_features(input_ids=ids, attention_mask=mask)
        for other in (mask.bool(), mask.float()):
            torch.testing.assert_close(model.get_text_features(input_ids=ids, attention_mask=other), want)
        row = model.get_text_features(input_ids=ids[0], attention_mask=mask[0])
        torch.testing.assert_close(row, want[:1])
        ones = model.get_text_features(input_ids=ids, attention_mask=torch.ones(1, 4, dtype=torch.long))
        torch.testing.assert_close(ones, model.get_text_features(input_ids=ids))


def test_ids_of_other_ranks_are_sequences_as_in_the_reference(model):
    """1-D ids are one sequence; (A, B, T) ids are A*B sequences (the reference flattens them too)."""
    with torch.no_grad():
        want = model.get_text_features(input_ids=IDS)
        torch.testing.assert_close(model.get_text_features(input_ids=IDS[0]), want)
        stacked = model.get_text_features(input_ids=IDS.expand(2, 3).reshape(2, 1, 3))
    torch.testing.assert_close(stacked, want.expand(2, -1))


def test_position_ids(model):
    with torch.no_grad():
        want = model.get_text_features(input_ids=IDS)
        for positions in (torch.arange(3)[None], torch.arange(3)):
            torch.testing.assert_close(model.get_text_features(input_ids=IDS, position_ids=positions), want)
    with pytest.raises(InputTypeError, match="position_ids must be a torch.Tensor, got list"):
        model.get_text_features(input_ids=IDS, position_ids=[[0, 1, 2]])
    with pytest.raises(InputIndexError, match=r"position_ids holds 64, outside \[0, 64\) .*Leave position_ids out"):
        model.get_text_features(input_ids=IDS, position_ids=torch.tensor([[0, 1, 64]]))
    for shape in ((1, 4), (2, 3), (1, 1, 3)):
        with pytest.raises(InputError, match=rf"position_ids has shape \({shape[0]}, .* but input_ids has shape"):
            model.get_text_features(input_ids=IDS, position_ids=torch.zeros(shape, dtype=torch.long))
    with pytest.raises(InputTypeError, match="position_ids must hold integer"):
        model.get_text_features(input_ids=IDS, position_ids=torch.tensor([[0.0, 1.0, 2.0]]))


def test_sequences_longer_than_the_position_table(model):
    ids = torch.ones(1, 65, dtype=torch.long)
    with pytest.raises(InputError, match="max_position_embeddings: 64.*truncation=True"):
        model.get_text_features(input_ids=ids)
    with pytest.raises(ValueError, match="max_position_embeddings: 64"):
        model(input_ids=ids, pixel_values=torch.rand(1, 3, 30, 30))


def test_missing_inputs(model, pixels):
    with pytest.raises(ValueError, match="You have to specify input_ids"):
        model.get_text_features()
    with pytest.raises(ValueError, match="You have to specify pixel_values"):
        model.get_image_features()


def _image_entries(model: clipfast.CLIPModel):
    vision = clipfast.CLIPVisionModel(model.config.vision_config).eval()
    return {"forward": lambda px, **kw: model(input_ids=IDS, pixel_values=px, **kw),
            "get_image_features": lambda px, **kw: model.get_image_features(pixel_values=px, **kw),
            "CLIPVisionModel": lambda px, **kw: vision(pixel_values=px, **kw)}


@pytest.mark.parametrize("entry", ["forward", "get_image_features", "CLIPVisionModel"])
@pytest.mark.parametrize("kind", ["list", "numpy"])
def test_pixels_that_are_not_tensors(entry, kind, model, pixels):
    value = pixels.tolist() if kind == "list" else pixels.numpy()
    expected = "list" if kind == "list" else "numpy.ndarray"
    with pytest.raises(InputTypeError, match=rf"pixel_values must be a torch.Tensor, got {expected}.*"
                                             "return_tensors='pt'.*torch.from_numpy"):
        _image_entries(model)[entry](value)


@pytest.mark.parametrize("entry", ["forward", "get_image_features", "CLIPVisionModel"])
@pytest.mark.parametrize("shape,words", [
    ((3, 30, 30), r"must have shape \(batch, 3, height, width\), got \(3, 30, 30\)"),
    ((2, 1, 30, 30), r"must have shape \(batch, 3, height, width\), got \(2, 1, 30, 30\)"),
    ((2, 30, 30, 3), r"must have shape \(batch, 3, height, width\), got \(2, 30, 30, 3\)"),
    ((1, 2, 3, 30, 30), r"must have shape \(batch, 3, height, width\)"),
    ((2, 3, 32, 32), r"Input image size \(32\*32\) doesn't match model \(30\*30\)"),
    ((2, 3, 30, 28), r"Input image size \(30\*28\) doesn't match model"),
    ((0, 3, 30, 30), r"holds no images \(batch size 0\)"),
])
def test_pixels_of_the_wrong_shape(entry, shape, words, model):
    with pytest.raises(InputError, match=words):
        _image_entries(model)[entry](torch.rand(shape))


def test_pixel_edge_cases(model):
    with pytest.raises(InputError, match="hold no whole 2x2 patch"):
        model.get_image_features(pixel_values=torch.rand(1, 3, 1, 30), interpolate_pos_encoding=True)
    with pytest.raises(InputTypeError, match="real numbers"):
        model.get_image_features(pixel_values=torch.rand(1, 3, 30, 30, dtype=torch.complex64))
    with torch.no_grad():  # integer pixels are cast to the model's dtype, as in the reference
        ints = torch.randint(0, 3, (1, 3, 30, 30))
        torch.testing.assert_close(model.get_image_features(pixel_values=ints),
                                   model.get_image_features(pixel_values=ints.float()))
        assert model.get_image_features(pixel_values=torch.rand(1, 3, 34, 26), interpolate_pos_encoding=True).shape \
            == (1, 24)


@pytest.mark.parametrize("texts,images", [(1, 2), (3, 2)])
def test_loss_needs_one_text_per_image(texts, images, model):
    ids = IDS.expand(texts, -1)
    with pytest.raises(InputIndexError, match=f"one text per image .*got {texts} texts and {images} images"):
        model(input_ids=ids, pixel_values=torch.rand(images, 3, 30, 30), return_loss=True)
    with pytest.raises(IndexError):  # what the reference raises here
        model(input_ids=ids, pixel_values=torch.rand(images, 3, 30, 30), return_loss=True)
    with torch.no_grad():  # without the loss, any counts
        assert model(input_ids=ids, pixel_values=torch.rand(images, 3, 30, 30)).logits_per_image.shape == (
            images, texts)
        assert model(input_ids=IDS.expand(2, -1), pixel_values=torch.rand(2, 3, 30, 30), return_loss=True).loss \
            is not None


class _TextFeatures(torch.nn.Module):
    def __init__(self, model: clipfast.CLIPModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids)


def test_checks_leave_graph_capture_alone(model, monkeypatch):
    """Tracing runs no value check (it would bake one branch in; shape checks are fine, a trace is
    shape-specialised anyway), and the traced program runs other ids."""
    ids = torch.tensor([[0, 5, 98], [3, 4, 98]])
    calls = []
    aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: calls.append(1) or aminmax(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_TextFeatures(model), (ids,), check_trace=False)
    assert not calls
    other = torch.tensor([[7, 8, 98], [9, 9, 98]])
    with torch.no_grad():
        torch.testing.assert_close(traced(other), model.get_text_features(input_ids=other))
        model.get_text_features(input_ids=other)  # outside a capture, the value check runs
    assert calls


def test_classification_labels():
    model = clipfast.CLIPForImageClassification(clipfast.CLIPConfig(**tiny_config_dict(), num_labels=3)).eval()
    pixels = torch.rand(2, 3, 30, 30)
    assert model(pixel_values=pixels, labels=torch.tensor([0, 2])).loss is not None
    for bad in (3, -1):
        with pytest.raises(InputIndexError, match=rf"labels holds class {bad}, outside \[0, 3\) \(num_labels=3\)"):
            model(pixel_values=pixels, labels=torch.tensor([0, bad]))
    with pytest.raises(InputTypeError, match="labels must be a torch.Tensor, got list"):
        model(pixel_values=pixels, labels=[0, 2])
    multi = clipfast.CLIPForImageClassification(clipfast.CLIPConfig(**tiny_config_dict(), num_labels=3)).eval()
    assert multi(pixel_values=pixels, labels=torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])).loss is not None
