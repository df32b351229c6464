"""Embedding on Ray Data: the ``clipfast embed --engine ray`` engine, and callable classes for your own pipelines.

``pip install 'clipfast[ray]'``. Nothing of Ray is imported until a function here runs.

The engine hands each partition of a :class:`clipfast.bulk.Plan` to a pool of model actors
(``Dataset.map_batches`` over an :class:`~ray.data.ActorPoolStrategy`); each actor decodes its partition's images
on a thread pool while the model embeds the previous batch, and writes the partition as one part file, exactly as
the single-process engine does (same decode, same preprocessing, same numbers). With no address it starts an
embedded Ray on this machine; ``address`` ("auto", "HOST:PORT", "ray://HOST:PORT") or ``RAY_ADDRESS`` joins a
cluster.

Building blocks for your own Ray Data pipelines:

Example:
    >>> import ray                                                                    # doctest: +SKIP
    >>> from clipfast.ray import EmbedImages                                         # doctest: +SKIP
    >>> ds = ray.data.read_parquet("urls.parquet").rename_columns({"url": "image"})   # doctest: +SKIP
    >>> ds = ds.map_batches(EmbedImages, fn_constructor_kwargs={"model": "openai/clip-vit-base-patch32"},
    ...                     compute=ray.data.ActorPoolStrategy(size=2), num_gpus=1, batch_size=64)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
from typing import Any, Iterator

from clipfast.bulk import (Partition, PartitionEmbedder, Plan, Progress, as_float32, finish_output, load_model,
                           load_one, output_lock, output_meta, prepare_output, rows_of)
from clipfast.errors import ClipfastError, ImageLoadError, InputError
from clipfast.workers import POOL_SIZE_LIMIT, Lane, ordered_map

CONNECT_TIMEOUT = 40.0  # seconds allowed to reach a cluster before giving up with one line (Ray retries for minutes)
_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage-stats prompt or upload
    "RAY_DISABLE_IMPORT_WARNING": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_BACKEND_LOG_LEVEL": "error",  # the C++ core worker, raylet and GCS
    "RAY_LOG_TO_STDERR": "0",
}


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError("--engine ray needs Ray Data: pip install 'clipfast[ray]' (or pip install 'ray[data]').") \
            from None
    return ray


# ---------------------------------------------------------------------------------------------------------------
# building blocks for users' own Ray Data pipelines


class _Embed:
    """Shared by :class:`EmbedImages` and :class:`EmbedTexts`: one model per actor, loaded through the pipeline."""

    def __init__(self, model: str, column: str, output_column: str, device: str | None, dtype: str | None,
                 batch_size: int) -> None:
        self.clip = load_model(model, device, dtype)
        self.column, self.output_column, self.batch_size = column, output_column, batch_size

    def _table(self, batch: Any) -> tuple[dict[str, Any], bool]:
        """A batch as a dict of columns (NumPy or pandas batches), and whether it came as pandas."""
        as_pandas = hasattr(batch, "to_dict") and hasattr(batch, "columns")  # a pandas.DataFrame
        columns = {name: batch[name].to_numpy() for name in batch.columns} if as_pandas else batch
        if not isinstance(columns, dict) or self.column not in columns:
            raise InputError(f"The batch has no {self.column!r} column (columns: "
                             f"{sorted(columns) if isinstance(columns, dict) else type(batch).__name__}); pass "
                             f"column=... to name the one to embed.")
        return dict(columns), as_pandas

    def _embed_in_batches(self, embed: Any, items: list[Any]) -> Any:
        """float32 (len(items), dim) embeddings of ``items``, ``batch_size`` at a time through ``embed``."""
        import numpy as np

        vectors = np.zeros((len(items), int(self.clip.model.config.projection_dim)), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            vectors[start:start + self.batch_size] = as_float32(embed(items[start:start + self.batch_size]))
        return vectors

    def _out(self, columns: dict[str, Any], vectors: Any, as_pandas: bool) -> Any:
        columns[self.output_column] = vectors
        if not as_pandas:
            return columns
        import pandas as pd

        columns[self.output_column] = list(vectors)
        return pd.DataFrame(columns)


class EmbedImages(_Embed):
    """``ds.map_batches(EmbedImages, fn_constructor_kwargs={"model": ...}, ...)``: adds ``image_embedding`` (float32,
    L2-normalised, one row per image) and keeps every other column.

    The ``image`` column holds encoded bytes, paths, http(s) URLs or (H, W, C) uint8 arrays (what
    ``ray.data.read_images`` gives); they are decoded and preprocessed exactly as ``clipfast embed`` does.
    ``on_error="raise"`` fails the batch on an unreadable image; ``"drop"`` leaves its row out.

    Example:
        >>> ds.map_batches(EmbedImages, fn_constructor_kwargs={"model": "openai/clip-vit-base-patch32"},
        ...                compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1)   # doctest: +SKIP
    """

    def __init__(self, model: str, column: str = "image", output_column: str = "image_embedding",
                 device: str | None = None, dtype: str | None = None, batch_size: int = 32,
                 on_error: str = "raise", threads: int | None = None) -> None:
        if on_error not in ("raise", "drop"):
            raise InputError(f"on_error must be 'raise' or 'drop', got {on_error!r}.")
        super().__init__(model, column, output_column, device, dtype, batch_size)
        self.on_error = on_error
        self.decodes = Lane(threads or POOL_SIZE_LIMIT)  # on clipfast's one thread pool

    def __call__(self, batch: Any) -> Any:
        import numpy as np

        columns, as_pandas = self._table(batch)
        images = ordered_map(load_one, list(columns[self.column]), lane=self.decodes)
        bad = [i for i, image in enumerate(images) if isinstance(image, ImageLoadError)]
        if bad and self.on_error == "raise":
            raise images[bad[0]]
        if bad:
            keep = np.ones(len(images), dtype=bool)
            keep[bad] = False
            columns = {name: values[keep] if isinstance(values, np.ndarray) else
                       [v for v, k in zip(values, keep) if k] for name, values in columns.items()}
            images = [image for image, k in zip(images, keep) if k]
        return self._out(columns, self._embed_in_batches(self.clip.image_embeddings, images), as_pandas)


class EmbedTexts(_Embed):
    """``ds.map_batches(EmbedTexts, fn_constructor_kwargs={"model": ...}, ...)``: adds ``text_embedding`` (float32,
    L2-normalised) for the ``text`` column, keeping every other column; tokenized and embedded as ``clipfast
    embed`` does.

    Example:
        >>> ds.map_batches(EmbedTexts, fn_constructor_kwargs={"model": "openai/clip-vit-base-patch32"},
        ...                compute=ray.data.ActorPoolStrategy(size=2))               # doctest: +SKIP
    """

    def __init__(self, model: str, column: str = "text", output_column: str = "text_embedding",
                 device: str | None = None, dtype: str | None = None, batch_size: int = 256) -> None:
        super().__init__(model, column, output_column, device, dtype, batch_size)

    def __call__(self, batch: Any) -> Any:
        columns, as_pandas = self._table(batch)
        texts = [str(text) for text in columns[self.column]]
        return self._out(columns, self._embed_in_batches(self.clip.text_embeddings, texts), as_pandas)


# ---------------------------------------------------------------------------------------------------------------
# the engine


class _PartitionActor:
    """A model actor of the engine: each call gets one partition (as JSON) and writes its part file."""

    def __init__(self, model: str, out: str, columns: list[str], device: str | None, dtype: str | None,
                 batch_size: int, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.embedder = PartitionEmbedder(model, out, columns, device=device, dtype=dtype, batch_size=batch_size,
                                          decode_threads=threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        summaries = [self.embedder(Partition.from_dict(json.loads(spec))) for spec in batch["partition"]]
        return {key: [s[key] for s in summaries] for key in ("partition", "rows", "embedded", "failed")}


def embed_ray(plan: Plan, out: str, model: str, address: str | None = None, workers: int | None = None,
              cpus_per_worker: int | None = None, device: str | None = None, dtype: str | None = None,
              batch_size: int = 32, debug: bool = False, progress: bool = True) -> dict[str, int]:
    """Embed ``plan`` into ``out`` on Ray; returns the counts of the whole output (this run and earlier ones).

    ``address``: None starts an embedded Ray on this machine (never a cluster already running here); "auto",
    "HOST:PORT" or "ray://HOST:PORT" (or ``RAY_ADDRESS``) joins a cluster, whose nodes must all see ``out`` and the
    sources. ``workers`` model actors (default: one per GPU, else one per node) each take a GPU when the cluster
    has them, and ``cpus_per_worker`` CPUs (default: the cluster's CPUs shared out) for decoding and, without a
    GPU, the model.

    Example:
        >>> embed_ray(plan_sources(["photos/"]), "out", "openai/clip-vit-base-patch32", workers=2)  # doctest: +SKIP
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    model = os.path.abspath(model) if os.path.exists(model) else model  # actors run in other folders
    meta = output_meta(model, dim=_projection_dim(model), model_dtype=dtype or "float32")
    with _quiet(debug) as stderr, _session(address, debug, stderr) as ray:
        ray.data.DataContext.get_current().enable_progress_bars = debug
        ray.data.DataContext.get_current().print_on_execution_start = debug
        with output_lock(out):
            todo = prepare_output(out, plan, meta)
            if todo:
                _run(ray, todo, out, model, plan.columns, workers, cpus_per_worker, device, dtype, batch_size,
                     Progress(rows_of(todo), stream=stderr) if progress else None)
            return finish_output(out, plan, meta)


def _run(ray: Any, todo: list[Partition], out: str, model: str, columns: list[str], workers: int | None,
         cpus_per_worker: int | None, device: str | None, dtype: str | None, batch_size: int,
         bar: Progress | None) -> None:
    """Stream the partitions through a pool of model actors, counting their summaries as they come back."""
    workers, num_cpus, num_gpus = actor_resources(ray.cluster_resources(), _alive_nodes(ray), workers,
                                                  cpus_per_worker)
    workers = min(workers, len(todo))
    items = [{"partition": json.dumps(part.to_dict())} for part in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _PartitionActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=num_cpus, num_gpus=num_gpus,
        fn_constructor_kwargs=dict(model=model, out=os.path.abspath(out), columns=columns, device=device,
                                   dtype=dtype, batch_size=batch_size, threads=int(num_cpus)))
    try:
        for row in ds.iter_rows():
            if bar is not None:
                bar.update(int(row["embedded"]), int(row["failed"]))
    except ray.exceptions.RayError as exc:  # a partition failed for good: its cause, on one line
        raise ClipfastError(f"The Ray job stopped: {_cause(exc)}. Finished part files are kept; rerun the same "
                            "command to resume (--debug shows Ray's own output).") from None
    if bar is not None:
        bar.close()


def _cause(exc: BaseException) -> str:
    """The last 'SomeError: message' line of a Ray error (whose text holds the remote traceback), or its first."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if ": " in line and line.split(":", 1)[0].rsplit(".", 1)[-1].endswith(
        ("Error", "Exception"))]
    return (errors[-1] if errors else lines[0] if lines else type(exc).__name__)[:500]


def actor_resources(cluster: dict[str, float], nodes: int, workers: int | None,
                    cpus_per_worker: int | None) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each). With GPUs: one actor per GPU by default, each with one GPU and an equal share
    of the CPUs for decoding. Without: one actor per node, each with its share of the CPUs (the model and the
    decoding threads run in them).

    Example:
        >>> actor_resources({"CPU": 64.0, "GPU": 8.0}, nodes=1, workers=None, cpus_per_worker=None)
        (8, 8, 1)
    """
    gpus, cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.")
    if workers is None:
        workers = gpus or max(1, nodes)
    if gpus and workers > gpus:
        raise InputError(f"--workers {workers} asks for more model actors than the cluster has GPUs ({gpus}); each "
                         "actor takes one GPU.")
    each = cpus_per_worker or max(1, cpus // workers)
    if each * workers > max(cpus, 1):
        raise InputError(f"{workers} workers of {each} CPUs need {each * workers} CPUs; the cluster has {cpus}. "
                         "Lower --workers or --cpus-per-worker.")
    return workers, each, 1 if gpus else 0


def _alive_nodes(ray: Any) -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _projection_dim(model: str) -> int:
    """The embedding size, from the model's config when it has one (no weights read on the driver)."""
    try:
        from clipfast.auto import AutoConfig

        return int(AutoConfig.from_pretrained(model).projection_dim)
    except (ClipfastError, OSError, ValueError, AttributeError):  # an OpenAI / open_clip file: read it whole
        return int(load_model(model, device="cpu").model.config.projection_dim)


# ---------------------------------------------------------------------------------------------------------------
# connecting quietly


@contextlib.contextmanager
def _quiet(debug: bool) -> Iterator[Any]:
    """Unless ``debug``: everything written to file descriptor 2 while Ray runs (its Python loggers, Ray Data's
    messages, the C++ core worker, the processes it starts) goes to a temporary file, removed afterwards, and the
    caller gets a stream on the real stderr for its own lines. Ray's own switches (``log_to_driver``,
    ``logging_level``) leave some lines through, hence this."""
    if debug:
        yield sys.stderr
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}  # the driver prints workers' failures on stdout
    log = tempfile.NamedTemporaryFile(prefix="clipfast-ray-", suffix=".log", delete=False)
    for fd in saved:
        os.dup2(log.fileno(), fd)
    stream = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                       errors="replace")
    try:
        yield stream
    finally:
        stream.close()
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        log.close()
        os.unlink(log.name)


