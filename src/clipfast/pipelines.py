"""``pipeline("zero-shot-image-classification")``: label images with free-text candidate labels.

Same call, outputs and ordering as transformers' pipeline. Beyond it: the labels' text embeddings are computed
once per call (not once per image), images are decoded on a thread pool, and ``top_k`` is accepted.

Arguments are checked before any work, each bad one with an :class:`~clipfast.errors.InputError` (a ValueError,
as transformers raises for a bad ``batch_size``) that names it and its value. Documented choices:

- ``hypothesis_template`` must put the label somewhere: one ``{}`` (or ``{0}``). A template without it would give
  every label the same prompt and the same score, so it is refused, whatever the number of labels.
- ``candidate_labels``: a list (or other iterable) of strings; a bare string is split on commas. Empty strings are
  labels like any other. Duplicates are kept and tie.
- ``top_k``: ``None`` (all labels) or an int >= 1; a ``top_k`` above the number of labels returns them all.
- ``batch_size``: ``None`` (32) or an int >= 1; results do not depend on it.
- an empty list of images gives an empty list of results.
- ``device``: None (CPU), an int (a negative int is the CPU, as in transformers), "cpu", "cuda[:N]", "mps" or a
  ``torch.device``; CUDA or MPS asked for where there is none falls back to the CPU with a warning. ``device_map``
  ("auto", or a dict that puts everything on one device) picks one device: the model is never split.
"""

from __future__ import annotations

import math
import os
import string
import warnings
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any, Iterable

import torch

from clipfast.constants import DEFAULT_MODEL, DEFAULT_TEMPLATE
from clipfast.errors import InputError

TASK = "zero-shot-image-classification"
# images per model call when the caller sets no batch_size: batching changes nothing but float round-off, and a
# batch of 32 runs the image encoder near the CPU's matmul peak where batch 1 wastes half of it
AUTO_BATCH_SIZE = 32


def resolve_device(device: Any) -> torch.device:
    """int / "cpu" / "cuda:0" / torch.device -> torch.device.

    A CUDA device asked for on a machine without CUDA falls back to the CPU with a warning, as transformers
    4.57 quietly does; a CUDA index that does not exist is an error.
    """
    if device is None:
        return torch.device("cpu")
    hint = "use an int (GPU index), 'cpu', 'cuda', 'cuda:0' or 'mps'"
    if isinstance(device, bool) or not isinstance(device, (int, str, torch.device)):
        raise InputError(f"device={device!r} is not a device; {hint}.")
    if isinstance(device, int):
        device = torch.device("cpu") if device < 0 else torch.device("cuda", device)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"device={device!r} is not a device; {hint}.") from exc
    if device.type == "meta":
        raise InputError(f"device='meta' holds no weights, so nothing can run there; {hint}.")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if device.type in ("cuda", "mps") and not available[device.type]:
        warnings.warn(f"device={str(device)!r} was asked for, but {device.type.upper()} is not available: running "
                      "on the CPU. Pass device='cpu' to silence this warning.", stacklevel=4)
        return torch.device("cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device={str(device)!r} does not exist: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s).")
    backend = getattr(torch, device.type, None)
    if not available.get(device.type, getattr(backend, "is_available", lambda: False)()):
        raise InputError(f"device={str(device)!r}: this machine (or this PyTorch build) has no {device.type} "
                         f"device; {hint}.")
    return device


def _device_from_map(device_map: Any) -> Any:
    """The one device a transformers ``device_map`` names: clipfast never splits the model across devices."""
    if isinstance(device_map, str) and device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device_map, Mapping):
        devices = {str(d) if not isinstance(d, int) else d for d in device_map.values()}
        if len(devices) != 1:
            raise InputError(f"device_map={dict(device_map)!r} spreads the model over several devices; clipfast "
                             "runs it on one: pass device='cuda:0' (or 'cpu').")
        return devices.pop()
    return device_map


