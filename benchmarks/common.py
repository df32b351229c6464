"""Shared helpers for the side-by-side benchmarks: interleaved timing, a results table, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each candidate, alternating candidates every round so drift hits all alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "date": str(date.today())}


def report(name: str, rows: list[dict[str, object]]) -> None:
    """Print rows as a Markdown table and write them, with the machine, to results/<name>.json."""
    if not rows:
        return
    keys = list(dict.fromkeys(key for row in rows for key in row))  # every row's columns, first-seen order
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: not measured for this row
            return ""
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def benchmark_jpegs(folder: Path, count: int = 256, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """``count`` distinct JPEGs (640x480 by default) cropped and resized from scikit-image's sample photos."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    bases = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in SAMPLES]
    paths = []
    for i in range(count):
        base = bases[i % len(bases)]
        w, h = base.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = base.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BICUBIC)
        path = folder / f"bench_{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths
