"""The ``clipfast`` command line: each command parses its arguments, calls the library and prints.

Each command is an ``add_<name>_parser(subparsers)`` that builds its parser (help text from the command's
docstring) and a ``cmd_<name>(args) -> int`` that calls the library and prints. Heavy imports (torch, the model)
happen inside the commands, so ``clipfast --help`` is instant.

Exit codes: 0 ok, 1 failure or some inputs skipped, 2 usage error. Errors are one line on stderr
(``clipfast: error: ...``); pass ``--debug`` or set ``CLIPFAST_DEBUG=1`` for the traceback.

Example:
    $ clipfast classify examples/cat.jpg --labels cat dog car
    $ clipfast embed photos/ --out photos.index && clipfast search photos.index "a dog on a beach"
    $ clipfast info openai/clip-vit-base-patch32
    $ clipfast convert ViT-B-32.pt clip-vit-b32            # OpenAI .pt -> transformers folder
    $ clipfast convert clip-vit-b32 ViT-B-32.pt --to openai
"""

from __future__ import annotations

import argparse
import glob
import inspect
import json
import math
import os
import sys
import warnings
from contextlib import closing
from typing import Any, Callable, Iterable, Iterator, Sequence

from clipfast.constants import DEFAULT_MODEL, DEFAULT_TEMPLATE, IMAGE_EXTENSIONS
from clipfast.errors import ClipfastError, ImageLoadError, InputError
from clipfast.workers import POOL_SIZE_LIMIT, Lane, cpu_count, results_in_order, run_ahead

MODEL_ENV = "CLIPFAST_MODEL"
DEBUG_ENV = "CLIPFAST_DEBUG"
DTYPES = ("float32", "float16", "bfloat16", "auto")
_CLASSIFY_CHUNK = 256  # images decoded and held in memory at once by classify


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit code 2) instead of the usage block plus the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------------------------------------------------------
# helpers shared by the commands


def _warn(message: str) -> None:
    print(f"clipfast: warning: {message}", file=sys.stderr)


def _one_line(message: Any) -> str:
    """Collapse a message onto one line, so every error is one line however the library wrapped it."""
    return " ".join(str(message).split())


def _add_model_options(parser: argparse.ArgumentParser, batch_size: int = 32) -> None:
    parser.add_argument("--model", default=None,
                        help=f"hub id, local folder or checkpoint file (default: ${MODEL_ENV} or {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype (default: float32)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"images per batch (default: {batch_size})")


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_ENV}=1)")


def _model_name(args: argparse.Namespace) -> str:
    return args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def _load_pipeline(model: str, args: argparse.Namespace) -> Any:
    """The zero-shot pipeline on the asked device and dtype; its model, tokenizer and embedding helpers serve
    every command."""
    import torch

    import clipfast

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return clipfast.pipeline("zero-shot-image-classification", model=model, device=device, torch_dtype=args.dtype)