def _check_count(name: str, value: Any, minimum: int = 1) -> int | None:
    """``value`` as an optional int >= ``minimum`` (``top_k``, ``batch_size``, ``num_workers``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum} or None; got {value!r}.")
    return value


def _check_timeout(timeout: Any) -> float | None:
    """``timeout``: None (the default) or a positive number of seconds."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not (math.isfinite(timeout) and timeout > 0)):
        raise InputError(f"timeout must be a positive number of seconds or None; got {timeout!r}.")
    return timeout


def _as_labels(candidate_labels: Any) -> list[str]:
    """Validate labels. A bare string is split on commas (as transformers' text zero-shot pipeline does)."""
    example = "e.g. candidate_labels=['cat', 'dog']"
    if candidate_labels is None:
        raise InputError(f"candidate_labels is required, {example}.")
    if isinstance(candidate_labels, str):
        candidate_labels = [label.strip() for label in candidate_labels.split(",") if label.strip()]
    if isinstance(candidate_labels, (Mapping, bytes, bytearray)) or not isinstance(candidate_labels, Iterable):
        raise InputError(f"candidate_labels must be a list of strings, {example}; got {candidate_labels!r} "
                         f"({type(candidate_labels).__name__}).")
    labels = list(candidate_labels)
    if not labels:
        raise InputError(f"candidate_labels is empty: give at least one label, {example}.")
    bad = [label for label in labels if not isinstance(label, str)]
    if bad:
        nested = " (one flat list of labels serves every image)" if isinstance(bad[0], (list, tuple)) else ""
        raise InputError(f"candidate_labels must be strings{nested}; got {bad[0]!r} ({type(bad[0]).__name__}) "
                         f"in {labels[:5]!r}.")
    return labels


