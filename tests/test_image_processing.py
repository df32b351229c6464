"""CLIPImageProcessor / CLIPImageProcessorFast against transformers 4.57 on real photos and odd inputs, and their own
behaviour (errors, sources, layouts, the CPU lane), which runs without the reference libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import helpers.images as image_fixtures
from clipfast.errors import ImageLoadError, InputError
from clipfast.image_processing import BatchFeature, CLIPFeatureExtractor, CLIPImageProcessor, CLIPImageProcessorFast
from helpers import reference

ONE_LEVEL = 0.02  # one uint8 level after normalisation is 1 / (255 * 0.2613) = 0.015


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Image.Image]:
    folder = tmp_path_factory.mktemp("photos")
    images = []
    for path in image_fixtures.photos(folder):
        with Image.open(path) as image:
            image.load()
            images.append(image)
    return images


@pytest.fixture(scope="module")
def ref():
    return reference("transformers").CLIPImageProcessor()


@pytest.fixture(scope="module")
def ref_fast():
    return reference("transformers").CLIPImageProcessorFast()


def _ours(kwargs=None):
    return CLIPImageProcessor(**(kwargs or {})), CLIPImageProcessorFast(**(kwargs or {}))


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def test_photos_match_reference(photos, ref, ref_fast):
    slow, fast = _ours()
    expected = ref(photos, return_tensors="np").pixel_values
    assert _max_diff(slow(photos, return_tensors="np").pixel_values, expected) <= 1e-6
    got_fast = fast(photos, return_tensors="pt").pixel_values
    assert got_fast.dtype == torch.float32 and got_fast.shape == (len(photos), 3, 224, 224)
    assert _max_diff(got_fast, expected) <= ONE_LEVEL
    theirs = ref_fast(photos, return_tensors="pt").pixel_values
    # transformers' fast class resizes with torch's own uint8 kernel: a few levels off PIL in rare pixels
    assert _max_diff(got_fast, theirs) <= 0.07
    assert float((got_fast - theirs).abs().mean()) < 1e-3


def test_odd_modes_match_reference(ref):
    slow, fast = _ours()
    for mode, image in image_fixtures.odd_modes().items():
        expected = ref(image, return_tensors="np").pixel_values
        assert _max_diff(slow(image, return_tensors="np").pixel_values, expected) <= 1e-6, mode
        assert _max_diff(fast(image, return_tensors="np").pixel_values, expected) <= ONE_LEVEL, mode


NON_DEFAULT = [
    {"size": {"shortest_edge": 256}, "crop_size": {"height": 200, "width": 240}},
    {"size": {"height": 180, "width": 300}, "do_center_crop": False},
    {"size": 336, "crop_size": 336},
    {"do_center_crop": False},
    {"do_normalize": False},
    {"do_rescale": False, "do_normalize": False},
    {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 0.125]},
    {"image_mean": 0.4, "image_std": 0.3, "rescale_factor": 1 / 127.5},
    {"resample": 2}, {"resample": 1}, {"resample": 0}, {"resample": 4}, {"resample": 5},
    {"crop_size": {"height": 400, "width": 500}},  # larger than the resized image: zero padding
    {"do_resize": False, "crop_size": 100},
    {"call": {"data_format": "channels_last"}},
]


def _one_level(kwargs: dict) -> float:
    """One uint8 level in output units for these parameters (0 for uint8 outputs, which must be exact)."""
    rescale = kwargs.get("rescale_factor", 1 / 255) if kwargs.get("do_rescale", True) else 1.0
    if not kwargs.get("do_normalize", True):
        return 0.0 if rescale == 1.0 else rescale * 1.001
    std = kwargs.get("image_std", [0.26862954, 0.26130258, 0.27577711])
    return max(ONE_LEVEL, rescale / min(np.atleast_1d(std)) * 1.001)


@pytest.mark.parametrize("kwargs", NON_DEFAULT, ids=lambda k: ",".join(k))
def test_non_default_parameters(photos, kwargs):
    transformers = reference("transformers")
    images = photos[::5]
    kwargs = dict(kwargs)
    call = kwargs.pop("call", {})
    theirs = transformers.CLIPImageProcessor(**kwargs)
    slow, fast = _ours(kwargs)
    tensors = "pt" if kwargs.get("do_center_crop", True) else None
    expected = theirs(images, return_tensors=tensors, **call).pixel_values
    got_slow = slow(images, return_tensors=tensors, **call).pixel_values
    got_fast = fast(images, return_tensors=tensors, **call).pixel_values
    pairs = zip(expected, got_slow, got_fast) if tensors is None else [(expected, got_slow, got_fast)]
    for e, s, f in pairs:
        assert _max_diff(s, e) <= 1e-6
        assert np.asarray(s).dtype == np.asarray(e).dtype
        assert _max_diff(f, e) <= _one_level(kwargs) + 1e-6


def test_call_time_overrides_match_reference(photos, ref):
    images = photos[:3]
    slow, fast = _ours()
    kwargs = {"size": {"shortest_edge": 100}, "crop_size": 64, "resample": 2, "do_normalize": False}
    expected = ref(images, return_tensors="np", **kwargs).pixel_values
    assert _max_diff(slow(images, return_tensors="np", **kwargs).pixel_values, expected) <= 1e-6
    assert _max_diff(fast(images, return_tensors="np", **kwargs).pixel_values, expected) <= ONE_LEVEL


def test_array_and_tensor_inputs(photos, ref):
    rgb = np.asarray(photos[0].convert("RGB"))  # (H, W, 3) uint8
    inputs = {
        "hwc_uint8": rgb, "chw_uint8": rgb.transpose(2, 0, 1).copy(),
        "hwc_float01": rgb.astype(np.float32) / 255, "chw_float_int_valued": rgb.transpose(2, 0, 1).astype(np.float64),
        "torch_chw_uint8": torch.from_numpy(rgb.transpose(2, 0, 1).copy()),
        "torch_hwc_float": torch.from_numpy(rgb.astype(np.float32) / 255),
        "batch4d": np.stack([rgb, rgb[::-1].copy()]), "list": [rgb, photos[1]], "nested": [[rgb], [photos[1]]],
    }
    slow, fast = _ours()
    for name, value in inputs.items():
        kwargs = {"do_rescale": False} if "float01" in name or "hwc_float" in name else {}
        expected = ref(value, return_tensors="np", **kwargs).pixel_values
        assert _max_diff(slow(value, return_tensors="np", **kwargs).pixel_values, expected) <= 1e-6, name
        assert _max_diff(fast(value, return_tensors="np", **kwargs).pixel_values, expected) <= ONE_LEVEL, name


def test_float_input_without_resize_matches(photos, ref):
    image = np.asarray(photos[2].convert("RGB")).astype(np.float32) / 255
    kwargs = {"do_resize": False, "do_rescale": False, "crop_size": 64}
    expected = ref(image, return_tensors="np", **kwargs).pixel_values
    slow, fast = _ours()
    assert _max_diff(slow(image, return_tensors="np", **kwargs).pixel_values, expected) <= 1e-6
    assert _max_diff(fast(image, return_tensors="np", **kwargs).pixel_values, expected) <= 1e-6


def test_return_tensors_variants(photos):
    for processor in _ours():
        listed = processor(photos[:2]).pixel_values
        assert isinstance(listed, list) and len(listed) == 2
        as_np = processor(photos[:2], return_tensors="np").pixel_values
        assert isinstance(as_np, np.ndarray) and as_np.shape == (2, 3, 224, 224) and as_np.dtype == np.float32
        as_pt = processor(photos[0], return_tensors="pt")["pixel_values"]
        assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (1, 3, 224, 224)
        with pytest.raises(InputError, match="different shapes"):
            processor([photos[0], photos[2]], do_center_crop=False, return_tensors="pt")


def test_in_place_size_edits_are_honoured(photos):
    for processor in _ours():
        processor.size["shortest_edge"] = 64
        processor.crop_size["height"] = processor.crop_size["width"] = 48
        assert processor(photos[0], return_tensors="pt").pixel_values.shape == (1, 3, 48, 48)


def test_batch_feature_behaviour(photos):
    batch = CLIPImageProcessor()(photos[0], return_tensors="pt")
    assert isinstance(batch, BatchFeature) and batch.to("cpu") is batch
    assert batch.to(torch.float16).pixel_values.dtype == torch.float16
    assert "pixel_values" in batch and batch.get("missing") is None and batch.data["pixel_values"] is batch.pixel_values
    batch["extra"] = 1
    assert batch.extra == 1 and set(batch.keys()) == {"pixel_values", "extra"}
    with pytest.raises(AttributeError):
        batch.nothing


def test_config_round_trip(tmp_path):
    for cls in (CLIPImageProcessor, CLIPImageProcessorFast):
        processor = cls(size=300, crop_size=(256, 288), image_mean=[0.1, 0.2, 0.3])
        processor.save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__)
        assert loaded.to_dict() == processor.to_dict()
        assert json.loads(loaded.to_json_string())["image_processor_type"] == cls.__name__
    assert CLIPImageProcessor().image_mean == [0.48145466, 0.4578275, 0.40821073]  # a list, as the reference's


def test_config_json_matches_reference(tmp_path, ref):
    transformers = reference("transformers")
    ours = json.loads(CLIPImageProcessor().to_json_string())
    assert ours == json.loads(ref.to_json_string())
    # a folder written by transformers loads, and ours loads in transformers
    ref.save_pretrained(tmp_path / "theirs")
    assert CLIPImageProcessor.from_pretrained(tmp_path / "theirs").to_dict() == CLIPImageProcessor().to_dict()
    CLIPImageProcessor(size=123).save_pretrained(tmp_path / "ours")
    assert transformers.CLIPImageProcessor.from_pretrained(tmp_path / "ours").size == {"shortest_edge": 123}


def _write_2021_config(folder: Path) -> None:
    """A preprocessor_config.json as openai/clip-vit-base-patch32 shipped it in 2021, in ``folder``/sub."""
    config = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}
    (folder / "sub").mkdir()
    (folder / "sub" / "preprocessor_config.json").write_text(json.dumps(config))


def test_2021_hub_config(tmp_path):
    _write_2021_config(tmp_path)
    for cls in (CLIPImageProcessor, CLIPImageProcessorFast):
        processor = cls.from_pretrained(tmp_path, subfolder="sub", local_files_only=True)
        assert processor.size == {"shortest_edge": 224}
        assert processor.crop_size == {"height": 224, "width": 224}
        assert processor.do_rescale is True and processor.do_convert_rgb is True
        assert "feature_extractor_type" not in processor.to_dict()


def test_2021_hub_config_as_reference_reads_it(tmp_path):
    _write_2021_config(tmp_path)
    theirs = reference("transformers").CLIPImageProcessor.from_pretrained(tmp_path, subfolder="sub")
    ours = CLIPImageProcessor.from_pretrained(tmp_path, subfolder="sub", local_files_only=True)
    assert ours.size == theirs.size and ours.crop_size == theirs.crop_size


def test_from_dict_with_kwargs_as_reference():
    transformers = reference("transformers")
    config = CLIPImageProcessor(size=20, crop_size=18).to_dict()
    for cls, their_cls in ((CLIPImageProcessor, transformers.CLIPImageProcessor),):
        ours, theirs = cls.from_dict(config), their_cls.from_dict(config)
        assert ours.size == theirs.size == {"shortest_edge": 20}
        assert ours.crop_size == theirs.crop_size == {"height": 18, "width": 18}
        ours, theirs = cls.from_dict(config, size=42, crop_size=84), their_cls.from_dict(config, size=42, crop_size=84)
        assert ours.size == theirs.size == {"shortest_edge": 42}
        assert ours.crop_size == theirs.crop_size == {"height": 84, "width": 84}
        ours, unused = cls.from_dict(config, do_normalize=False, unknown=1, return_unused_kwargs=True)
        assert ours.do_normalize is False and unused == {"unknown": 1}


def test_feature_extractor_alias_warns():
    with pytest.warns(FutureWarning):
        extractor = CLIPFeatureExtractor()
    assert isinstance(extractor, CLIPImageProcessor)


def test_bad_inputs_get_clear_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    cases = [
        ({"a": 1}, "Invalid image type dict"),
        (Image.new("RGB", (0, 0)), "empty image"),
        (np.zeros((0, 0, 3), np.uint8), "empty image"),
        (np.zeros((10, 12, 2), np.uint8), "channel"),
        (np.zeros((1, 2, 10, 12, 3), np.uint8), "3 dimensions"),
        (np.zeros((10, 12), np.uint8), "3 dimensions"),
        (np.full((10, 12, 3), 300.0), "values"),
        ([], "empty list"),
    ]
    for processor in _ours():
        for value, message in cases:
            with pytest.raises(InputError, match=message):
                processor(value, return_tensors="pt")
        with pytest.raises(ImageLoadError, match="notes.txt.*not an image"):
            processor(str(text), return_tensors="pt")
        with pytest.raises(InputError, match="image_mean"):
            processor(np.zeros((10, 12, 3), np.uint8), image_mean=[0.5, 0.5])
        with pytest.raises(ValueError, match="return_tensors"):
            processor(np.zeros((10, 12, 3), np.uint8), return_tensors="tf")


def test_paths_are_loaded_with_load_image(tmp_path):
    """Paths (str or Path) and base64 are read with load_image (EXIF applied, RGB), as transformers 4.57 reads
    strings; the result equals processing the loaded image."""
    from clipfast.image_io import load_image

    path = tmp_path / "coffee.png"
    image_fixtures.sample("coffee").convert("RGBA").save(path)
    for processor in _ours():
        for source in (str(path), path, [str(path), path]):
            got = processor(source, return_tensors="np")["pixel_values"]
            expected = processor(load_image(path), return_tensors="np")["pixel_values"]
            assert got.shape[1:] == (3, 224, 224) and np.array_equal(got[0], expected[0])


def test_paths_are_loaded_as_the_reference_loads_them(tmp_path, ref):
    path = tmp_path / "coffee.png"
    image_fixtures.sample("coffee").convert("RGBA").save(path)
    want = ref(str(path), return_tensors="np")["pixel_values"]
    assert np.abs(CLIPImageProcessor()(str(path), return_tensors="np")["pixel_values"] - want).max() <= 1e-6


@pytest.mark.parametrize("options", [{}, {"return_tensors": None}, {"return_tensors": "pt"},
                                     {"do_center_crop": False, "return_tensors": None},
                                     {"do_normalize": False, "do_rescale": False, "data_format": "channels_last"},
                                     {"crop_size": {"height": 100, "width": 180}, "size": {"shortest_edge": 150}}])
def test_lists_of_paths_load_and_process_per_image_on_the_pool(tmp_path, options):
    """A list of sources takes one fused load + preprocess task per image: the same numbers, types and shapes as
    loading first (and, for the exact class, as the reference on the loaded images)."""
    from clipfast.image_io import load_image

    paths = image_fixtures.photos(tmp_path)[:6]
    sources = [str(paths[0]), paths[1], paths[2].read_bytes(), *map(str, paths[3:])]
    loaded = [load_image(path) for path in paths]
    options = dict({"return_tensors": "np"}, **options)
    for processor in _ours():
        got = processor(sources, **options)["pixel_values"]
        expected = processor(loaded, **options)["pixel_values"]
        assert type(got) is type(expected) and len(got) == len(expected)
        for a, b in zip(got, expected):
            assert type(a) is type(b) and a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


def test_lists_of_paths_match_the_reference_on_the_loaded_images(tmp_path, ref):
    from clipfast.image_io import load_image

    paths = image_fixtures.photos(tmp_path)[:6]
    sources = [str(paths[0]), paths[1], paths[2].read_bytes(), *map(str, paths[3:])]
    for options in ({}, {"crop_size": {"height": 100, "width": 180}, "size": {"shortest_edge": 150}}):
        want = ref([load_image(path) for path in paths], return_tensors="np", **options)["pixel_values"]
        assert _max_diff(CLIPImageProcessor()(sources, return_tensors="np", **options)["pixel_values"], want) <= 1e-6


def test_a_bad_source_in_a_list_names_itself(tmp_path):
    good = tmp_path / "good.png"
    image_fixtures.sample("coffee").save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    for processor in _ours():
        with pytest.raises(ImageLoadError, match="bad.jpg"):
            processor([good, bad, good, str(tmp_path / "missing.png")])
        with pytest.raises(ImageLoadError, match="missing.png"):
            processor([good, str(tmp_path / "missing.png"), np.zeros((5, 5, 3), np.uint8)])


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    from clipfast.image_io import load_image

    path = tmp_path / "cut.jpg"
    path.write_bytes(image_fixtures.jpeg_bytes(image_fixtures.sample("coffee"))[:3000])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(path)


def test_processors_run_without_torchvision():
    src = Path(__import__("clipfast").__file__).parents[1]
    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "import numpy as np, clipfast.image_processing as ip\n"
        "assert 'torchvision' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "x = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)\n"
        "a = ip.CLIPImageProcessor()(x, return_tensors='pt').pixel_values\n"
        "b = ip.CLIPImageProcessorFast()(x, return_tensors='pt').pixel_values\n"
        "assert a.shape == b.shape == (1, 3, 224, 224) and (a - b).abs().max() < 0.02\n"
        "assert sys.modules.get('torchvision') is None\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_on_cuda_matches(photos, ref):
    expected = ref(photos, return_tensors="np").pixel_values
    got = CLIPImageProcessorFast()(photos, return_tensors="pt", device="cuda").pixel_values
    assert got.device.type == "cuda"
    assert _max_diff(got.cpu(), expected) <= ONE_LEVEL


def test_torch_resampler_equals_pillow_lane(photos):
    """On the CPU, PIL inputs resize with Pillow on threads (computing little more than the crop, within one
    level); arrays (and every CUDA input) use the torch reproduction of Pillow's resampler, which is exact."""
    fast, slow = CLIPImageProcessorFast(), CLIPImageProcessor()
    for photo in photos:
        rgb = np.asarray(photo.convert("RGB"))
        exact = slow(photo, return_tensors="pt").pixel_values
        via_pillow = fast(photo, return_tensors="pt").pixel_values
        via_torch = fast(torch.from_numpy(rgb.transpose(2, 0, 1).copy()), return_tensors="pt").pixel_values
        assert _max_diff(via_torch, exact) <= 1e-6, photo.size
        assert _max_diff(via_pillow, exact) <= ONE_LEVEL, photo.size


