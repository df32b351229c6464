"""Where files come from: a local folder or a Hugging Face Hub id, and how weights are read and written.

Hub ids go through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, tokens, revisions). Every failure is
turned into one :class:`~clipfast.errors.CheckpointError` that names the model and says what to do.

Weights are read without unpickling by default: safetensors first, then ``pytorch_model.bin`` through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from clipfast.errors import CheckpointError, OfflineError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
CONFIG_NAME = "config.json"

_TRUE = {"1", "on", "yes", "true"}


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) asks for no network, read per call."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _variant(filename: str, variant: str | None) -> str:
    """The variant goes before the last extension, as transformers names the files: ``model.safetensors`` ->
    ``model.fp16.safetensors``, ``model.safetensors.index.json`` -> ``model.safetensors.index.fp16.json``."""
    if not variant:
        return filename
    stem, dot, ext = filename.rpartition(".")
    return f"{stem}.{variant}.{ext}" if dot else f"{filename}.{variant}"


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    subfolder: str = "",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    required: bool = True,
) -> str | None:
    """Return a local path to ``filename`` of a folder or hub repo, downloading (and caching) it if needed.

    Returns None when the file does not exist and ``required`` is False.

    Example:
        >>> resolve_file("openai/clip-vit-base-patch32", "config.json")  # doctest: +SKIP
    """
    name = os.fspath(name_or_path)
    local_dir = Path(name) / subfolder if subfolder else Path(name)
    if local_dir.is_dir():
        path = local_dir / filename
        if path.is_file():
            return str(path)
        if required:
            present = sorted(p.name for p in local_dir.iterdir())[:20]
            raise CheckpointError(f"{filename!r} not found in the folder {str(local_dir)!r} (it holds: {present}).")
        return None
    if os.path.isfile(name):
        raise CheckpointError(f"{name!r} is a file; from_pretrained expects a folder or a hub id such as "
                              "'openai/clip-vit-base-patch32'. Single checkpoint files load with clipfast.load().")
    if _looks_like_path(name):
        raise CheckpointError(f"The folder {name!r} does not exist. Check the path, or pass a hub id such as "
                              "'openai/clip-vit-base-patch32'.")
    return _hub_download(name, filename, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
                         local_files_only=local_files_only or offline_mode(), token=token, required=required)


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything with more slashes, a dot start or a drive is a path."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or ":" in name
            or name.strip() == "")


def _hub_download(repo_id: str, filename: str, *, subfolder: str, revision: str | None,
                  cache_dir: str | os.PathLike | None, local_files_only: bool, token: str | bool | None,
                  required: bool) -> str | None:
    """``hf_hub_download`` with every failure translated into a clear CheckpointError."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    # without DNS for the Hub, huggingface_hub spends ~25 s in retries before falling back to its cache;
    # a one-time lookup lets us go to the cache (or the clear error below) at once
    reachable = local_files_only or _hub_resolvable(constants.ENDPOINT)
    try:
        return huggingface_hub.hf_hub_download(
            repo_id, filename, subfolder=subfolder or None, revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=local_files_only or not reachable, token=token)
    except hub_errors.LocalEntryNotFoundError as exc:
        if not required and _cached_repo_exists(repo_id, cache_dir):
            return None
        if local_files_only:
            raise OfflineError(
                f"{filename!r} of {repo_id!r} is not in the local cache and offline mode is on "
                "(HF_HUB_OFFLINE=1 or local_files_only=True). Download it once with network access, or pass a "
                "local folder.") from exc
        raise OfflineError(
            f"Cannot reach the Hugging Face Hub to download {filename!r} of {repo_id!r}, and it is not cached. "
            "Check your network (or set HF_ENDPOINT for a mirror), or pass a local folder.") from exc
    except hub_errors.GatedRepoError as exc:
        raise CheckpointError(f"{repo_id!r} is gated: accept its terms on the Hub and pass token= "
                              "(or run `hf auth login`).") from exc
    except hub_errors.RepositoryNotFoundError as exc:
        raise CheckpointError(
            f"{repo_id!r} is neither a local folder nor a model id on the Hugging Face Hub. Check the spelling "
            "(e.g. 'openai/clip-vit-base-patch32'); for a private repo pass token=.") from exc
    except hub_errors.RevisionNotFoundError as exc:
        raise CheckpointError(f"Revision {revision!r} does not exist for {repo_id!r}.") from exc
    except hub_errors.EntryNotFoundError as exc:
        if not required:
            return None
        raise CheckpointError(f"{repo_id!r} has no file {filename!r}"
                              + (f" in subfolder {subfolder!r}" if subfolder else "") + ".") from exc
    except hub_errors.HfHubHTTPError as exc:
        raise CheckpointError(f"Downloading {filename!r} of {repo_id!r} failed: {exc}") from exc
    except ValueError as exc:  # e.g. a file name that points outside the repo ("../..."), refused by the hub client
        raise CheckpointError(f"{repo_id!r} names an invalid file {filename!r}: {exc}") from exc


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@functools.lru_cache(maxsize=4)
def _hub_resolvable(endpoint: str) -> bool:
    """Whether the Hub's host name resolves (checked once per process and endpoint)."""
    host = urllib.parse.urlparse(endpoint).hostname
    if not host:
        return True
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError, OSError):
        return False
    return True


