"""Every bad config value and pipeline argument gets one clear error that names it and its value (issue 17).

Config values are checked where they enter: construction, ``from_dict``, ``from_pretrained`` (config.json) and
attribute assignment. Wrong types raise TypeError, wrong values :class:`clipfast.errors.InputError` (a ValueError).
Pipeline arguments raise InputError, images ImageLoadError (both ValueErrors, as transformers raises for a bad
``batch_size``). Valid edge values are tested next to the bad ones. No reference library is needed here.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import clipfast
from clipfast import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from clipfast.configuration import HIDDEN_ACTS
from clipfast.errors import ImageLoadError, InputError

PART_CLASS = {"text_config": CLIPTextConfig, "vision_config": CLIPVisionConfig, "": CLIPConfig}
NAN, INF = float("nan"), float("inf")

# (part, field, value, error type, words the message must hold besides "Class.field")
FIELD_CASES = [
    # wrong types
    ("text_config", "intermediate_size", "large", TypeError, "must be a positive int; got 'large' (str)"),
    ("text_config", "hidden_size", True, TypeError, "must be a positive int; got True (bool)"),
    ("vision_config", "image_size", "224", TypeError, "must be a positive int; got '224' (str)"),
    ("vision_config", "patch_size", [32], TypeError, "must be a positive int; got [32] (list)"),
    ("text_config", "num_hidden_layers", None, TypeError, "must be a positive int; got None"),
    ("text_config", "vocab_size", {"n": 3}, TypeError, "must be a positive int"),
    ("vision_config", "num_channels", 3j, TypeError, "must be a positive int; got 3j (complex)"),
    ("text_config", "layer_norm_eps", "1e-5", TypeError, "must be a positive number; got '1e-5' (str)"),
    ("vision_config", "layer_norm_eps", None, TypeError, "must be a positive number; got None"),
    ("text_config", "attention_dropout", "0.1", TypeError, "probability in [0, 1]; got '0.1' (str)"),
    ("text_config", "hidden_act", None, TypeError, "=None is not supported; choose one of"),
    ("vision_config", "hidden_act", 5, TypeError, "=5 is not supported; choose one of"),
    ("text_config", "eos_token_id", "2", TypeError, "must be an int token id or None; got '2' (str)"),
    ("text_config", "bos_token_id", [0], TypeError, "must be an int token id or None; got [0] (list)"),
    ("text_config", "initializer_factor", "1", TypeError, "must be a number >= 0; got '1' (str)"),
    ("", "logit_scale_init_value", "2.6592", TypeError, "must be a finite number"),
    ("", "logit_scale_init_value", None, TypeError, "must be a finite number"),
    ("", "projection_dim", 512.5, InputError, "must be a positive int (a whole float such as 12.0 is taken as 12)"),
    ("", "projection_dim", "512", TypeError, "must be a positive int; got '512' (str)"),
    # non-integer counts
    ("text_config", "num_hidden_layers", 3.5, InputError, "(a whole float such as 12.0 is taken as 12); got 3.5"),
    ("vision_config", "num_attention_heads", 1.5, InputError, "got 1.5"),
    ("vision_config", "image_size", INF, InputError, "got inf"),
    ("text_config", "max_position_embeddings", NAN, InputError, "got nan"),
    # zero or negative sizes
    ("vision_config", "image_size", 0, InputError, "must be a positive int; got 0"),
    ("vision_config", "num_attention_heads", -2, InputError, "must be a positive int; got -2"),
    ("text_config", "num_attention_heads", 0, InputError, "must be a positive int; got 0"),
    ("text_config", "vocab_size", 0, InputError, "must be a positive int; got 0"),
    ("text_config", "hidden_size", -512, InputError, "must be a positive int; got -512"),
    ("text_config", "intermediate_size", -1, InputError, "must be a positive int; got -1"),
    ("text_config", "max_position_embeddings", 0, InputError, "must be a positive int; got 0"),
    ("text_config", "num_hidden_layers", 0, InputError, "must be a positive int; got 0"),
    ("vision_config", "patch_size", -32, InputError, "must be a positive int; got -32"),
    ("vision_config", "num_channels", 0, InputError, "must be a positive int; got 0"),
    ("vision_config", "projection_dim", 0, InputError, "must be a positive int; got 0"),
    ("", "projection_dim", 0, InputError, "must be a positive int; got 0"),
    ("", "projection_dim", -512, InputError, "must be a positive int; got -512"),
    # other values
    ("text_config", "hidden_act", "gelux", InputError, "='gelux' is not supported; choose one of"),
    ("vision_config", "hidden_act", "GELU", InputError, "='GELU' is not supported"),
    ("text_config", "layer_norm_eps", 0, InputError, "must be a positive number; got 0"),
    ("vision_config", "layer_norm_eps", -1e-5, InputError, "must be a positive number; got -1e-05"),
    ("text_config", "layer_norm_eps", NAN, InputError, "must be a positive number; got nan"),
    ("text_config", "attention_dropout", 1.5, InputError, "must be a probability in [0, 1]; got 1.5"),
    ("vision_config", "attention_dropout", -0.1, InputError, "must be a probability in [0, 1]; got -0.1"),
    ("text_config", "dropout", 2, InputError, "must be a probability in [0, 1]; got 2"),
    ("vision_config", "initializer_range", -0.02, InputError, "must be a number >= 0; got -0.02"),
    ("", "logit_scale_init_value", NAN, InputError, "must be a finite number (the log of the logit scale); got nan"),
    ("", "logit_scale_init_value", INF, InputError, "got inf"),
    ("", "initializer_factor", -1.0, InputError, "must be a number >= 0; got -1.0"),
]


def _case_id(case) -> str:
    part, field, value = case[:3]
    return f"{part or 'clip'}.{field}={value!r}"


def _where(part: str, field: str) -> str:
    return f"{PART_CLASS[part].__name__}.{field}"


def _nested(part: str, field: str, value) -> dict:
    """The CLIPConfig dict that holds ``field=value`` in ``part`` ("" for the top level)."""
    return {field: value} if not part else {part: {field: value}}


@pytest.mark.parametrize("case", FIELD_CASES, ids=_case_id)
def test_bad_field_is_refused_at_construction(case):
    part, field, value, error, words = case
    with pytest.raises(error) as info:
        PART_CLASS[part](**{field: value})
    message = str(info.value)
    assert _where(part, field) in message and words in message, message
    with pytest.raises(error, match=_where(part, field).replace(".", r"\.")):
        CLIPConfig(**_nested(part, field, value))  # a sub-config's field, through the full config


@pytest.mark.parametrize("case", FIELD_CASES, ids=_case_id)
def test_bad_field_is_refused_by_from_dict_and_assignment(case):
    part, field, value, error, words = case
    with pytest.raises(error) as info:
        CLIPConfig.from_dict(_nested(part, field, value))
    assert _where(part, field) in str(info.value) and words in str(info.value)
    cls = PART_CLASS[part]
    if field in cls._fields:
        with pytest.raises(error, match=_where(part, field).replace(".", r"\.")):
            cls.from_dict({}, **{field: value})  # an override
    config = cls()
    before = getattr(config, field, None)
    with pytest.raises(error) as info:
        setattr(config, field, value)
    assert _where(part, field) in str(info.value) and words in str(info.value)
    assert getattr(config, field, None) == before  # nothing half-set


@pytest.mark.parametrize("case", [c for c in FIELD_CASES if isinstance(c[2], (str, int, float, list, type(None)))],
                         ids=_case_id)
def test_bad_field_in_config_json_names_the_file(case, tmp_path):
    part, field, value, error, words = case
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", **_nested(part, field, value)}))
    with pytest.raises(error) as info:
        CLIPConfig.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "config.json" in message and _where(part, field) in message, message
    assert words in message
    if part:  # a tower config read out of the full file
        with pytest.raises(error, match=_where(part, field).replace(".", r"\.")):
            PART_CLASS[part].from_pretrained(tmp_path)


CROSS_CASES = [
    (CLIPVisionConfig, dict(patch_size=300), "CLIPVisionConfig.patch_size=300 is larger than image_size=224"),
    (CLIPVisionConfig, dict(image_size=16, patch_size=32), "patch_size=32 is larger than image_size=16"),
    (CLIPVisionConfig, dict(hidden_size=100), "CLIPVisionConfig.hidden_size=100 must be divisible by "
                                              "num_attention_heads=12"),
    (CLIPTextConfig, dict(hidden_size=30, num_attention_heads=8), "CLIPTextConfig.hidden_size=30 must be divisible "
                                                                  "by num_attention_heads=8"),
    (CLIPTextConfig, dict(hidden_size=4, num_attention_heads=8), "hidden_size=4 must be divisible"),
]


@pytest.mark.parametrize("cls,fields,words", CROSS_CASES, ids=[str(c[1]) for c in CROSS_CASES])
def test_inconsistent_fields_are_refused_where_they_enter(cls, fields, words, tmp_path):
    """transformers 4.57 refuses hidden_size % heads only when the model is built (a ValueError) and a patch larger
    than the image not at all (an empty patch grid): both are InputErrors (ValueErrors) at config time here."""
    with pytest.raises(InputError, match=words.replace("[", r"\[")):
        cls(**fields)
    with pytest.raises(InputError, match="must be divisible|is larger than"):
        cls.from_dict({}, **fields)
    part = "vision_config" if cls is CLIPVisionConfig else "text_config"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", part: fields}))
    with pytest.raises(InputError, match="config.json"):
        CLIPConfig.from_pretrained(tmp_path)
    config = cls()
    for key, value in fields.items():  # one at a time, fields may pass through inconsistent states ...
        setattr(config, key, value)
    with pytest.raises(InputError, match="must be divisible|is larger than"):
        config.validate()  # ... which validate() (and the model's construction) then refuse
    with pytest.raises(InputError):
        CLIPConfig(**{part: config}).validate()


SUB_CONFIG_CASES = [
    (dict(text_config=5), TypeError, "CLIPConfig.text_config must be a CLIPTextConfig, a dict of its fields or None; "
                                     "got 5 (int)"),
    (dict(vision_config="large"), TypeError, "CLIPConfig.vision_config must be a CLIPVisionConfig"),
    (dict(vision_config=[224]), TypeError, "got [224] (list)"),
    (dict(text_config=CLIPVisionConfig()), InputError, "got a CLIPVisionConfig config (text and vision configs "
                                                       "swapped?)"),
    (dict(vision_config=CLIPTextConfig()), InputError, "CLIPConfig.vision_config must be a CLIPVisionConfig"),
    (dict(text_config={"model_type": "clip_vision_model"}), InputError, "got a model_type 'clip_vision_model'"),
    (dict(text_config_dict=[1]), TypeError, "CLIPConfig.text_config_dict must be a dict of CLIPTextConfig fields "
                                            "or None; got [1] (list)"),
    (dict(vision_config_dict="x"), TypeError, "CLIPConfig.vision_config_dict must be a dict"),
    (dict(num_labels=-1), InputError, "CLIPConfig.num_labels must be an int >= 0; got -1"),
    (dict(num_labels="3"), InputError, "num_labels must be an int >= 0; got '3'"),
    (dict(id2label=["cat", "dog"]), TypeError, "CLIPConfig.id2label must be a dict"),
    (dict(id2label={"a": "cat"}), InputError, "CLIPConfig.id2label keys must be class indices"),
]


@pytest.mark.parametrize("kwargs,error,words", SUB_CONFIG_CASES, ids=[str(c[0])[:40] for c in SUB_CONFIG_CASES])
def test_bad_sub_configs_and_labels(kwargs, error, words):
    with pytest.raises(error) as info:
        CLIPConfig(**kwargs)
    assert words in str(info.value), str(info.value)


def test_bad_sub_config_assignment_and_from_dict_input():
    config = CLIPConfig()
    with pytest.raises(TypeError, match=r"CLIPConfig\.text_config must be a CLIPTextConfig.*got 7 \(int\)"):
        config.text_config = 7
    config.vision_config = {"hidden_size": 64, "num_attention_heads": 8}  # a dict is built into a config
    assert isinstance(config.vision_config, CLIPVisionConfig) and config.vision_config.hidden_size == 64
    with pytest.raises(TypeError, match="CLIPConfig.from_dict needs a dict of fields; got list"):
        CLIPConfig.from_dict([("projection_dim", 3)])
    with pytest.raises(InputError, match="update_from_string: num_hidden_layers needs a int, got 'many'"):
        CLIPTextConfig().update_from_string("num_hidden_layers=many")
    with pytest.raises(InputError, match=r"CLIPTextConfig\.num_hidden_layers must be a positive int; got -1"):
        CLIPTextConfig().update_from_string("num_hidden_layers=-1")


def test_valid_edge_values_are_kept():
    """Whole floats (as some JSON writers store ints) become ints; NumPy scalars become Python numbers (JSON
    writes them); None-able token ids, eps 1, dropout 0 and 1, a negative logit scale, one patch per image pass."""
    text = CLIPTextConfig(hidden_size=64.0, num_attention_heads=np.int64(8), num_hidden_layers=12.0,
                          layer_norm_eps=1, attention_dropout=1, dropout=0.0, pad_token_id=None, bos_token_id=None,
                          eos_token_id=-1, initializer_range=0, initializer_factor=np.float32(0.5))
    assert (text.hidden_size, text.num_attention_heads, text.num_hidden_layers) == (64, 8, 12)
    assert all(type(getattr(text, k)) is int for k in ("hidden_size", "num_attention_heads", "num_hidden_layers"))
    assert type(text.initializer_factor) is float and text.pad_token_id is None
    json.loads(text.to_json_string())
    vision = CLIPVisionConfig(image_size=32, patch_size=32, hidden_size=64, num_attention_heads=1)
    assert vision.patch_size == vision.image_size == 32
    config = CLIPConfig(logit_scale_init_value=-3, projection_dim=1.0, num_labels=0, text_config=text.to_dict(),
                        vision_config=vision)
    assert config.projection_dim == 1 and config.num_labels == 0 and config.vision_config is vision
    vision.hidden_size = 96  # fields may change one at a time; the pair is checked by validate()
    vision.num_attention_heads = 12
    config.validate()
    again = CLIPVisionConfig.from_dict({"hidden_size": 64}, num_attention_heads=8)  # overrides checked together
    assert (again.hidden_size, again.num_attention_heads) == (64, 8)


def test_config_accepts_exactly_the_activations_the_model_implements():
    from clipfast.modeling import ACT2FN

    assert set(ACT2FN) <= set(HIDDEN_ACTS)
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=8, projection_dim=4)
    for name in HIDDEN_ACTS:  # every name the config accepts builds and runs
        model = clipfast.CLIPTextModel(CLIPTextConfig(**base, hidden_act=name, eos_token_id=9))
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 9]]))


# -- pipeline arguments -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip():
    """A tiny zero-shot pipeline built from clipfast objects (OpenAI's vocabulary, 32-pixel images)."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                           num_attention_heads=4), projection_dim=16)
    processor = clipfast.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return clipfast.pipeline(model=clipfast.CLIPModel(config), tokenizer=clipfast.CLIPTokenizerFast.from_openai_vocab(),
                             image_processor=processor, device="cpu")


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (40, 36), (200, 30, 30))