# (width, height) beyond the fixtures: odd sizes, near-identity scales, strong up/down-scaling, extreme aspects
SWEEP_SIZES = [(640, 480), (480, 640), (301, 225), (225, 301), (229, 230), (333, 777), (807, 883), (1919, 1080),
               (226, 1000), (1000, 226), (300, 3000), (3000, 300), (7, 9), (37, 23), (150, 100), (513, 511)]


@pytest.mark.parametrize("resample", [3, 2, 1, 5, 4, 0])
def test_fast_cpu_lane_within_one_level_on_many_sizes(resample):
    """Fast's Pillow lane against the exact class over sizes, aspect ratios, crops and filters: never more than
    one uint8 level apart, and almost everywhere equal."""
    rng = np.random.default_rng(resample)
    bases = [image_fixtures.sample("astronaut").convert("RGB"),
             Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))]
    differing = total = 0
    for size, crop in [(224, 224), (256, {"height": 200, "width": 240}), (64, 48)]:
        kwargs = {"size": size, "crop_size": crop, "resample": resample, "do_normalize": False}
        slow, fast = _ours(kwargs)
        images = [base.resize(wh, Image.BICUBIC) for wh in SWEEP_SIZES for base in bases]
        expected = slow(images, return_tensors="np").pixel_values * 255
        got = fast(images, return_tensors="np").pixel_values * 255
        diff = np.abs(got - expected)
        assert diff.max() <= 1 + 1e-3, (size, crop)
        differing, total = differing + int((diff > 1e-3).sum()), total + diff.size
    assert differing / total < 1e-3