class ZeroShotImageClassificationPipeline:
    """Scores each image against every candidate label: ``[{"score": float, "label": str}, ...]``, best first.

    Example:
        >>> clip = pipeline("zero-shot-image-classification", model="openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> clip("cat.jpg", candidate_labels=["a cat", "a dog"])  # doctest: +SKIP
        [{'score': 0.99, 'label': 'a cat'}, {'score': 0.01, 'label': 'a dog'}]
    """

    task = TASK

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, device: Any = None,
                 batch_size: int | None = None,
                 num_workers: int | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.batch_size = _check_count("batch_size", batch_size)
        self.num_workers = _check_count("num_workers", num_workers, minimum=0)

    @property
    def torch_dtype(self) -> torch.dtype:
        return self.model.dtype

    dtype = torch_dtype

    def __call__(self, image: Any = None, candidate_labels: Any = None, *, images: Any = None,
                 hypothesis_template: str = DEFAULT_TEMPLATE, top_k: int | None = None,
                 batch_size: int | None = None, timeout: float | None = None, **kwargs: Any) -> Any:
        """Classify one image (-> list of dicts), a list of images (-> list of lists), or a generator / iterator
        of images (-> a generator of results, one per image, as transformers streams them)."""
        if image is not None and images is not None:
            raise InputError("Pass the images once: as the first argument or as images=, not both.")
        image = images if image is None else image
        if image is None:
            raise InputError("Give an image: a path, an http(s) URL, base64 / data URI, a PIL image, or a list.")
        kwargs.pop("tokenizer_kwargs", None)
        if kwargs:
            raise TypeError(f"Unexpected arguments {sorted(kwargs)}; the pipeline takes candidate_labels, "
                            "hypothesis_template, top_k, batch_size and timeout.")
        labels = _as_labels(candidate_labels)
        _fill(hypothesis_template, labels[0])  # a bad template fails before any image is read
        top_k = _check_count("top_k", top_k)
        batch = _check_count("batch_size", batch_size) or self.batch_size or AUTO_BATCH_SIZE
        timeout = _check_timeout(timeout)
        if isinstance(image, Iterator):
            return self._stream(image, labels, hypothesis_template, top_k, batch, timeout)
        single = not isinstance(image, (list, tuple))
        results = self.classify([image] if single else list(image), labels, hypothesis_template, top_k, batch,
                                timeout)
        return results[0] if single else results

    def _stream(self, images: Iterator[Any], labels: list[str], hypothesis_template: str, top_k: int | None,
                batch_size: int, timeout: float | None) -> Iterator[list[dict[str, Any]]]:
        """Results for an iterator of images, ``batch_size`` images at a time; the labels are encoded once, now
        (so that a bad template fails here, not at the first ``next``)."""
        prompts = [_fill(hypothesis_template, label) for label in labels]
        text_embeds = self.text_embeddings(prompts)

        def results() -> Iterator[list[dict[str, Any]]]:
            while chunk := list(islice(images, batch_size)):
                yield from self.classify(chunk, labels, hypothesis_template, top_k, batch_size, timeout,
                                         text_embeds=text_embeds)

        return results()

    @torch.inference_mode()
    def classify(self, images: Iterable[Any], labels: list[str], hypothesis_template: str = DEFAULT_TEMPLATE,
                 top_k: int | None = None, batch_size: int = AUTO_BATCH_SIZE,
                 timeout: float | None = None, text_embeds: torch.Tensor | None = None) -> list[list[dict]]:
        """Score every image against every label; the label embeddings are computed once (or passed in as
        ``text_embeds`` from :meth:`text_embeddings`, by callers that classify in several calls)."""
        from clipfast.image_io import DEFAULT_TIMEOUT, load_images

        prompts = [_fill(hypothesis_template, label) for label in labels]
        # prompts with equal token ids ("cat", "Cat", "cat ") share one logit column: bit-equal scores, which
        # tie in candidate order
        unique, inverse = self._distinct_prompts(prompts)
        if text_embeds is None:
            text_embeds = self._encode_texts([prompts[i] for i in unique])
        elif len(unique) < len(prompts):
            text_embeds = text_embeds[torch.tensor(unique, device=text_embeds.device)]
        scale = self.model.logit_scale.exp()
        images = list(images)
        batch_size = max(1, batch_size)
        results = []
        for start in range(0, len(images), batch_size):  # decode per batch: memory stays bounded
            loaded = load_images(images[start:start + batch_size], num_workers=self.num_workers,
                                 timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
            image_embeds = self.image_embeddings(loaded)
            # the reference's order of operations: (text @ imageᵀ) * scale, then transposed
            logits = (text_embeds @ image_embeds.t() * scale).t()  # (images, distinct prompts)
            for row in _softmax_columns(logits.float(), inverse).tolist():
                results.append(_ranked(row, labels, top_k))
        return results

    def _distinct_prompts(self, prompts: list[str]) -> tuple[list[int], torch.Tensor]:
        """(index of the first prompt of each distinct token sequence, the column of every prompt)."""
        ids = self.tokenizer(prompts, truncation=True)["input_ids"]
        first: dict[tuple[int, ...], int] = {}
        columns = [first.setdefault(tuple(row), len(first)) for row in ids]
        unique = [0] * len(first)
        for index, column in reversed(list(enumerate(columns))):
            unique[column] = index
        return unique, torch.tensor(columns)

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts), E) in the model's dtype.

        Each distinct token sequence is encoded once, so texts that tokenize alike get bit-equal embeddings (a
        row's last bits may otherwise depend on its position in the batch)."""
        unique, columns = self._distinct_prompts(texts)
        embeds = self._encode_texts([texts[i] for i in unique])
        return embeds if len(unique) == len(texts) else embeds[columns.to(embeds.device)]

    @torch.inference_mode()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised embeddings of ``texts``, one row each (callers pass distinct token sequences)."""
        # truncation keeps EOS: a label longer than 77 tokens is cut instead of failing the whole call
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        embeds = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return embeds / embeds.norm(p=2, dim=-1, keepdim=True)

    @torch.inference_mode()
    def image_embeddings(self, images: list[Any]) -> torch.Tensor:
        """L2-normalised image embeddings (len(images), E) for loaded PIL images."""
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        embeds = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        return embeds / embeds.norm(p=2, dim=-1, keepdim=True)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write model, tokenizer and image processor into one folder that ``pipeline(model=folder)`` loads."""
        self.model.save_pretrained(save_directory, **kwargs)
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)