LABELS = ["cat", "dog", "car"]
CALL_CASES = [
    (dict(top_k=0), "top_k must be an int >= 1 or None; got 0"),
    (dict(top_k=-1), "top_k must be an int >= 1 or None; got -1"),
    (dict(top_k=1.5), "top_k must be an int >= 1 or None; got 1.5"),
    (dict(top_k="2"), "top_k must be an int >= 1 or None; got '2'"),
    (dict(top_k=True), "top_k must be an int >= 1 or None; got True"),
    (dict(batch_size=0), "batch_size must be an int >= 1 or None; got 0"),
    (dict(batch_size=-4), "batch_size must be an int >= 1 or None; got -4"),
    (dict(batch_size=2.5), "batch_size must be an int >= 1 or None; got 2.5"),
    (dict(batch_size="8"), "batch_size must be an int >= 1 or None; got '8'"),
    (dict(hypothesis_template="a photo"), "hypothesis_template='a photo' has no {} where the label goes, so every "
                                          "label would get the same prompt"),
    (dict(hypothesis_template=""), "hypothesis_template='' has no {}"),
    (dict(hypothesis_template="{{}} braces only"), "hypothesis_template='{{}} braces only' has no {}"),
    (dict(hypothesis_template=None), "hypothesis_template must be a str with {} where the label goes, e.g. "
                                     "'This is a photo of {}.'; got None"),
    (dict(hypothesis_template=5), "hypothesis_template must be a str with {}"),
    (dict(hypothesis_template=b"a {}"), "got b'a {}' (bytes)"),
    (dict(hypothesis_template="{} and {x}"), "hypothesis_template='{} and {x}' cannot take a label"),
    (dict(hypothesis_template="{1}"), "hypothesis_template='{1}' cannot take a label"),
    (dict(hypothesis_template="{} next to {}"), "hypothesis_template='{} next to {}' cannot take a label"),
    (dict(hypothesis_template="a { photo"), "hypothesis_template='a { photo' cannot take a label"),
    (dict(hypothesis_template="{:d}"), "hypothesis_template='{:d}' cannot take a label"),
    (dict(candidate_labels=None), "candidate_labels is required, e.g. candidate_labels=['cat', 'dog']"),
    (dict(candidate_labels=[]), "candidate_labels is empty"),
    (dict(candidate_labels=""), "candidate_labels is empty"),
    (dict(candidate_labels=" , ,"), "candidate_labels is empty"),
    (dict(candidate_labels=5), "candidate_labels must be a list of strings, e.g. candidate_labels=['cat', 'dog']; "
                               "got 5 (int)"),
    (dict(candidate_labels={"cat": 0}), "candidate_labels must be a list of strings"),
    (dict(candidate_labels=b"cat"), "candidate_labels must be a list of strings"),
    (dict(candidate_labels=[1, 2]), "candidate_labels must be strings; got 1 (int) in [1, 2]"),
    (dict(candidate_labels=["cat", None]), "candidate_labels must be strings; got None (NoneType)"),
    (dict(candidate_labels=[["cat", "dog"]]), "candidate_labels must be strings (one flat list of labels serves "
                                              "every image); got ['cat', 'dog'] (list)"),
    (dict(timeout=0), "timeout must be a positive number of seconds or None; got 0"),
    (dict(timeout=-1), "timeout must be a positive number of seconds or None; got -1"),
    (dict(timeout="5"), "got '5'"),
    (dict(timeout=NAN), "got nan"),
]