def _check_batch_size(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        args.parser.error(f"--batch-size must be at least 1, got {args.batch_size}")


def image_sources(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """Expand files, folders (recursively, image extensions only), globs and URLs into image sources, in order,
    without repeats. Returns (sources, items that matched nothing)."""
    found: list[str] = []
    missing: list[str] = []
    for item in items:
        if item.startswith(("http://", "https://")) or os.path.isfile(item):
            found.append(item)
        elif os.path.isdir(item):
            found.extend(_walk_images(item))
        elif glob.has_magic(item) and (matches := sorted(glob.glob(item, recursive=True))):
            for match in matches:
                found.extend(_walk_images(match) if os.path.isdir(match) else [match])
        else:
            missing.append(item)
    return list(dict.fromkeys(os.path.normpath(s) if "://" not in s else s for s in found)), missing


def _walk_images(folder: str) -> list[str]:
    """Image files under ``folder``, sorted so runs are repeatable."""
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        paths.extend(os.path.join(root, name) for name in sorted(files)
                     if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)
    return paths


def _gather_images(items: list[str]) -> tuple[list[str], int]:
    """Image sources from the command line; warns about items that match nothing; fails when none is left."""
    sources, missing = image_sources(items)
    if not sources:
        raise InputError(f"No images found in {', '.join(map(repr, items))}: give image files, folders, globs "
                         "or http(s) URLs.")
    for item in missing:
        _warn(f"skipped {item!r}: no such file, folder or glob match")
    return sources, len(missing)


def _load_one(source: str) -> Any:
    """The image, or the ImageLoadError that explains why it cannot be read."""
    from clipfast.image_io import load_image

    try:
        return load_image(source)
    except ImageLoadError as exc:
        return exc


def _loaded_chunks(sources: list[str], size: int) -> Iterator[tuple[list[tuple[str, Any]], int]]:
    """Yield ([(source, image)], skipped) per chunk of ``size`` sources, decoding the next chunk on a thread pool
    while the caller works on this one. Unreadable images are skipped with a warning."""
    lane = Lane(min(POOL_SIZE_LIMIT, cpu_count()))  # up to 16 decodes at once on the shared pool
    chunks = (sources[i:i + size] for i in range(0, len(sources), size))
    with closing(run_ahead(chunks, lambda chunk: ([lane.submit(_load_one, s) for s in chunk], None), 1)) as jobs:
        for chunk, (futures, _) in jobs:
            loaded = []
            for source, result in zip(chunk, results_in_order(futures)):
                if isinstance(result, ImageLoadError):
                    _warn(f"skipped: {_one_line(result)}")
                else:
                    loaded.append((source, result))
            yield loaded, len(chunk) - len(loaded)


def _report_skipped(skipped: int, total: int) -> int:
    """Exit code for a run that skipped ``skipped`` of ``total`` inputs, with a closing count on stderr."""
    if skipped:
        print(f"clipfast: {skipped} of {total} inputs skipped (see the warnings above)", file=sys.stderr)
    return 1 if skipped else 0


# ---------------------------------------------------------------------------------------------------------------
# classify


def cmd_classify(args: argparse.Namespace) -> int:
    """Label images with free-text candidate labels (zero-shot classification).

    IMAGES are files, folders (searched recursively), globs or http(s) URLs. Prints a table, or one JSON object
    per image with --json. Example: clipfast classify photos/ --labels cat dog car
    """
    _check_batch_size(args)
    labels = [label.strip() for label in args.labels[0].split(",")] if len(args.labels) == 1 else args.labels
    if not all(labels):
        args.parser.error("--labels needs non-empty labels, e.g. --labels cat dog car")
    if "{}" not in args.template or not _fills_one_slot(args.template):
        args.parser.error(f"--template must contain {{}} where the label goes, once and with no other {{...}} "
                          f"fields (write {{{{ and }}}} for literal braces), e.g. {DEFAULT_TEMPLATE!r}")
    if args.top_k < 1:
        args.parser.error(f"--top-k must be at least 1, got {args.top_k}")
    sources, skipped = _gather_images(args.images)
    total = len(sources) + skipped
    clip = _load_pipeline(_model_name(args), args)
    width = max(len("image"), *(len(s) for s in sources))
    if not args.json:
        print(f"{'image':<{width}}  {'score':>6}  label")
    text_embeds = clip.text_embeddings([args.template.format(label) for label in labels])  # once for all chunks
    for loaded, bad in _loaded_chunks(sources, _CLASSIFY_CHUNK):
        skipped += bad
        if not loaded:
            continue
        results = clip.classify([image for _, image in loaded], labels, args.template, args.top_k, args.batch_size,
                                text_embeds=text_embeds)
        for (source, _), ranked in zip(loaded, results):
            _print_ranked(source, ranked, width, args.json)
    return _report_skipped(skipped, total)


def _fills_one_slot(template: str) -> bool:
    """Whether ``template.format(label)`` works: one positional field, no named or numbered ones."""
    try:
        template.format("label")
    except (KeyError, IndexError, ValueError):
        return False
    return True


def _print_ranked(source: str, ranked: list[dict], width: int, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"image": source, "results": ranked}, ensure_ascii=False), flush=True)
        return
    for rank, item in enumerate(ranked):
        print(f"{source if rank == 0 else '':<{width}}  {item['score']:6.4f}  {item['label']}")
    sys.stdout.flush()


