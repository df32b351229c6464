"""Run every benchmark, then gather their JSON into results/summary.json and one Markdown table, results/summary.md.

Each script runs in its own interpreter (with this checkout's ``src`` first on the path), one after another so
they never share the cores; a script that fails is recorded and the others still run. The table has one row per
measured configuration: clipfast, transformers and open_clip where measured, the ratio, date and machine.

    python benchmarks/run_all.py [--quick] [--only model,end_to_end] [--collect-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, _fmt, machine  # noqa: E402

# script -> (full arguments, --quick arguments); scripts without a --quick flag get smaller sizes instead
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "bench_model.py": ([], ["--quick"]),
    "bench_tokenizers.py": ([], ["--texts", "2000", "--rounds", "2"]),
    "bench_image_processing.py": ([], ["--images", "64", "--rounds", "2"]),
    "bench_pipeline.py": ([], ["--images", "16", "--repeats", "1"]),
    "bench_end_to_end.py": ([], ["--quick"]),
    "bench_optimize.py": ([], ["--quick"]),
    "bench_optimize.py --no-native-bf16": (["--parts", "bf16", "--no-native-bf16"],
                                           ["--parts", "bf16", "--no-native-bf16", "--quick", "--bf16-batch", "4"]),
}
GPU_ONLY = {"bench_gpu.py": (["--budget-s", "480"], ["--quick"])}


def run_scripts(quick: bool, only: list[str] | None, timeout: float) -> list[dict[str, Any]]:
    """Run each benchmark script in turn; return what ran, its exit status and its wall time."""
    import torch

    scripts = dict(SCRIPTS, **(GPU_ONLY if torch.cuda.is_available() else {}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent / "src"),
                                                                     os.environ.get("PYTHONPATH")])))
    runs = []
    for key, (full, short) in scripts.items():
        script = key.split()[0]
        if only and not any(name in script for name in only):
            continue
        command = [sys.executable, str(HERE / script), *(short if quick else full)]
        print(f"== {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        try:
            rc = subprocess.run(command, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        runs.append({"command": " ".join([Path(command[0]).name, *command[1:]]), "rc": rc,
                     "seconds": round(time.perf_counter() - start, 1)})
    return runs


def _machine_text(info: dict[str, Any] | None) -> str:
    """A short machine label: GPU name, or CPU cores and torch threads."""
    if not info:
        return "?"
    if info.get("cuda"):
        return f"{info['cuda']}, torch {info.get('torch', '?')}"
    return f"{info.get('cpu', '?')} {info.get('cores', '?')} cores, {info.get('torch_threads', '?')} threads, " \
           f"torch {info.get('torch', '?')}"


def _row(config: str, clipfast: Any, transformers: Any = None, open_clip: Any = None, ratio: Any = None,
         **extra: Any) -> dict[str, Any]:
    return {"configuration": config, "clipfast": clipfast, "transformers": transformers, "open_clip": open_clip,
            "ratio": ratio, **extra}


def _from_report(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Rows written by ``common.report`` (model, pipeline, end to end, optimize)."""
    for row in data["rows"]:
        unit = row.get("unit", "items/s")
        batch = f", batch {row['batch']}" if row.get("batch") not in (None, "-") else ""
        config = f"{row['path']}{batch} ({unit})"
        if "clipfast" in row:
            yield _row(config, row["clipfast"], row.get("transformers"), row.get("open_clip"), row.get("speedup"))
            if "clipfast packed" in row:  # the opt-in CPU weight packing, timed in the same run
                yield _row(f"{config}, set_cpu_weight_packing()", row["clipfast packed"], row.get("transformers"),
                           row.get("open_clip"), row.get("packed speedup"))
        else:  # optimize tables compare variants of our own model: the ratio is to the first row's baseline
            extras = {k: v for k, v in row.items() if k.startswith(("1-cos", "weights"))}
            yield _row(f"{row['path']} (items/s; ratio vs baseline)", row.get("items/s"), ratio=row.get("speedup"),
                       **extras)


def _from_tokenizers(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    results = data["results"]
    theirs = results.get("open_clip", {}).get("texts_per_s")  # open_clip has one tokenizer, for both rows
    for kind in ("slow", "fast"):
        yield _row(f"tokenizer {kind}, {data['texts']} captions, padding=True (texts/s)",
                   results[f"clipfast {kind}"]["texts_per_s"], results[f"transformers {kind}"]["texts_per_s"],
                   theirs, ratio=data["speedup_warm"][kind])


def _from_image_processing(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    results, meta = data["results"], data["meta"]
    reference = results.get("transformers CLIPImageProcessor", {}).get("images_per_s")
    theirs = results.get("open_clip preprocess (torchvision)", {}).get("images_per_s")
    for name, values in results.items():
        if name.startswith("clipfast"):
            yield _row(f"{name.removeprefix('clipfast ')}, {meta['size']} files, batch {meta['batch']} (images/s)",
                       values["images_per_s"], reference, theirs, ratio=values["ratio_vs_reference"])


def collect(results: Path = RESULTS) -> list[dict[str, Any]]:
    """Every results/*.json (but the summary) as rows with date, machine and source file."""
    rows = []
    for path in sorted(results.glob("*.json")):
        if path.name == "summary.json":
            continue
        data = json.loads(path.read_text())
        if "rows" in data:
            parsed = list(_from_report(data))
        elif "speedup_warm" in data:
            parsed = list(_from_tokenizers(data))
        elif "meta" in data:
            parsed = list(_from_image_processing(data))
        else:
            print(f"skipping {path.name}: unknown layout", file=sys.stderr)
            continue
        info = data.get("machine")
        day = info["date"] if info and "date" in info else str(date.fromtimestamp(path.stat().st_mtime))
        label = _machine_text(info) if info else f"{_machine_text(machine())} (not recorded; this machine)"
        for row in parsed:
            row.update(date=day, machine=label, source=path.name)
        rows += parsed
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table: configuration, clipfast, transformers, open_clip, ratio, date, machine."""
    keys = ["configuration", "clipfast", "transformers", "open_clip", "ratio", "date", "machine"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(k) is None else _fmt(row[k]) for k in keys) + " |")
    note = ("\nratio = clipfast speed / transformers speed, except rows marked 'ratio vs baseline', which compare "
            "clipfast variants (int8, bf16, compile) with the first row of their table; every ratio comes from one "
            "interleaved run.\n")
    return "\n".join(lines) + "\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a few minutes)")
    parser.add_argument("--only", help="comma-separated parts of script names to run, e.g. model,end_to_end")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the summary from results/*.json")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per script")
    args = parser.parse_args()
    runs = [] if args.collect_only else run_scripts(args.quick, args.only.split(",") if args.only else None,
                                                     args.timeout)
    rows = collect()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps({"machine": machine(), "quick": args.quick, "runs": runs,
                                                      "rows": rows}, indent=2) + "\n")
    table = markdown(rows)
    (RESULTS / "summary.md").write_text(table)
    print(table)
    failed = [run for run in runs if run["rc"] != 0]
    if failed:
        raise SystemExit(f"{len(failed)} benchmark(s) failed: {[run['command'] for run in failed]}")


if __name__ == "__main__":
    main()