@pytest.mark.parametrize("kwargs,words", CALL_CASES, ids=[str(c[0]) for c in CALL_CASES])
def test_bad_call_argument(clip, image, kwargs, words):
    kwargs = {"candidate_labels": LABELS, **kwargs}
    with pytest.raises(InputError) as info:
        clip(image, **kwargs)
    assert words in str(info.value), str(info.value)
    with pytest.raises(InputError):
        clip([image, image], **kwargs)
    with pytest.raises(InputError):  # a generator of images is refused at the call, not at the first next()
        clip(iter([image]), **kwargs)


@pytest.mark.parametrize("bad", [5, 1.5, {"a": 1}, [None], [[Image.new("RGB", (4, 4))]], {1}, object()],
                         ids=["int", "float", "dict", "[None]", "nested", "set", "object"])
def test_bad_image_types(clip, bad):
    with pytest.raises(ImageLoadError, match="Cannot load an image from a") as info:
        clip(bad, candidate_labels=LABELS)
    assert "pass a path, an http(s) URL" in str(info.value)


def test_missing_or_unreadable_images(clip, tmp_path):
    with pytest.raises(InputError, match="Give an image"):
        clip(candidate_labels=LABELS)
    with pytest.raises(ImageLoadError, match="No such image file"):
        clip(str(tmp_path / "missing.jpg"), candidate_labels=LABELS)
    with pytest.raises(ImageLoadError, match="not an image"):
        clip(b"not an image at all", candidate_labels=LABELS)
    with pytest.raises(TypeError, match="Unexpected arguments"):
        clip("x.jpg", candidate_labels=LABELS, top_n=2)
    with pytest.raises(InputError, match="Pass the images once"):
        clip("a.jpg", images=["b.jpg"], candidate_labels=LABELS)


