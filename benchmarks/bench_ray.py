"""Bulk embedding of a JPEG folder: ``--engine ray`` vs the single-process engine vs transformers' plain loop.

Each candidate is a whole job, model loading included, on the same folder and the same full-size random ViT-B/32
weights, interleaved round by round:

- local: ``clipfast.bulk.embed_local`` (what ``clipfast embed DIR --out OUT --format parquet`` runs);
- ray: ``clipfast.ray.embed_ray`` on an embedded local Ray started once (its start-up is reported apart: a
  cluster is started once per job, whatever its size);
- transformers: PIL open -> ``CLIPImageProcessor`` -> ``CLIPModel.get_image_features`` -> normalise, batch by batch.

Then a two-node cluster (a head and one worker node, ``ray start --block`` on this machine) is started and
``clipfast embed --engine ray --address 127.0.0.1:PORT --workers 2`` runs on it, to show that ``--address`` works.

    python benchmarks/bench_ray.py [--images 256] [--batch-size 32] [--repeats 2] [--no-cluster]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import make_checkpoint  # noqa: E402
from bench_pipeline import make_photos  # noqa: E402
from common import interleaved, report  # noqa: E402


def model_folder(root: Path) -> Path:
    """Full-size random B/32 weights with clipfast's tokenizer files and the default 224 px preprocessing."""
    from clipfast import CLIPImageProcessor
    from clipfast.tokenization_fast import CLIPTokenizerFast

    path = make_checkpoint(root, "B/32")
    CLIPTokenizerFast.from_openai_vocab().save_pretrained(path)
    CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}).save_pretrained(path)
    return path


def transformers_loop(model_path: Path, paths: list[str], batch: int) -> None:
    import torch
    import transformers
    from PIL import Image

    model = transformers.CLIPModel.from_pretrained(model_path).eval()
    processor = transformers.CLIPImageProcessor.from_pretrained(model_path)
    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            images = [Image.open(p).convert("RGB") for p in paths[start:start + batch]]
            features = model.get_image_features(**processor(images=images, return_tensors="pt"))
            (features / features.norm(dim=-1, keepdim=True)).numpy()


def fresh(root: Path) -> str:
    out = Path(tempfile.mkdtemp(dir=root))
    shutil.rmtree(out)
    return str(out)


def two_node_cluster(root: Path, model: Path, folder: Path, batch: int) -> dict[str, object]:
    """Start a head and a worker node (one CPU each), run the CLI on them, stop them; the row for the table."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_cli = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    head = subprocess.Popen([*ray_cli, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            time.sleep(0.5)
        worker = subprocess.Popen([*ray_cli, "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(15)  # the worker node registers
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "clipfast", "embed", str(folder), "--out", fresh(root),
                                 "--model", str(model), "--engine", "ray", "--address", f"127.0.0.1:{port}",
                                 "--workers", "2", "--cpus-per-worker", "1", "--batch-size", str(batch),
                                 "--partition-size", "32"], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        print(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "(no output)", file=sys.stderr)
        count = len(list(folder.glob("*.jpg")))
        return {"engine": "ray, head + 1 worker node (--address, 2 actors x 1 CPU, CLI incl. driver start)",
                "seconds": seconds, "img/s": count / seconds if result.returncode == 0 else float("nan"),
                "vs local": float("nan")}
    finally:
        for node in (worker, head):
            if node is not None:
                node.send_signal(signal.SIGTERM)
        for node in (worker, head):
            if node is not None:
                node.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-cluster", action="store_true", help="skip the two-node cluster run")
    args = parser.parse_args()

    import logging

    import ray

    from clipfast import bulk
    from clipfast.ray import embed_ray

    root = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        folder = root / "jpegs"
        folder.mkdir()
        paths = make_photos(folder, args.images)
        model = model_folder(root)
        plan = bulk.plan_sources([str(folder)], partition_size=32)

        started = time.perf_counter()
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        ray_start = time.perf_counter() - started
        times = interleaved({
            "local": lambda: bulk.embed_local(plan, fresh(root), str(model), batch_size=args.batch_size,
                                              progress=False),
            "ray": lambda: embed_ray(plan, fresh(root), str(model), workers=1, batch_size=args.batch_size,
                                     progress=False),
            "transformers": lambda: transformers_loop(model, paths, args.batch_size),
        }, repeats=args.repeats, warmup=0)
        ray.shutdown()
        rows = [{"engine": name, "seconds": seconds, "img/s": args.images / seconds,
                 "vs local": times["local"] / seconds} for name, seconds in times.items()]
        rows.append({"engine": "ray start-up (once per job, not in the row above)", "seconds": ray_start,
                     "img/s": float("nan"), "vs local": float("nan")})
        if not args.no_cluster:
            rows.append(two_node_cluster(root, model, folder, args.batch_size))
        print(f"\n{args.images} JPEGs 640x480, ViT-B/32 fp32 random weights, batch {args.batch_size}, "
              f"partitions of 32, model loading included; Ray overhead on one machine: "
              f"{(times['ray'] / times['local'] - 1) * 100:+.1f}%")
        report("bench_ray", rows)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
