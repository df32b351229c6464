"""``clipfast serve`` under load: concurrent clients on loopback, dynamic batching on and off.

    python benchmarks/bench_server.py [--clients 1 8 32 128] [--seconds 24] [--max-wait-ms MS] [--quick]

Two servers run as subprocesses (``clipfast serve``), one with the default batching and one with
``--max-batch-size 1`` (batching off); for each number of clients and each modality they are loaded in turn with
closed-loop clients (each sends its next request when its answer arrives): one image per request (a 320x240 JPEG,
base64), or one text per request (every text distinct, so that no batch merges equal texts). For each run:
requests/s, p50 and p99 latency, errors. The model's own throughput (``get_image_features`` /
``get_text_features`` on ready inputs at batch 32 and 1) is measured in this process before and after the load,
on the same machine, so the server's figures can be set against it.

The checkpoint is a full-size ViT-B/32 (clipfast.CLIPConfig() defaults) with random weights, written by clipfast
with OpenAI's tokenizer (the vocabulary shipped in clipfast) and the default CLIP image processor.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402


def make_folder(folder: Path) -> Path:
    """A full-size random ViT-B/32 folder: config, weights, tokenizer files, preprocessor config."""
    import torch

    import clipfast

    torch.manual_seed(0)
    path = folder / "clip"
    clipfast.CLIPModel(clipfast.CLIPConfig()).save_pretrained(path)
    clipfast.CLIPTokenizerFast.from_openai_vocab().save_pretrained(path)
    clipfast.CLIPImageProcessor().save_pretrained(path)
    return path


def photo_b64(seed: int = 0) -> str:
    """A photo-like 320x240 JPEG (smooth colour fields and noise), base64."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:240, 0:320] / 60.0
    base = np.stack([np.sin(x + rng.uniform(0, 6)) + np.cos(y * c) for c in (0.7, 1.1, 1.9)], -1)
    pixels = ((base - base.min()) / np.ptp(base) * 200 + rng.integers(0, 55, base.shape)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def start_server(model: Path, *options: str) -> tuple[subprocess.Popen, str, int]:
    """``clipfast serve`` on a free loopback port; (process, host, port) once it listens."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "clipfast", "serve", "--model", str(model), "--port", "0",
                             *options], env=env, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()}")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep its log drained
    host, port = line.split("http://")[1].split()[0].rsplit(":", 1)
    return proc, host, int(port)


def load(host: str, port: int, path: str, bodies, clients: int, warmup: float, seconds: float,
         method: str = "POST") -> dict[str, float]:
    """``clients`` closed-loop clients for ``warmup + seconds``; requests answered within the measured window
    give requests/s and latencies."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    begin = time.perf_counter() + warmup
    end = begin + seconds

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=600)
        count = 0
        while time.perf_counter() < end:
            body = bodies(number, count)
            count += 1
            started = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=600)
            finished = time.perf_counter()
            if begin <= finished <= end:
                with lock:
                    if ok:
                        latencies.append(finished - started)
                    else:
                        errors[0] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:  # requests still out long after the window count as unanswered (settle() waits)
        thread.join(max(0.0, end + seconds - time.perf_counter()))
    latencies.sort()
    pick = (lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else (
        lambda q: float("nan"))
    return {"req/s": len(latencies) / seconds, "p50 ms": pick(0.50), "p99 ms": pick(0.99), "errors": errors[0],
            "answered": len(latencies)}


def settle(servers: dict, timeout: float = 600.0) -> None:
    """Wait until no server has work pending, so that one run's leftovers do not load the next."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        busy = 0
        for _, host, port in servers.values():
            connection = http.client.HTTPConnection(host, port, timeout=600)
            connection.request("GET", "/info")
            batching = json.loads(connection.getresponse().read())["batching"]
            connection.close()
            busy += batching["text"]["pending"] + batching["image"]["pending"]
        if not busy:
            return
        time.sleep(0.5)


def batch_counters(host: str, port: int, modality: str) -> tuple[int, int]:
    """(model calls, items run) of one modality so far, from the server's /info."""
    connection = http.client.HTTPConnection(host, port, timeout=600)
    connection.request("GET", "/info")
    counters = json.loads(connection.getresponse().read())["batching"][modality]
    connection.close()
    return counters["calls"], counters["items"]


def model_throughput(model: Path, image: str, repeats: int = 3) -> dict[str, float]:
    """Items/s of the model itself on ready inputs (pixels, token ids), at batch 32 and 1 (median of repeats)."""
    import torch

    import clipfast
    from clipfast.image_io import load_image

    clip = clipfast.pipeline(model=str(model))
    picture = load_image(base64.b64decode(image))
    out = {}
    with torch.inference_mode():
        for batch in (32, 1):
            pixels = clip.image_processor(images=[picture] * batch, return_tensors="pt")["pixel_values"]
            tokens = clip.tokenizer([f"a photo of thing number {i}" for i in range(batch)], padding=True,
                                    return_tensors="pt")
            runs = {"image": lambda: clip.model.get_image_features(pixel_values=pixels),
                    "text": lambda: clip.model.get_text_features(**tokens)}
            for name, run in runs.items():
                run()
                times = []
                for _ in range(repeats if batch == 32 else 3 * repeats):
                    started = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - started)
                out[f"{name} b{batch}"] = batch / statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--seconds", type=float, default=24.0, help="measured seconds per image run (texts: half)")
    parser.add_argument("--warmup", type=float, default=6.0, help="seconds of load before measuring")
    parser.add_argument("--quick", action="store_true", help="a small run: 1 and 8 clients, 5 s each")
    parser.add_argument("--max-wait-ms", help="--max-wait-ms of the batching-on server (default: serve's)")
    parser.add_argument("--max-batch-size", help="--max-batch-size of the batching-on server (default: serve's)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.warmup = [1, 8], 5.0, 2.0
    image = photo_b64()
    bodies = {"image": lambda c, i: json.dumps({"images": [image]}),
              "text": lambda c, i: json.dumps({"texts": [f"a photo of thing number {c}-{i}"]})}
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
        model = make_folder(Path(tmp))
        before = model_throughput(model, image)
        options = [item for name in ("max_wait_ms", "max_batch_size") if getattr(args, name) is not None
                   for item in ("--" + name.replace("_", "-"), getattr(args, name))]
        servers = {"on": start_server(model, *options), "off": start_server(model, "--max-batch-size", "1")}
        rows = []
        try:
            for clients in args.clients:
                for modality in ("image", "text"):
                    seconds = args.seconds if modality == "image" else args.seconds / 2
                    for mode in ("on", "off"):  # interleaved, so that drift in the machine's load hits both
                        _, host, port = servers[mode]
                        settle(servers)
                        calls = batch_counters(host, port, modality)
                        result = load(host, port, "/embed", bodies[modality], clients, args.warmup, seconds)
                        calls = [after - before for before, after in zip(calls, batch_counters(host, port, modality))]
                        rows.append({"modality": modality, "clients": clients, "batching": mode, **result,
                                     "items/call": calls[1] / max(1, calls[0])})
                        print(rows[-1], flush=True)
            for clients in (32, 128):  # the HTTP stack alone: what it answers without a model call
                _, host, port = servers["on"]
                result = load(host, port, "/health", lambda c, i: None, clients, 1.0, 5.0, method="GET")
                rows.append({"modality": "GET /health", "clients": clients, "batching": "-", **result})
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait(60)
        after = model_throughput(model, image)
    model_rows = [{"modality": f"model {key}", "clients": "-", "batching": "-",
                   "req/s": (before[key] + after[key]) / 2, "before": before[key], "after": after[key]}
                  for key in before]
    report("server", rows + model_rows)
    summarize(rows, before, after)


def summarize(rows: list[dict], before: dict, after: dict) -> None:
    """The issue's targets at 32 single-image clients."""
    find = {(r["modality"], r["clients"], r["batching"]): r for r in rows}
    on, off = find.get(("image", 32, "on")), find.get(("image", 32, "off"))
    if not (on and off):
        return
    model = (before["image b32"] + after["image b32"]) / 2
    print(f"\n32 image clients: batching on {on['req/s']:.2f} req/s = {on['req/s'] / model:.0%} of the model's "
          f"batch-32 {model:.2f} img/s; {on['req/s'] / off['req/s']:.2f}x batching off ({off['req/s']:.2f}); p99 "
          f"{on['p99 ms']:.0f} ms vs {off['p99 ms']:.0f} ms off")


if __name__ == "__main__":
    main()