PIPELINE_CASES = [
    (dict(task="text-generation"), "Unknown task 'text-generation': clipfast provides "
                                   "'zero-shot-image-classification'"),
    (dict(task="zero-shot-image-clasification"), "Unknown task 'zero-shot-image-clasification'"),
    (dict(task=5), "Unknown task 5"),
    (dict(batch_size=0), "batch_size must be an int >= 1 or None; got 0"),
    (dict(batch_size=-1), "batch_size must be an int >= 1 or None; got -1"),
    (dict(batch_size=2.0), "batch_size must be an int >= 1 or None; got 2.0"),
    (dict(num_workers=-1), "num_workers must be an int >= 0 or None; got -1"),
    (dict(num_workers=1.5), "num_workers must be an int >= 0 or None; got 1.5"),
    (dict(device="gpu-please"), "device='gpu-please' is not a device; use an int (GPU index), 'cpu', 'cuda'"),
    (dict(device="CPU"), "device='CPU' is not a device"),
    (dict(device="cuda:x"), "device='cuda:x' is not a device"),
    (dict(device=""), "device='' is not a device"),
    (dict(device=True), "device=True is not a device"),
    (dict(device=1.5), "device=1.5 is not a device"),
    (dict(device=[0]), "device=[0] is not a device"),
    (dict(device="meta"), "device='meta' holds no weights"),
    (dict(device=torch.device("meta")), "device='meta' holds no weights"),
    (dict(device="xla"), "device='xla': this machine (or this PyTorch build) has no xla device"),
    (dict(device_map={"text_model": "cpu", "vision_model": 0}), "spreads the model over several devices"),
]