def test_pillow_resize_crop_helper():
    """The crop-only resize equals resize-then-crop within one level, in Pillow's pass order, both orientations."""
    from clipfast.image_utils import _crop_box, _output_size
    from clipfast.pillow_resample import _pillow_resize_crop

    image = image_fixtures.sample("coffee").convert("RGB")
    for wh in [(640, 480), (480, 640), (300, 3000), (3000, 300), (225, 301)]:
        src = image.resize(wh, Image.BICUBIC)
        out_h, out_w = _output_size(wh[1], wh[0], {"shortest_edge": 224})
        box = _crop_box(out_h, out_w, 224, 224)
        full = np.asarray(src.resize((out_w, out_h), 3, reducing_gap=None), dtype=int)
        full = full[box[0]:box[0] + 224, box[1]:box[1] + 224]
        got = np.asarray(_pillow_resize_crop(src, out_h, out_w, 3, box), dtype=int)
        assert got.shape == full.shape and np.abs(got - full).max() <= 1, wh


def test_fast_cpu_lane_layouts_and_return_types(photos):
    slow, fast = _ours()
    images = photos[:3]
    expected = slow(images, return_tensors="np", data_format="channels_last").pixel_values
    got = fast(images, return_tensors="pt", data_format="channels_last").pixel_values
    assert got.shape == (3, 224, 224, 3) and got.is_contiguous()
    assert _max_diff(got, expected) <= ONE_LEVEL
    listed = fast(images).pixel_values
    assert isinstance(listed, list) and all(t.shape == (3, 224, 224) for t in listed)
    # uint8 outputs (no rescale, no normalize) are the pixels themselves: exact
    kwargs = {"do_rescale": False, "do_normalize": False}
    assert torch.equal(fast(images, return_tensors="pt", **kwargs).pixel_values,
                       torch.from_numpy(slow(images, return_tensors="np", **kwargs).pixel_values))