def _cached_repo_exists(repo_id: str, cache_dir: str | os.PathLike | None) -> bool:
    """Whether any snapshot of ``repo_id`` is in the cache (so a missing optional file is really absent)."""
    from huggingface_hub import constants

    root = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return (root / f"models--{repo_id.replace('/', '--')}" / "snapshots").is_dir()


# ---------------------------------------------------------------------------------------------------------------
# weights


def resolve_weights(name_or_path: str | os.PathLike, *, variant: str | None = None,
                    **hub_kwargs: Any) -> list[str]:
    """Find the weight files of a checkpoint: single or sharded safetensors first, then pytorch_model.bin.

    Returns the list of local file paths (one entry unless sharded).
    """
    for single, index in ((SAFE_WEIGHTS, SAFE_INDEX), (TORCH_WEIGHTS, TORCH_INDEX)):
        path = resolve_file(name_or_path, _variant(single, variant), required=False, **hub_kwargs)
        if path is not None:
            return [path]
        index_path = resolve_file(name_or_path, _variant(index, variant), required=False, **hub_kwargs)
        if index_path is not None:
            shards = sorted(set(_read_index(index_path).values()))
            return [resolve_file(name_or_path, s, **hub_kwargs) for s in shards]  # type: ignore[misc]
    where = os.path.join(os.fspath(name_or_path), hub_kwargs.get("subfolder") or "")
    if not os.path.isdir(os.fspath(name_or_path)) and (hub_kwargs.get("local_files_only") or offline_mode()
                                                       or not _hub_resolvable(_endpoint())):
        # offline, a repo whose config is cached but not its weights: unknown upstream, so say what is missing
        raise OfflineError(
            f"The weights of {os.fspath(name_or_path)!r} are not in the local cache and offline mode is on "
            "(HF_HUB_OFFLINE=1 or local_files_only=True); only some of its files are cached. Download it once with "
            "network access, or pass a local folder.")
    raise CheckpointError(
        f"No model weights found in {where!r}: expected {_variant(SAFE_WEIGHTS, variant)!r}, a sharded "
        f"{_variant(SAFE_INDEX, variant)!r}, or {_variant(TORCH_WEIGHTS, variant)!r}. OpenAI .pt and open_clip "
        "checkpoints load with clipfast.load().")


def _read_index(index_path: str) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index JSON."""
    try:
        with open(index_path, encoding="utf-8") as f:
            return dict(json.load(f)["weight_map"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"The shard index {index_path!r} is not a valid index file: {exc}") from exc


def load_weights(paths: list[str], device: str = "cpu") -> dict[str, Any]:
    """Read weight files into one state dict (tensors on ``device``), without executing pickled code."""
    state: dict[str, Any] = {}
    for path in paths:
        state.update(_load_one(path, device))
    return state


def _load_one(path: str, device: str) -> dict[str, Any]:
    """One safetensors file, or one torch pickle read with ``weights_only=True``."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device=device)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path!r} is not a valid safetensors file ({exc}). The download may be "
                                  "incomplete: delete it (or its cache entry) and try again.") from exc
    import zipfile

    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...)
        raise CheckpointError(
            f"{path!r} could not be read as a weights-only PyTorch checkpoint ({type(exc).__name__}: {exc}). "
            "clipfast never unpickles arbitrary objects; convert the file to safetensors with a tool you trust."
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path!r} holds a {type(state).__name__}, not a state dict of tensors.")
    nested = state.get("state_dict")
    return nested if isinstance(nested, dict) else state


def save_weights(state_dict: dict[str, Any], folder: str | os.PathLike, *, max_shard_size: int | str = "5GB",
                 safe_serialization: bool = True) -> list[str]:
    """Write ``state_dict`` as model.safetensors (sharded with an index above ``max_shard_size``).

    Tensors are made contiguous and de-aliased so the file loads in transformers 4.x and 5.x alike.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() if _shares_storage(v, state_dict) else v.detach().contiguous()
               for k, v in state_dict.items()}
    if not safe_serialization:
        torch.save(tensors, folder / TORCH_WEIGHTS)
        return [str(folder / TORCH_WEIGHTS)]
    from safetensors.torch import save_file

    limit = _parse_size(max_shard_size)
    shards = _split_shards(tensors, limit)
    if len(shards) == 1:
        save_file(tensors, str(folder / SAFE_WEIGHTS), metadata={"format": "pt"})
        return [str(folder / SAFE_WEIGHTS)]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        names.append(str(folder / name))
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(folder / SAFE_INDEX, "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    return names


def _shares_storage(tensor: Any, state_dict: dict[str, Any]) -> bool:
    """Whether another entry of the dict views the same memory (safetensors refuses shared storage)."""
    ptr = tensor.untyped_storage().data_ptr()
    return sum(1 for t in state_dict.values() if t.untyped_storage().data_ptr() == ptr) > 1


def _parse_size(size: int | str) -> int:
    """``"5GB"`` / ``"200MB"`` / ``1000`` -> bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    for unit, factor in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6),
                         ("KB", 10**3), ("B", 1)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _split_shards(tensors: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Greedy split in key order so that each shard stays under ``limit`` bytes (a big tensor gets its own)."""
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += n
    return shards


def read_json(path: str) -> dict[str, Any]:
    """Read a JSON object, with a clear error for a corrupt file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path!r} is not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path!r} should hold a JSON object, found {type(data).__name__}.")
    return data
