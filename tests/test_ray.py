"""The Ray engine (``clipfast embed --engine ray``) and ``clipfast.ray.EmbedImages`` / ``EmbedTexts``.

Every run is a subprocess: an embedded local Ray, a head + worker cluster on this machine (joined at 127.0.0.1)
with ``ray start --block`` (stopped by terminating those two processes, never ``ray stop``, which would end every
Ray on the machine), a run killed (driver, then a worker) and resumed, a table of URLs served on loopback with
404s and truncated files, and an address where no cluster answers. Outputs are compared with the single-process engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs Ray Data: pip install -e '.[ray]'")
pa = pytest.importorskip("pyarrow", reason="Parquet output needs pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from clipfast import bulk  # noqa: E402
from helpers.loopback import serve  # noqa: E402
from test_bulk import jpeg, write_shard, write_tiny_model  # noqa: E402

pytestmark = pytest.mark.slow  # each Ray start takes 10-30 s on a small machine


def _env(**extra: str) -> dict[str, str]:
    """No RAY_ADDRESS from the outside (the runs must start their own Ray unless told), no network, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "CLIPFAST_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8", **extra}


def _embed(cwd: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipfast", "embed", *args], cwd=cwd, env=env or _env(),
                          text=True, capture_output=True, timeout=timeout)


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    """A run in its own process group (so a kill reaches the Ray processes it started)."""
    return subprocess.Popen([sys.executable, "-m", "clipfast", "embed", *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _raylets() -> set[int]:
    """Raylet processes running now (to check that a finished run leaves none of its own behind)."""
    out = subprocess.run(["ps", "-eo", "pid=,stat=,comm="], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()
            if line.split()[-1] == "raylet" and not line.split()[1].startswith("Z")}


def _read(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("part-*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_parts(out: Path, count: int, proc: subprocess.Popen, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while len(list(out.glob("part-*.parquet"))) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {count} part files: {proc.communicate()[1] if proc.poll() is not None else ''}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """model/, imgs/ (16 JPEGs + a broken one), shard-{0..1}.tar, and urls.parquet on a loopback server (4 good
    images, a 404, a truncated body) that serves while the module runs."""
    root = tmp_path_factory.mktemp("ray")
    write_tiny_model(root / "model")
    (root / "imgs").mkdir()
    for i in range(16):
        (root / "imgs" / f"img{i:02d}.jpg").write_bytes(jpeg(i))
    (root / "imgs" / "broken.jpg").write_bytes(jpeg(99)[:100])
    write_shard(root / "shard-0.tar", [("a0", {"jpg": jpeg(40), "txt": b"red"}), ("a1", {"jpg": jpeg(41)})])
    write_shard(root / "shard-1.tar", [("b0", {"jpg": jpeg(42), "json": b'{"caption": "blue"}'})])
    routes = {f"/{i}.jpg": (200, "image/jpeg", jpeg(50 + i)) for i in range(4)}
    routes["/cut.jpg"] = (200, "image/jpeg", jpeg(60)[:300])
    with serve(routes) as base:
        urls = [f"{base}/{i}.jpg" for i in range(4)] + [f"{base}/gone.jpg", f"{base}/cut.jpg"]
        pq.write_table(pa.table({"url": urls, "caption": [f"photo {i}" for i in range(6)]}), root / "urls.parquet")
        yield root


SOURCES = ["imgs", "urls.parquet", "shard-{0..1}.tar"]


@pytest.fixture(scope="module")
def reference_output(data, tmp_path_factory):
    """The single-process engine's output for SOURCES (the numbers the Ray engine must give)."""
    out = tmp_path_factory.mktemp("local") / "out"
    with contextlib.chdir(data):
        plan = bulk.plan_sources(SOURCES, text_column="caption", partition_size=5)
        bulk.embed_local(plan, str(out), "model", device="cpu", progress=False)
    return {row["id"]: row for row in _read(out)}, pq.read_table(out / "_errors.parquet").to_pylist()


def _same_rows(out: Path, expected: dict[str, dict]) -> None:
    rows = _read(out)
    assert sorted(r["id"] for r in rows) == sorted(expected)  # every id exactly once
    for row in rows:
        for column in ("image_embedding", "text_embedding"):
            want = expected[row["id"]][column]
            assert (row[column] is None) == (want is None), (row["id"], column)
            if want is not None:
                np.testing.assert_allclose(row[column], want, atol=1e-5)


def test_local_ray_matches_single_process(data, reference_output, tmp_path):
    before = _raylets()
    result = _embed(data, *SOURCES, "--out", str(tmp_path / "out"), "--model", "model", "--engine", "ray",
                    "--text-column", "caption", "--partition-size", "3", "--workers", "1")
    assert result.returncode == 1, result.stderr  # some images failed
    lines = result.stderr.splitlines()
    assert all(line.startswith("clipfast: ") for line in lines), result.stderr  # not one line of Ray's own
    assert "23 embedded, 3 failed" in lines[-1] and "done, 3 failed" in lines[-2]
    assert result.stdout == ""
    expected, errors = reference_output
    _same_rows(tmp_path / "out", expected)
    got = pq.read_table(tmp_path / "out" / "_errors.parquet").to_pylist()
    assert sorted(e["id"] for e in got) == sorted(e["id"] for e in errors)
    meta = json.loads((tmp_path / "out" / "_clipfast.json").read_text())
    assert meta["counts"]["embedded"] == 23 and meta["status"] == "complete"
    time.sleep(1)
    assert _raylets() <= before  # the embedded Ray is gone


def test_kill_driver_then_resume(data, reference_output, tmp_path):
    out = tmp_path / "out"
    args = (*SOURCES, "--out", str(out), "--model", "model", "--engine", "ray", "--text-column", "caption",
            "--partition-size", "1", "--batch-size", "1")
    proc = _start(data, *args)
    _wait_for_parts(out, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.communicate()
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}
    result = _embed(data, *args)
    assert result.returncode == 1 and "23 embedded, 3 failed" in result.stderr, result.stderr
    _same_rows(out, reference_output[0])
    now = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}
    assert all(now[name] == stamp for name, stamp in finished.items())  # finished part files never rewritten
    assert not list(out.glob(".tmp-*"))
    again = _embed(data, *args)  # a finished output: nothing added, removed or rewritten
    assert again.returncode == 1 and {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                                      for p in out.glob("part-*.parquet")} == now


def _descendants(root: int) -> list[tuple[int, str]]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        pid, ppid, args = line.split(None, 2)
        children.setdefault(int(ppid), []).append((int(pid), args))
    found, todo = [], [root]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            found.append((pid, args))
            todo.append(pid)
    return found


def test_kill_worker_run_still_completes(data, reference_output, tmp_path):
    out = tmp_path / "out"
    proc = _start(data, *SOURCES, "--out", str(out), "--model", "model", "--engine", "ray", "--text-column",
                  "caption", "--partition-size", "1", "--batch-size", "1")
    _wait_for_parts(out, 1, proc)
    actors = [pid for pid, args in _descendants(proc.pid) if "_PartitionActor" in args or "MapWorker" in args]
    assert actors, _descendants(proc.pid)
    os.kill(actors[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    if proc.returncode not in (0, 1) or "embedded" not in stderr:  # Ray gave up on the partition: resume
        result = _embed(data, *SOURCES, "--out", str(out), "--model", "model", "--engine", "ray",
                        "--text-column", "caption", "--partition-size", "1", "--batch-size", "1")
        stderr = result.stderr
    assert "23 embedded, 3 failed" in stderr, stderr
    _same_rows(out, reference_output[0])


def test_head_and_worker_cluster(data, reference_output, tmp_path):
    port = _free_port()
    ray_cli = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]
    # no --node-ip-address 127.0.0.1: Ray turns a loopback address into this machine's address before connecting,
    # so a second node could not join such a head; the head listens on every interface, 127.0.0.1 included
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    # token authentication, which `ray start` turns on, with the token of ~/.ray/auth_token; the worker node and
    # the driver join with it
    env = _env(RAY_AUTH_MODE="token")
    head = subprocess.Popen([*ray_cli, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert head.poll() is None and time.monotonic() < deadline, "the head node did not start"
            time.sleep(0.5)
        worker = subprocess.Popen([*ray_cli, "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait = ("import ray, sys, time; ray.init(address=sys.argv[1], log_to_driver=False); t = time.time()\n"
                "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.time() - t < 120: time.sleep(0.5)\n"
                "print(sum(n['Alive'] for n in ray.nodes()))")
        nodes = subprocess.run([sys.executable, "-c", wait, f"127.0.0.1:{port}"], capture_output=True, text=True,
                               env=env, timeout=180)
        assert nodes.stdout.strip() == "2", nodes.stderr[-2000:]
        # two actors of one CPU each: the run needs both nodes
        args = (*SOURCES, "--out", str(tmp_path / "out"), "--model", "model", "--engine", "ray", "--text-column",
                "caption", "--address", f"127.0.0.1:{port}", "--workers", "2", "--cpus-per-worker", "1",
                "--partition-size", "4")
        # `ray start` turns token authentication on (the token in ~/.ray/auth_token): joining without it fails
        # in one line that says what to set
        refused = _embed(data, *args, env={**env, "RAY_AUTH_MODE": "disabled"}, timeout=90)
        assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert "RAY_AUTH_MODE=token" in refused.stderr and not (tmp_path / "out").exists()
        result = _embed(data, *args, env=env)
        assert result.returncode == 1 and "23 embedded, 3 failed" in result.stderr, result.stderr
        assert all(line.startswith("clipfast: ") for line in result.stderr.splitlines()), result.stderr
        _same_rows(tmp_path / "out", reference_output[0])
    finally:
        for node in (worker, head):
            if node is not None:
                node.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        for node in (worker, head):
            if node is not None:
                node.wait(timeout=60)


def test_unreachable_address_fails_fast(data, tmp_path):
    started = time.monotonic()
    result = _embed(data, "imgs", "--out", str(tmp_path / "out"), "--model", "model", "--engine", "ray",
                    "--address", f"127.0.0.1:{_free_port()}", timeout=90)
    assert time.monotonic() - started < 60
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "No Ray cluster answers at 127.0.0.1:" in result.stderr
    assert not (tmp_path / "out").exists()


_BUILDING_BLOCKS = r"""
import io, json, sys
import numpy as np, ray
from PIL import Image
from clipfast.ray import EmbedImages, EmbedTexts

model, images, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
kinds = [[{"image": open(p, "rb").read(), "name": p} for p in images[:2]],  # bytes
         [{"image": p, "name": p} for p in images[2:4]],  # paths
         [{"image": np.asarray(Image.open(p).convert("RGB")), "name": p} for p in images[4:]]]  # arrays
pool = ray.data.ActorPoolStrategy(size=1)
out = {}
for rows in kinds:
    ds = ray.data.from_items(rows).map_batches(EmbedImages, fn_constructor_kwargs={"model": model}, compute=pool,
                                               batch_size=3)
    out.update({r["name"]: np.asarray(r["image_embedding"]).tolist() for r in ds.iter_rows()})
ts = ray.data.from_items([{"text": t, "n": i} for i, t in enumerate(texts)]).map_batches(
    EmbedTexts, fn_constructor_kwargs={"model": model}, compute=pool, batch_size=2)
text_out = {r["text"]: np.asarray(r["text_embedding"]).tolist() for r in ts.iter_rows()}
ray.shutdown()
print(json.dumps({"images": out, "texts": text_out}))
"""


def test_embed_images_and_texts_in_map_batches(data):
    """bytes, paths and decoded arrays give what the single-process engine gives; other columns pass through."""
    images = [str(data / "imgs" / f"img{i:02d}.jpg") for i in range(6)]
    texts = ["a cat", "a dog on a beach", "red"]
    result = subprocess.run([sys.executable, "-c", _BUILDING_BLOCKS, str(data / "model"), json.dumps(images),
                             json.dumps(texts)], env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.splitlines()[-1])
    clip = bulk.load_model(str(data / "model"), device="cpu")
    from clipfast.image_io import load_image

    expected = bulk.as_float32(clip.image_embeddings([load_image(p) for p in images]))
    np.testing.assert_allclose([got["images"][p] for p in images], expected, atol=1e-5)
    np.testing.assert_allclose([got["texts"][t] for t in texts], bulk.as_float32(clip.text_embeddings(texts)),
                               atol=1e-5)