CROP_SHAPES = ((39, 36), (36, 43), (30, 30), (20, 33), (37, 20))  # half offsets both ways, and padding


def test_crop_rounding_half_even_crops_where_torchvision_does():
    """crop_rounding="half_even" (clipfast's option, set for open_clip checkpoints) crops and pads where
    torchvision's CenterCrop does."""
    reference("torchvision")
    from torchvision.transforms import functional as tvf

    rng = np.random.default_rng(0)
    for h, w in CROP_SHAPES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = tvf.center_crop(torch.from_numpy(image).permute(2, 0, 1), [30, 30]).float() / 255
        for cls in (CLIPImageProcessor, CLIPImageProcessorFast):
            processor = cls(do_resize=False, do_normalize=False, crop_size=30, crop_rounding="half_even")
            got = processor(image, return_tensors="pt")["pixel_values"][0]
            assert (got - want).abs().max() <= 1e-6, (cls.__name__, h, w)


def test_crop_rounding_floor_crops_where_transformers_does(tmp_path):
    """"floor" (the default) crops where transformers does; a saved crop_rounding is a key transformers keeps."""
    transformers = reference("transformers")
    rng = np.random.default_rng(0)
    for h, w in CROP_SHAPES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        theirs = transformers.CLIPImageProcessor(do_resize=False, do_normalize=False, crop_size=30)(
            image, return_tensors="np")
        for cls in (CLIPImageProcessor, CLIPImageProcessorFast):
            floor = cls(do_resize=False, do_normalize=False, crop_size=30)(image, return_tensors="np")
            assert _max_diff(floor["pixel_values"], theirs["pixel_values"]) <= 1e-6
    CLIPImageProcessor(crop_rounding="half_even").save_pretrained(tmp_path)
    transformers.CLIPImageProcessor.from_pretrained(tmp_path)  # an extra key transformers keeps and ignores


