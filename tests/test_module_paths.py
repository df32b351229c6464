"""Code that imports from transformers' module paths runs with only the prefix changed."""

import clipfast


def test_transformers_style_module_paths():
    from clipfast.models.clip import CLIPModel
    from clipfast.models.clip.configuration_clip import CLIPTextConfig
    from clipfast.models.clip.image_processing_clip import CLIPImageProcessor
    from clipfast.models.clip.modeling_clip import CLIPEncoderLayer, CLIPTextTransformer, CLIPVisionTransformer
    from clipfast.models.clip.processing_clip import CLIPProcessor
    from clipfast.models.clip.tokenization_clip import CLIPTokenizer
    from clipfast.models.clip.tokenization_clip_fast import CLIPTokenizerFast

    assert CLIPModel is clipfast.CLIPModel and CLIPEncoderLayer is clipfast.CLIPEncoderLayer
    assert CLIPTextTransformer is clipfast.CLIPTextTransformer and CLIPVisionTransformer is not None
    assert CLIPTextConfig is clipfast.CLIPTextConfig and CLIPImageProcessor is clipfast.CLIPImageProcessor
    assert CLIPProcessor is clipfast.CLIPProcessor and CLIPTokenizer is clipfast.CLIPTokenizer
    assert CLIPTokenizerFast is clipfast.CLIPTokenizerFast


def test_every_public_name_resolves():
    for name in clipfast.__all__:
        assert getattr(clipfast, name) is not None, name