@pytest.mark.parametrize("kwargs,words", PIPELINE_CASES, ids=[str(c[0]) for c in PIPELINE_CASES])
def test_bad_pipeline_argument(clip, kwargs, words):
    with pytest.raises(InputError) as info:
        clipfast.pipeline(model=clip.model, tokenizer=clip.tokenizer, image_processor=clip.image_processor,
                          **{"task": "zero-shot-image-classification", **kwargs})
    assert words in str(info.value), str(info.value)


def test_bad_pipeline_components(clip, tmp_path):
    with pytest.raises(InputError, match="model='' is empty: give a hub id such as"):
        clipfast.pipeline(model="")
    with pytest.raises(InputError, match=r"model must be a hub id, .* or a loaded CLIPModel; got 5 \(int\)"):
        clipfast.pipeline(model=5, tokenizer=clip.tokenizer, image_processor=clip.image_processor)
    with pytest.raises(InputError, match="tokenizer must be a loaded tokenizer"):
        clipfast.pipeline(model=clip.model, tokenizer=5, image_processor=clip.image_processor)
    with pytest.raises(InputError, match="image_processor must be a loaded image_processor"):
        clipfast.pipeline(model=clip.model, tokenizer=clip.tokenizer, image_processor="nope")
    with pytest.raises(InputError, match="also pass tokenizer= and image_processor="):
        clipfast.pipeline(model=clip.model)