def test_crop_rounding_offsets_saving_and_errors(tmp_path):
    """The two roundings differ only where the offset is a half: "floor" rounds it down, "half_even" to even;
    crop_rounding is saved only when set, and an unknown one is refused."""
    image = np.arange(39 * 36 * 3, dtype=np.uint8).reshape(39, 36, 3)  # 9 spare rows (offset 4.5), 6 columns (3)
    for cls in (CLIPImageProcessor, CLIPImageProcessorFast):
        options = dict(do_resize=False, do_rescale=False, do_normalize=False, crop_size=30)
        floor = cls(**options)(image, return_tensors="np")["pixel_values"][0]
        even = cls(crop_rounding="half_even", **options)(image, return_tensors="np")["pixel_values"][0]
        assert np.array_equal(floor, image[4:34, 3:33].transpose(2, 0, 1))
        assert np.array_equal(even, image[4:34, 3:33].transpose(2, 0, 1))  # round(4.5) == 4: even
        shifted = cls(crop_rounding="half_even", **options)(image[:37], return_tensors="np")["pixel_values"][0]
        assert np.array_equal(shifted, image[4:34, 3:33].transpose(2, 0, 1))  # round(3.5) == 4, floor gives 3
    processor = CLIPImageProcessor(crop_rounding="half_even")
    processor.save_pretrained(tmp_path)
    assert CLIPImageProcessor.from_pretrained(tmp_path).crop_rounding == "half_even"
    assert "crop_rounding" not in CLIPImageProcessor().to_dict()
    with pytest.raises(InputError, match="crop_rounding='nearest'"):
        CLIPImageProcessor()(np.zeros((8, 8, 3), np.uint8), crop_rounding="nearest")


def test_one_pixel_tall_pil_images_are_images():
    """A PIL image is (H, W, C) whatever its size: a 1-pixel-tall one is not taken for channels first (the
    reference's shape guess refuses it)."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1, 5, 3), dtype=np.uint8))
    exact = CLIPImageProcessor()(image, return_tensors="pt")["pixel_values"]
    fast = CLIPImageProcessorFast()(image, return_tensors="pt")["pixel_values"]
    assert exact.shape == fast.shape == (1, 3, 224, 224) and (exact - fast).abs().max() <= ONE_LEVEL