@contextlib.contextmanager
def _session(address: str | None, debug: bool, stderr: Any) -> Iterator[Any]:
    """ray.init for this run, and ray.shutdown after it (which stops an embedded Ray's processes)."""
    ray = _ray()
    if ray.is_initialized():  # a caller's own session (a notebook): use it as it is
        yield ray
        return
    if address is not None:
        _check_reachable(address)
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=debug, configure_logging=debug,
                                  logging_level=logging.INFO if debug else logging.ERROR)
    if not debug:
        _silence_loggers()
    _init_with_deadline(ray, address or "local", kwargs, stderr)
    try:
        yield ray
    finally:
        ray.shutdown()


def _silence_loggers() -> None:
    """Ray's Python loggers: errors only, and a handler of their own (else Python's last-resort handler prints
    their warnings); Ray Data re-adds its console handler per dataset, hence the level on the logger too."""
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())


def _check_reachable(address: str) -> None:
    """Fail at once, in one line, when nothing listens at ``HOST:PORT`` or ``ray://HOST:PORT`` ("auto" is checked
    by Ray itself, which fails fast when no cluster runs here)."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
            pass
    except OSError as exc:
        raise InputError(f"No Ray cluster answers at {address} ({exc.strerror or exc}); start one with `ray start "
                         "--head` or fix --address / RAY_ADDRESS.") from None


def _init_with_deadline(ray: Any, address: str, kwargs: dict[str, Any], stderr: Any) -> None:
    """ray.init, or one line and exit code 1 after CONNECT_TIMEOUT seconds (ray.init cannot be interrupted and
    keeps retrying an address where something listens but no cluster answers)."""
    if address == "local":  # starting our own: no deadline (a busy machine may take a while)
        env_address = os.environ.pop("RAY_ADDRESS", None)
        try:
            ray.init(address=address, **kwargs)
        finally:
            if env_address is not None:
                os.environ["RAY_ADDRESS"] = env_address
        return
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(CONNECT_TIMEOUT):
            stderr.write(f"clipfast: error: no Ray cluster answered at {address} within {CONNECT_TIMEOUT:.0f} s; "
                         "check --address / RAY_ADDRESS (and RAY_AUTH_TOKEN if the cluster uses token "
                         "authentication).\n")
            stderr.flush()
            os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        hint = "" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else (
            " If the cluster uses token authentication (`ray start` turns it on by default), set RAY_AUTH_MODE=token "
            "and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token.")
        raise InputError(f"Cannot join the Ray cluster at {address}: {' '.join(str(exc).split())}.{hint}") from None
    except RuntimeError as exc:  # token authentication refused, version mismatch, ...
        raise InputError(f"Cannot start or join Ray at {address}: {' '.join(str(exc).split())}") from None
    finally:
        done.set()