def test_valid_edge_arguments(clip, image):
    everything = clip(image, candidate_labels=LABELS)
    assert clip(image, candidate_labels=LABELS, top_k=10) == everything  # top_k above the labels: all of them
    assert clip(image, candidate_labels=LABELS, top_k=1) == everything[:1]
    assert clip(image, candidate_labels=LABELS, top_k=None, batch_size=None, timeout=None) == everything
    assert clip(image, candidate_labels=tuple(LABELS)) == everything
    assert clip(image, candidate_labels=(label for label in LABELS)) == everything
    assert clip(image, candidate_labels="cat, dog,car") == everything
    assert clip(image, candidate_labels=["cat"]) == [{"score": 1.0, "label": "cat"}]
    assert [r["label"] for r in clip(image, candidate_labels=["", "dog"])] != []  # an empty label is a label
    default = clip(image, candidate_labels=LABELS, hypothesis_template="This is a photo of {0}.")
    assert default == everything
    assert len(clip(image, candidate_labels=LABELS, hypothesis_template="{{{}}}")) == 3  # "{cat}": braces escaped
    assert clip([], candidate_labels=LABELS) == []
    assert list(clip(iter([]), candidate_labels=LABELS)) == []
    batched = clip([image] * 3, candidate_labels=LABELS, batch_size=1, timeout=2.5)
    assert all([r["label"] for r in row] == [r["label"] for r in everything] for row in batched)
    assert clip(image, candidate_labels=LABELS, timeout=1) == everything


def test_valid_devices(clip):
    def build(**kwargs):
        return clipfast.pipeline(model=clip.model, tokenizer=clip.tokenizer, image_processor=clip.image_processor,
                                 **kwargs)

    for device in (None, -1, "cpu", torch.device("cpu")):
        assert build(device=device).device == torch.device("cpu")
    assert build(device_map={"": "cpu"}).device == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert build(device_map="auto").device.type == expected
    if torch.cuda.is_available():
        clip.model.to("cpu")
        return
    for device in (0, "cuda", "cuda:7"):
        with pytest.warns(UserWarning, match="CUDA is not available: running on the CPU"):
            assert build(device=device).device == torch.device("cpu")
    if not torch.backends.mps.is_available():
        with pytest.warns(UserWarning, match="MPS is not available"):
            assert build(device="mps").device == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(device="cpu", batch_size=1, num_workers=0)
    assert math.isfinite(build(device="cpu")(Image.new("RGB", (8, 8)), candidate_labels=["a", "b"])[0]["score"])


def test_a_model_checks_fields_changed_after_the_config_was_made():
    """Fields may be set one at a time; building a model checks them together (a patch larger than the image)."""
    config = clipfast.CLIPVisionConfig(image_size=30, patch_size=2, hidden_size=32, intermediate_size=37,
                                       num_hidden_layers=1, num_attention_heads=4)
    config.patch_size = 64
    with pytest.raises(InputError, match="patch_size=64 is larger than image_size=30"):
        clipfast.CLIPVisionModel(config)