def _fill(template: str, label: str) -> str:
    """``template.format(label)``, with a clear error for a template that cannot take one label or has no place
    for it (every label would get the same prompt)."""
    if not isinstance(template, str):
        raise InputError(f"hypothesis_template must be a str with {{}} where the label goes, e.g. "
                         f"{DEFAULT_TEMPLATE!r}; got {template!r} ({type(template).__name__}).")
    try:
        prompt = template.format(label)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:  # {x}, {1}, {:d}, {0.a}, {0[x]}
        raise InputError(f"hypothesis_template={template!r} cannot take a label ({exc!r}): it needs one {{}} where "
                         "the label goes and no other {...} fields (write {{ }} for braces).") from None
    if not any(field is not None for _, field, _, _ in string.Formatter().parse(template)):
        raise InputError(f"hypothesis_template={template!r} has no {{}} where the label goes, so every label would "
                         f"get the same prompt and the same score; write e.g. {DEFAULT_TEMPLATE!r}.")
    return prompt


def _softmax_columns(logits: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``logits[:, inverse].softmax(-1)`` with each exponential computed once per distinct column, so that
    repeated columns get bit-equal probabilities (a vectorised exp may round differently by lane)."""
    exps = (logits - logits.max(dim=-1, keepdim=True).values).exp()[:, inverse.to(logits.device)]
    return exps / exps.sum(dim=-1, keepdim=True)


def _ranked(scores: list[float], labels: list[str], top_k: int | None) -> list[dict[str, Any]]:
    """Labels by descending score; ties keep the candidate order (a stable sort, as the reference)."""
    order = sorted(range(len(labels)), key=lambda i: -scores[i])
    ranked = [{"score": scores[i], "label": labels[i]} for i in order]
    return ranked[:top_k] if top_k is not None else ranked


def pipeline(task: str | None = None, model: Any = None, config: Any = None, tokenizer: Any = None,
             feature_extractor: Any = None, image_processor: Any = None, processor: Any = None,
             revision: str | None = None, use_fast: bool = True, token: str | bool | None = None, device: Any = None,
             device_map: Any = None, torch_dtype: Any = None, dtype: Any = None, model_kwargs: dict | None = None,
             batch_size: int | None = None, **kwargs: Any) -> ZeroShotImageClassificationPipeline:
    """Build a zero-shot image classification pipeline (the only task clipfast provides).

    ``model`` is a hub id, a folder, a checkpoint file (OpenAI / open_clip), or a loaded CLIPModel (then give the
    tokenizer and image processor too). ``device`` may be an int, "cpu", "cuda:0" or a torch.device.
    ``batch_size`` is the number of images per model call (default: 32; results do not depend on it).

    Example:
        >>> clip = pipeline(task="zero-shot-image-classification", model="openai/clip-vit-base-patch32")  # doctest: +SKIP
    """
    if task not in (None, TASK):
        raise InputError(f"Unknown task {task!r}: clipfast provides {TASK!r}.")
    model = DEFAULT_MODEL if model is None else model
    if isinstance(model, str) and not model.strip():
        raise InputError(f"model={model!r} is empty: give a hub id such as {DEFAULT_MODEL!r}, a folder or a "
                         "checkpoint file.")
    if not isinstance(model, (str, os.PathLike)) and not hasattr(model, "get_image_features"):
        raise InputError(f"model must be a hub id, a folder, a checkpoint file or a loaded CLIPModel; got {model!r} "
                         f"({type(model).__name__}).")
    batch_size = _check_count("batch_size", batch_size)
    if device is None and device_map is not None:
        device = _device_from_map(device_map)
    hub = dict(revision=revision, token=token, **{k: kwargs.pop(k) for k in ("cache_dir", "local_files_only",
                                                                               "subfolder") if k in kwargs})
    for ignored in ("trust_remote_code", "framework", "pipeline_class"):
        kwargs.pop(ignored, None)
    num_workers = kwargs.pop("num_workers", None)
    if kwargs:
        raise TypeError(f"pipeline() got unexpected arguments {sorted(kwargs)}.")
    if isinstance(model, (str, os.PathLike)):
        model, tokenizer, image_processor = _load_source(
            model, dtype if dtype is not None else torch_dtype, tokenizer, image_processor or feature_extractor,
            processor, {k: v for k, v in hub.items() if v is not None}, use_fast, model_kwargs or {})
    elif dtype is not None or torch_dtype is not None:
        from clipfast.loading import resolve_dtype

        model = model.to(resolve_dtype(dtype if dtype is not None else torch_dtype, model.config, None))
    image_processor = image_processor or feature_extractor or getattr(processor, "image_processor", None)
    tokenizer = tokenizer or getattr(processor, "tokenizer", None)
    if tokenizer is None or image_processor is None:
        raise InputError("With a model object, also pass tokenizer= and image_processor= (or processor=).")
    for name, part in (("tokenizer", tokenizer), ("image_processor", image_processor)):
        if not callable(part):
            raise InputError(f"{name} must be a loaded {name} (e.g. clipfast.AutoTokenizer / AutoImageProcessor"
                             f".from_pretrained(...)) or a hub id or folder given with model=; got {part!r}.")
    return ZeroShotImageClassificationPipeline(model, tokenizer, image_processor, device=device,
                                               batch_size=batch_size, num_workers=num_workers)


def _load_source(source: str | os.PathLike, dtype: Any, tokenizer: Any, image_processor: Any, processor: Any,
                 hub: dict[str, Any], use_fast: bool, model_kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Model, tokenizer and image processor from a hub id, folder or checkpoint file; given components win.

    OpenAI and open_clip checkpoints are read once and go through ``clipfast.convert.load_checkpoint`` (what
    ``clipfast.load`` does), which brings the matching vocabulary and preprocessing in the same read; transformers
    folders and hub ids load their saved tokenizer and processor.
    """
    from clipfast import formats
    from clipfast.convert import load_checkpoint

    if processor is not None:
        tokenizer, image_processor = tokenizer or processor.tokenizer, image_processor or processor.image_processor
    kind = formats.source_kind(source, **hub)
    if kind != formats.HF:  # decided once: the checkpoint is read with this answer
        options = dict(model_kwargs)
        ckpt = formats.read_checkpoint(source, options.pop("open_clip_config", None), kind=kind, **hub)
        model, default_tokenizer, default_processor = load_checkpoint(ckpt, torch_dtype=dtype, **options)
        # the pipeline owns this model and never changes its weights: packed float32 CPU weights are safe here
        return model.set_cpu_weight_packing(), tokenizer or default_tokenizer, image_processor or default_processor
    from clipfast.auto import AutoImageProcessor, AutoModelForZeroShotImageClassification, AutoTokenizer

    model = AutoModelForZeroShotImageClassification.from_pretrained(source, torch_dtype=dtype, **hub,
                                                                     **model_kwargs).set_cpu_weight_packing()
    if isinstance(tokenizer, (str, os.PathLike)) or tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or source, use_fast=use_fast, **hub)
    if isinstance(image_processor, (str, os.PathLike)) or image_processor is None:
        image_processor = AutoImageProcessor.from_pretrained(image_processor or source, **hub)
    return model, tokenizer, image_processor