def add_classify_parser(subparsers: Any) -> None:
    parser = _subparser(subparsers, "classify", cmd_classify)
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders, globs or URLs")
    parser.add_argument("--labels", nargs="+", required=True, metavar="LABEL",
                        help="candidate labels, e.g. --labels cat dog car (or one comma-separated string)")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE,
                        help=f"sentence each label is put in (default: {DEFAULT_TEMPLATE!r})")
    parser.add_argument("--top-k", type=int, default=5, help="labels shown per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    _add_model_options(parser)


# ---------------------------------------------------------------------------------------------------------------
# embed


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed images or texts into an index folder: embeddings.npy (L2-normalised float32), ids.jsonl, meta.json.

    Resumable: run the same command again (after a crash, a kill, or with new files) and only what is missing is
    embedded. Unreadable images are skipped with a warning. With --out NAME.parquet (needs pyarrow) a Parquet
    file is written too, beside its resumable index folder NAME.parquet.index.

    Parquet tables (.parquet/.csv of image paths or URLs), webdataset shards (.tar, with {000..099} patterns),
    --format parquet or --engine ray write a Parquet dataset instead: DIR/part-*.parquet (id, image_embedding,
    text_embedding, the table's columns), DIR/_clipfast.json and DIR/_errors.parquet; rerunning resumes it.
    --engine ray runs on an embedded local Ray, or joins a cluster with --address (pip install 'clipfast[ray]').
    Example: clipfast embed photos/ --out photos.index
    Example: clipfast embed urls.parquet --text-column caption --out DIR --engine ray --workers 2
    """
    _check_batch_size(args)
    if _parquet_output(args):
        return _embed_parquet(args)
    from clipfast.index import IndexWriter, expand_ids, open_index, write_parquet

    texts = _texts(args)
    if texts is not None and args.images:
        args.parser.error("give IMAGES or --text / --text-file, not both")
    if texts is None and not args.images:
        args.parser.error("give IMAGES to embed, or --text / --text-file")
    parquet = args.out.endswith(".parquet")
    folder = args.out + ".index" if parquet else args.out
    if parquet:
        _require_pyarrow()
    kind = "text" if texts is not None else "image"
    items, missing = (expand_ids(texts), 0) if texts is not None else _gather_images(args.images)
    model = _model_name(args)
    clip = _load_pipeline(model, args)
    meta = {"model": os.path.abspath(model) if os.path.exists(model) else model, "kind": kind,
            "dim": int(clip.model.config.projection_dim), "model_dtype": str(clip.model.dtype).removeprefix("torch.")}
    with IndexWriter(folder, meta) as writer:
        todo = [item for item in items if item not in writer.done]
        skipped = _embed_into(writer, clip, todo, kind, args.batch_size, len(items))
        stored = writer.rows
    if parquet:
        write_parquet(open_index(folder), args.out)
    print(f"clipfast: {stored} embeddings in {args.out} ({len(todo) - skipped} new)", file=sys.stderr)
    return _report_skipped(skipped + missing, len(items) + missing)


def _embed_into(writer: Any, clip: Any, todo: list[str], kind: str, batch_size: int, total: int) -> int:
    """Embed ``todo`` chunk by chunk into ``writer`` with a progress bar; returns how many were skipped."""
    from tqdm import tqdm

    skipped = 0
    with tqdm(total=total, initial=total - len(todo), unit=kind, file=sys.stderr, disable=None) as bar:
        if kind == "text":
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                writer.append(chunk, clip.text_embeddings(chunk).float().cpu().numpy())
                bar.update(len(chunk))
            return 0
        for loaded, bad in _loaded_chunks(todo, batch_size):
            skipped += bad
            if loaded:
                vectors = clip.image_embeddings([image for _, image in loaded])
                writer.append([source for source, _ in loaded], vectors.float().cpu().numpy())
            bar.update(len(loaded) + bad)
    return skipped


def _texts(args: argparse.Namespace) -> list[str] | None:
    """Texts from --text and --text-file (one per line, blank lines ignored; '-' reads stdin), or None."""
    if args.text is None and args.text_file is None:
        return None
    texts = list(args.text or [])
    if args.text_file is not None:
        if args.text_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.text_file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        texts.extend(line.strip() for line in lines if line.strip())
    if not texts:
        raise InputError("No texts to embed: --text-file is empty.")
    return texts


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError("Writing Parquet needs pyarrow: run `pip install pyarrow`, or give --out a folder "
                         "for .npy + .jsonl.") from None


def _parquet_output(args: argparse.Namespace) -> bool:
    """Whether this run writes a Parquet dataset (tables, shards, --engine ray, --format parquet, or an --out that
    already holds one) rather than the index folder."""
    from clipfast.bulk import META_NAME, SHARD_EXTENSIONS, TABLE_EXTENSIONS

    if args.format != "auto":
        wants = args.format == "parquet"
        if not wants and args.engine == "ray":
            args.parser.error("--engine ray writes a Parquet dataset: drop --format index")
        return wants
    bulk_sources = any(item.lower().split("?")[0].endswith(SHARD_EXTENSIONS) or (
        item.lower().endswith(TABLE_EXTENSIONS) and os.path.isfile(item)) for item in args.images)
    return args.engine == "ray" or bulk_sources or os.path.isfile(os.path.join(args.out, META_NAME))


def _embed_parquet(args: argparse.Namespace) -> int:
    """embed into a Parquet dataset, with the single-process engine or on Ray; one summary line."""
    from clipfast import bulk

    if args.text is not None or args.text_file is not None:
        args.parser.error("--text / --text-file write the index folder; for a Parquet dataset give a table with "
                          "--text-column")
    if not args.images:
        args.parser.error("give SOURCES to embed: image files, folders, globs, URLs, .parquet/.csv tables or .tar "
                          "shards")
    if args.engine != "ray" and (args.address or args.workers or args.cpus_per_worker):
        args.parser.error("--address, --workers and --cpus-per-worker need --engine ray")
    plan = bulk.plan_sources(args.images, args.image_column, args.text_column, args.id_column, args.partition_size)
    model = _model_name(args)
    if args.engine == "ray":
        from clipfast.ray import embed_ray

        debug = args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
        counts = embed_ray(plan, args.out, model, address=args.address, workers=args.workers,
                           cpus_per_worker=args.cpus_per_worker, device=args.device, dtype=args.dtype,
                           batch_size=args.batch_size, debug=debug)
    else:
        counts = bulk.embed_local(plan, args.out, model, device=args.device, dtype=args.dtype,
                                  batch_size=args.batch_size)
    print(f"clipfast: {counts['embedded']} embedded, {counts['failed']} failed -> {args.out}"
          + (f" (see {os.path.join(args.out, bulk.ERRORS_NAME)})" if counts["failed"] else ""), file=sys.stderr)
    return 1 if counts["failed"] else 0


def add_embed_parser(subparsers: Any) -> None:
    parser = _subparser(subparsers, "embed", cmd_embed)
    parser.add_argument("images", nargs="*", metavar="IMAGES", help="image files, folders, globs or URLs")
    parser.add_argument("--text", nargs="+", default=None, metavar="TEXT", help="texts to embed")
    parser.add_argument("--text-file", default=None, metavar="FILE", help="texts to embed, one per line ('-': stdin)")
    parser.add_argument("--out", required=True, help="index folder (or NAME.parquet, with pyarrow)")
    _add_model_options(parser)
    bulk = parser.add_argument_group("Parquet datasets, tables, shards and Ray")
    bulk.add_argument("--format", choices=("auto", "index", "parquet"), default="auto",
                      help="auto (default): a Parquet dataset for tables, shards, --engine ray or an existing "
                           "Parquet output, else the index folder; index; parquet")
    bulk.add_argument("--engine", choices=("local", "ray"), default="local",
                      help="local: this process (default); ray: Ray Data actors (pip install 'clipfast[ray]')")
    bulk.add_argument("--address", default=None,
                      help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS, else an "
                           "embedded local Ray)")
    bulk.add_argument("--workers", type=int, default=None,
                      help="model actors (default: one per GPU, else one per node); each takes a GPU when there are "
                           "some")
    bulk.add_argument("--cpus-per-worker", type=int, default=None,
                      help="CPUs each actor reserves for decoding (and the model without a GPU); default: the "
                           "cluster's CPUs shared out")
    bulk.add_argument("--image-column", default=None,
                      help="tables: the column of image paths or URLs (default: the first of url, image, path)")
    bulk.add_argument("--text-column", default=None,
                      help="tables: a column of texts to embed too (shards: 'caption' embeds the captions)")
    bulk.add_argument("--id-column", default=None,
                      help="tables: the id column (default: id if there is one, else the path or URL as written)")
    bulk.add_argument("--partition-size", type=int, default=None,
                      help="rows per part file for files and tables (default: about 100 parts, 100-10,000 rows "
                           "each); a shard is one part")


# ---------------------------------------------------------------------------------------------------------------
# search


def cmd_search(args: argparse.Namespace) -> int:
    """Find the indexed items most similar to a text or an image (cosine similarity, best first).

    INDEX is what `clipfast embed --out` wrote (embeddings.npy or a Parquet dataset). The query is embedded with
    the model recorded in the index (override with --model). Uses the FAISS index built by `clipfast index` when
    there is one (scores are still exact cosines of the stored vectors); --exact scans every vector instead.
    Prints score and id (path or text), best first; --json adds the passed-through metadata columns.
    Example: clipfast search photos.index "a dog on a beach"
    """
    from clipfast.index import open_index

    if (args.query is None) == (args.image is None):
        args.parser.error('give a text QUERY or --image FILE, e.g. clipfast search INDEX "a dog on a beach"')
    if args.top_k < 1:
        args.parser.error(f"--top-k must be at least 1, got {args.top_k}")
    index = open_index(args.index + ".index" if args.index.endswith(".parquet") else args.index,
                       column=args.column)
    clip = _load_pipeline(args.model or index.meta["model"], args)
    if args.image is not None:
        from clipfast.image_io import load_image

        query = clip.image_embeddings([load_image(args.image)])
    else:
        query = clip.text_embeddings([args.query])
    query = query.float().cpu().numpy()[0]
    if query.shape[0] != index.dim:
        raise InputError(f"The query embedding has {query.shape[0]} dimensions but the index has "
                         f"{index.dim}: use the index's model ({index.meta.get('model')!r}).")
    for hit in index.search_records(query, args.top_k, exact=args.exact):
        print(json.dumps(hit, ensure_ascii=False, default=str) if args.json else f"{hit['score']:.4f}  {hit['id']}")
    return 0


def add_search_parser(subparsers: Any) -> None:
    parser = _subparser(subparsers, "search", cmd_search)
    parser.add_argument("index", metavar="INDEX", help="folder written by `clipfast embed --out`")
    parser.add_argument("query", nargs="?", default=None, metavar="QUERY", help="text to search for")
    parser.add_argument("--image", default=None, help="search with an image instead of a text")
    parser.add_argument("--top-k", type=int, default=10, help="results to print (default: 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per result")
    parser.add_argument("--exact", action="store_true", help="scan every vector, ignoring the FAISS index")
    parser.add_argument("--column", default=None,
                        help="embedding column of a Parquet dataset (default: image_embedding)")
    _add_model_options(parser, batch_size=1)


# ---------------------------------------------------------------------------------------------------------------
# index


def cmd_index(args: argparse.Namespace) -> int:
    """Build a FAISS index for fast approximate search of an embedding folder (needs the [faiss] extra).

    The index kind is chosen from the number of vectors and --memory (the bound on the index files; MB and GB
    mean MiB and GiB), its search parameters tuned until recall@10 against exact search reaches --recall.
    Writes DIR/index.faiss (DIR/index.<column>.faiss per embedding column) and DIR/index.json.
    Example: clipfast index photos.index --memory 1GB
    """
    from clipfast.index import build

    folder = args.folder + ".index" if args.folder.endswith(".parquet") else args.folder
    data = build(folder, memory=args.memory, kind=args.kind, recall=args.recall, column=args.column,
                 log=None if args.quiet else (lambda line: print(f"clipfast: {line}", file=sys.stderr)))
    short = True
    for key, record in data["indexes"].items():
        if args.column is not None and record.get("column") != args.column:
            continue
        short = short and record["recall_reached"]
        print(json.dumps({"file": record["file"], "factory": record["factory"], "rows": record["rows"],
                          "bytes": record["file_bytes"], "search": record["search"], "recall@1": record["recall@1"],
                          "recall@10": record["recall@10"], "seconds": record["build_seconds"]["total"]}))
        if not record["recall_reached"]:
            _warn(f"{record['file']}: recall@10 {record['recall@10']} is below --recall {args.recall} at the "
                  "largest search parameters; raise --memory for a larger index")
    return 0 if short else 1


def add_index_parser(subparsers: Any) -> None:
    parser = _subparser(subparsers, "index", cmd_index)
    parser.add_argument("folder", metavar="DIR", help="folder written by `clipfast embed --out`")
    parser.add_argument("--memory", default="4GB", help="bound on the index files' size (default: 4GB)")
    parser.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivf", "ivfpq"),
                        help="index kind (default: auto, from the size and --memory)")
    parser.add_argument("--recall", type=float, default=0.95, help="recall@10 to tune for (default: 0.95)")
    parser.add_argument("--column", default=None, help="index only this embedding column of a Parquet dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


# ---------------------------------------------------------------------------------------------------------------
# info


def cmd_info(args: argparse.Namespace) -> int:
    """Show a model's architecture, parameter count, dtype, files and where it was loaded from.

    MODEL is a hub id, a local folder or a checkpoint file (default: $CLIPFAST_MODEL or
    openai/clip-vit-base-patch32). Example: clipfast info openai/clip-vit-base-patch32
    """
    import clipfast

    if args.model and args.model_option and args.model != args.model_option:
        args.parser.error(f"two models given: {args.model!r} and --model {args.model_option!r}")
    source = args.model or args.model_option or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    model = clipfast.AutoModel.from_pretrained(source, torch_dtype="auto")
    where, files = _model_files(source)
    facts = {"model": source, "loaded from": where, **_architecture(model),
             "parameters": model.num_parameters(), "dtype": str(model.dtype).removeprefix("torch."),
             "attention": getattr(model.config, "_attn_implementation", None), "files": files}
    if args.json:
        print(json.dumps(facts, indent=2, ensure_ascii=False))
        return 0
    for key, value in facts.items():
        if key == "files":
            value = ", ".join(f"{name} ({_size(size)})" for name, size in value.items()) or "-"
        elif key == "parameters":
            value = f"{value:,}"
        print(f"{key + ':':<16}{value}")
    return 0


def _architecture(model: Any) -> dict[str, Any]:
    """Class, towers and embedding size, from the config."""
    config = model.config
    facts: dict[str, Any] = {"architecture": type(model).__name__}
    vision = getattr(config, "vision_config", None) or (config if hasattr(config, "patch_size") else None)
    text = getattr(config, "text_config", None) or (config if hasattr(config, "vocab_size") else None)
    if vision is not None:
        facts["vision"] = (f"ViT, {vision.image_size} px, patch {vision.patch_size}, {vision.num_hidden_layers} "
                           f"layers, width {vision.hidden_size}, {vision.num_attention_heads} heads")
    if text is not None:
        facts["text"] = (f"{text.num_hidden_layers} layers, width {text.hidden_size}, {text.num_attention_heads} "
                         f"heads, context {text.max_position_embeddings}, vocab {text.vocab_size}")
    if hasattr(config, "projection_dim"):
        facts["embedding dim"] = config.projection_dim
    return facts


def _model_files(source: str) -> tuple[str, dict[str, int]]:
    """Where the checkpoint lives (file, folder or hub cache snapshot) and its files with their sizes."""
    from clipfast import hub

    if os.path.isfile(source):
        return f"checkpoint file {os.path.abspath(source)}", {os.path.basename(source): os.path.getsize(source)}
    if os.path.isdir(source):
        folder, where = source, f"local folder {os.path.abspath(source)}"
    else:
        try:
            folder = os.path.dirname(hub.resolve_file(source, "config.json"))  # type: ignore[arg-type]
        except ClipfastError:  # a format clipfast.convert reads from the hub; its files are elsewhere
            return f"Hugging Face Hub ({source})", {}
        where = f"Hugging Face Hub, cached in {folder}"
    files = {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
             if os.path.isfile(os.path.join(folder, name)) and not name.startswith(".")}
    return where, files


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


def add_info_parser(subparsers: Any) -> None:
    parser = _subparser(subparsers, "info", cmd_info)
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="hub id, folder or checkpoint file")
    parser.add_argument("--model", dest="model_option", default=None, metavar="MODEL", help="the same, as an option")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")


# ---------------------------------------------------------------------------------------------------------------
# the parser and main


def _subparser(subparsers: Any, name: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A subcommand whose help is ``func``'s docstring (first line in the command list, all of it in --help)."""
    doc = inspect.cleandoc(func.__doc__ or "")
    parser = subparsers.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func, parser=parser)
    _add_debug(parser)
    return parser


def _format_warning(message: Any, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    return f"clipfast: warning: {_one_line(message)}\n"


# ---------------------------------------------------------------------------------------------------------------
# convert


def convert_command(args: argparse.Namespace) -> int:
    """Convert a checkpoint between OpenAI (.pt), open_clip and transformers formats."""
    from clipfast.convert import convert

    if os.path.exists(args.destination) and not args.force and (
            os.path.isfile(args.destination) or os.listdir(args.destination)):
        raise ClipfastError(f"{args.destination!r} already exists; pass --force to overwrite it.")
    hub_kwargs = {"revision": args.revision} if args.revision else {}
    paths = convert(args.source, args.destination, to=args.to, open_clip_config=args.open_clip_config,
                    **hub_kwargs)
    print(f"wrote {args.destination}: {', '.join(sorted(os.path.basename(p) for p in paths))}")
    return 0


def _add_convert(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert", help="convert a checkpoint (OpenAI .pt, open_clip, transformers) to another format",
        description="Convert a CLIP checkpoint. SOURCE is an OpenAI .pt (TorchScript archive or state dict), an "
                    "open_clip weights file (its config JSON beside it or given with --open-clip-config), an "
                    "open_clip folder or hub repo (hf-hub:org/name), or a transformers folder or hub id. No code "
                    "in the files is run.")
    parser.add_argument("source", help="checkpoint file, folder or hub id")
    parser.add_argument("destination", help="folder to write (a .pt file with --to openai)")
    parser.add_argument("--to", choices=("hf", "openai", "open_clip"), default="hf",
                        help="hf: a folder that clipfast and transformers load (default); openai: one .pt state "
                             "dict; open_clip: a hub-style folder (open_clip_config.json + weights)")
    parser.add_argument("--open-clip-config", metavar="JSON", help="open_clip model config of a weights file")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) of SOURCE")
    parser.add_argument("--force", action="store_true", help="overwrite DESTINATION if it exists")
    parser.set_defaults(func=convert_command, parser=parser)
    _add_debug(parser)


# ---------------------------------------------------------------------------------------------------------------
# serve


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve embeddings, zero-shot classification and (with --index) search over HTTP (JSON), with a web page.

    Endpoints: GET / (the page), GET /health, GET /info, POST /embed {"texts": [...], "images": [...]},
    POST /classify {"images": [...], "labels": [...]}, POST /v1/embeddings (OpenAI's request and response, for
    texts), and with --index DIR: POST /search {"text" | "image" | "embedding" | "row": ..., "k": 10}. Concurrent
    requests are batched: one model call per modality for up to --max-batch-size items, started at the latest
    --max-wait-ms after the first arrives. Images are base64 or data URIs; http(s) URLs only with --allow-urls;
    file paths never. Listens on 127.0.0.1 unless --host says otherwise. Ctrl-C or SIGTERM stops it after the
    requests in flight are answered.
    """
    import logging

    from clipfast.server import make_server, serve_until_stopped

    _check_batch_size(args)
    max_body = args.max_body_mb * 1024 * 1024
    if not 0 <= args.port <= 65535 or not (math.isfinite(max_body) and max_body >= 1) or args.max_items < 1:
        args.parser.error("--port must be 0-65535, --max-body-mb a positive number and --max-items at least 1")
    batch = args.max_batch_size if args.max_batch_size is not None else args.batch_size
    if batch < 1 or args.max_queue < 1 or not (math.isfinite(args.max_wait_ms) and 0 <= args.max_wait_ms <= 60000):
        args.parser.error("--max-batch-size and --max-queue must be at least 1, --max-wait-ms 0-60000")
    if args.index is not None and not os.path.isdir(args.index):
        args.parser.error(f"--index {args.index!r} is not a folder (an index written by `clipfast embed --out`)")
    model = _model_name(args)
    clip = _load_pipeline(model, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        server = make_server(clip, host=args.host, port=args.port, model_name=model, allow_urls=args.allow_urls,
                             max_body=int(max_body), max_items=args.max_items, max_batch_size=batch,
                             max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, index=args.index)
    except OSError as exc:
        raise ClipfastError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}.") from None
    host, port = server.server_address[:2]
    what = f"{model} and the index {args.index}" if args.index else model
    print(f"clipfast: serving {what} on http://{host}:{port} (Ctrl-C stops)", file=sys.stderr, flush=True)
    interrupted = serve_until_stopped(server)
    print("clipfast: stopped" if interrupted else "clipfast: stopped (SIGTERM)", file=sys.stderr)
    return 0


def add_serve_parser(subparsers: Any) -> None:
    from clipfast.batching import DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS  # (a light module: numbers only)

    parser = _subparser(subparsers, "serve", cmd_serve)
    _add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument("--index", metavar="DIR", help="an index folder to search (POST /search and the web page)")
    parser.add_argument("--allow-urls", action="store_true", help="fetch http(s) image URLs that clients send")
    parser.add_argument("--max-body-mb", type=float, default=64, help="largest request body (default: 64)")
    parser.add_argument("--max-items", type=int, default=1024,
                        help="most texts, images and labels per request (default: 1024)")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="most texts or images per model call, from all requests together (default: "
                             "--batch-size, 32; 1 turns batching off)")
    parser.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS,
                        help=f"how long a request waits for others to share its model call (default: "
                             f"{DEFAULT_MAX_WAIT_MS:g})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help=f"most texts or images waiting; beyond it requests get 503 + Retry-After (default: "
                             f"{DEFAULT_MAX_QUEUE})")


# further commands register themselves here: one _add_* function each
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_classify_parser, add_embed_parser, add_search_parser, add_index_parser, add_info_parser, _add_convert,
    add_serve_parser]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command."""
    from clipfast import __version__

    parser = _Parser(prog="clipfast", description="Exact, fast CLIP for PyTorch.",
                     epilog=f"Models: a hub id, a local folder or a checkpoint file (default: ${MODEL_ENV} or "
                            f"{DEFAULT_MODEL}). Run `clipfast COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"clipfast {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for usage errors, 1 for failures)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return int(exc.code or 0)
    if not hasattr(args, "func"):
        parser.print_usage(sys.stderr)
        print("clipfast: error: a command is required (see clipfast --help)", file=sys.stderr)
        return 2
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    previous_format, previous_verbosity = warnings.formatwarning, os.environ.get("HF_HUB_VERBOSITY")
    if not debug:
        warnings.formatwarning = _format_warning  # library warnings as one line, like our own
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # no multi-line retry logs before our one-line error
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("clipfast: interrupted", file=sys.stderr)
        return 130
    except (ClipfastError, OSError, ValueError) as exc:
        if debug:
            raise
        print(f"clipfast: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:  # main() may run inside a larger program (or pytest): leave its warnings and environment as found
        warnings.formatwarning = previous_format
        if previous_verbosity is None:
            os.environ.pop("HF_HUB_VERBOSITY", None)
        else:
            os.environ["HF_HUB_VERBOSITY"] = previous_verbosity
