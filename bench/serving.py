"""Benchmark: the HTTP feature server under concurrent load vs the library call vs Feast 0.67's `feast serve`.

    python bench/serving.py --entities 100000 --requests 3000 --concurrency 16
    python bench/serving.py --entities 10000 --requests 500 --no-results

The same N entities x 5 float features materialized by featurepipe and by Feast (bench/benchlib.py's
rows). Per size (1 and 100 entities x 5 features), a load generator (a child process, `--concurrency`
threads, one keep-alive connection each) sends `--requests` requests of random ids after a warm-up:

- featurepipe HTTP: `feature-store serve` (1 worker process), `POST /features/online` with an API key;
- Feast 0.67 HTTP: `feast serve` (1 worker) in bench/.feast-venv, `POST /get-online-features`;
- library: `FeatureStore.get_online_features` called in a loop in one process (no HTTP, no concurrency).

p50/p99 are per request (nearest rank), req/s = requests / wall of the load. Every response is checked
(status 200, all values present).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import benchlib as bl
import feast_env
from online_reads import materialize_featurepipe

from feature_store import FeatureStore, Settings

FP_PORT = 18241
FEAST_PORT = 18242
SIZES = (1, 100)
WARMUP = 50


def bodies(kind: str, entities: int, size: int, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    refs = [f"{bl.GROUP}:{f}" for f in bl.FEATURES]
    out = []
    for _ in range(count):
        ids = [f"e{n}" for n in rng.sample(range(1, entities + 1), size)]
        if kind == "featurepipe":
            out.append(json.dumps({"entity_type": bl.ENTITY_TYPE, "entity_ids": ids, "features": refs}))
        else:
            out.append(json.dumps({"features": refs, "entities": {"entity_id": ids}}))
    return out


def child_load(port: int, path: str, headers: dict[str, str], body_file: Path, concurrency: int) -> dict[str, Any]:
    """Send every body (warm-up first) over `concurrency` keep-alive connections; latencies and wall."""
    all_bodies = json.loads(body_file.read_text())
    warm, timed = all_bodies[:WARMUP], all_bodies[WARMUP:]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    queue = list(range(len(timed)))

    def send(conn: http.client.HTTPConnection, body: str) -> float:
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            errors.append(f"{response.status}: {data[:200]!r}")
        return elapsed

    warm_conn = http.client.HTTPConnection("127.0.0.1", port)
    for body in warm:
        send(warm_conn, body)
    warm_conn.close()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine = []
        while True:
            with lock:
                if not queue:
                    break
                i = queue.pop()
            try:
                mine.append(send(conn, timed[i]))
            except (OSError, http.client.HTTPException) as exc:  # e.g. a server worker restarted: count it
                errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"latencies": latencies, "wall": wall, "errors": len(errors), "error": errors[0] if errors else None}


def library(config: Settings, body_file: Path) -> dict[str, Any]:
    all_bodies = [json.loads(b) for b in json.loads(body_file.read_text())]
    with FeatureStore(settings=config) as store:
        latencies = []
        started = 0.0
        for i, body in enumerate(all_bodies):
            if i == WARMUP:
                started = time.perf_counter()
            t = time.perf_counter()
            read = store.get_online_features(bl.TENANT, bl.ENTITY_TYPE, body["entity_ids"], body["features"])
            if i >= WARMUP:
                latencies.append(time.perf_counter() - t)
            if read.statuses(body["features"][0])[0].value != "present":
                raise SystemExit("the library served a missing value")
        wall = time.perf_counter() - started
    return {"latencies": latencies, "wall": wall}


def wait_healthy(port: int, path: str, process: subprocess.Popen[bytes], method: str = "GET") -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with {process.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request(method, path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server on port {port} did not come up")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--database-url", default=bl.DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=bl.DEFAULT_REDIS_URL)
    parser.add_argument("--results", type=Path, default=bl.RESULTS)
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--header", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = bl.settings(args.database_url, args.redis_url)
    if args.child == "library":
        bl.emit(library(config, args.bodies))
        return 0
    if args.child:
        port, path = args.child.split(":", 1)
        headers = dict(h.split(":", 1) for h in args.header)
        bl.emit(child_load(int(port), path, headers, args.bodies, args.concurrency))
        return 0

    load_before = bl.load_average()
    window = bl.Window.last_complete_hour()
    print(f"preparing and materializing {args.entities:,} entities x {len(bl.FEATURES)} features")
    bl.prepare(config, args.entities, window)
    bl.reset(config)
    materialize_featurepipe(config, window, args.entities)
    with FeatureStore(settings=config) as store:
        key = store.create_api_key(bl.TENANT, name="bench")[1]
    results: dict[str, dict[int, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="fpbench-serve-") as tmp:
        repo = Path(tmp) / "repo"
        worker = [str(feast_env.ensure_feast_venv()), str(feast_env.WORKER)]
        bl.run_child(
            [
                *worker,
                "init",
                "--repo",
                str(repo),
                "--database-url",
                config.database_url,
                "--redis-url",
                config.redis_url,
            ],
            env=bl.feast_env(),
        )
        bl.run_child(
            [
                *worker,
                "materialize",
                "--repo",
                str(repo),
                "--start",
                window.start.isoformat(),
                "--end",
                window.end.isoformat(),
            ],
            env=bl.feast_env(),
        )
        env = {
            **os.environ,
            "FEATURE_STORE_DATABASE_URL": config.database_url,
            "FEATURE_STORE_REDIS_URL": config.redis_url,
            "FEATURE_STORE_REDIS_PREFIX": config.redis_prefix,
        }
        fp = subprocess.Popen(
            [str(Path(sys.executable).parent / "feature-store"), "serve", "--port", str(FP_PORT)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        feast_bin = str(feast_env.venv_python().parent / "feast")
        feast = subprocess.Popen(
            [feast_bin, "-c", str(repo), "serve", "-p", str(FEAST_PORT), "--no-access-log"],
            env=bl.feast_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_healthy(FP_PORT, "/health", fp)
            wait_healthy(FEAST_PORT, "/health", feast)
            for size in SIZES:
                count = WARMUP + args.requests
                for kind in ("featurepipe", "feast", "library"):
                    file = Path(tmp) / f"{kind}-{size}.json"
                    file.write_text(
                        json.dumps(
                            bodies("feast" if kind == "feast" else "featurepipe", args.entities, size, count, seed=size)
                        )
                    )
                    if kind == "library":
                        cmd = bl.project_child(
                            "serving.py",
                            "--child",
                            "library",
                            "--bodies",
                            str(file),
                            "--database-url",
                            config.database_url,
                            "--redis-url",
                            config.redis_url,
                        )
                    else:
                        port, path = (
                            (FP_PORT, "/features/online")
                            if kind == "featurepipe"
                            else (FEAST_PORT, "/get-online-features")
                        )
                        header = ["--header", f"X-API-Key:{key}"] if kind == "featurepipe" else []
                        cmd = bl.project_child(
                            "serving.py",
                            "--child",
                            f"{port}:{path}",
                            "--bodies",
                            str(file),
                            "--concurrency",
                            str(args.concurrency),
                            *header,
                        )
                    child = bl.run_child(cmd)
                    results.setdefault(kind, {})[size] = child.result
                    lat = child.result["latencies"]
                    if child.result.get("errors"):
                        print(f"  {kind}: {child.result['errors']} failed requests, e.g. {child.result['error']}")
                    print(
                        f"  {kind:12s} {size:>3} x5: p50 {bl.percentile(lat, 50) * 1000:.2f} ms"
                        f" p99 {bl.percentile(lat, 99) * 1000:.2f} ms {len(lat) / child.result['wall']:,.0f} req/s",
                        flush=True,
                    )
        finally:
            stop(fp)
            stop(feast)
    table = report(results)
    print(table)
    if not args.no_results:
        machine = bl.machine(config.database_url, config.redis_url, feast_env.feast_versions())
        block = (
            f"{bl.now_utc()}, {args.requests} timed requests per server and size, concurrency"
            f" {args.concurrency}. Machine: {machine}. Load average (1, 5, 15 min): {load_before} before,"
            f" {bl.load_average()} after.\n\n{table}"
        )
        bl.write_section(args.results, "serving", INTRO, f"{args.entities:,} entities", block)
    bl.reset(config)
    return 0


LABELS = {"featurepipe": "featurepipe HTTP", "feast": "Feast 0.67 `feast serve`", "library": "library call"}


def report(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    head, rule = "| path |", "|---|"
    for size in SIZES:
        head += f" {size} x 5: p50 | p99 | req/s |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for kind, by_size in results.items():
        row = f"| {LABELS[kind]} |"
        for size in SIZES:
            r = by_size[size]
            failed = f" ({r['errors']} failed)" if r.get("errors") else ""
            row += (
                f" {bl.percentile(r['latencies'], 50) * 1000:.2f} ms | {bl.percentile(r['latencies'], 99) * 1000:.2f}"
                f" ms | {len(r['latencies']) / r['wall']:,.0f}{failed} |"
            )
        lines.append(row)
    fp, fe = results["featurepipe"], results["feast"]
    lines.append("")
    for size in SIZES:
        rps = (len(fp[size]["latencies"]) / fp[size]["wall"]) / (len(fe[size]["latencies"]) / fe[size]["wall"])
        p99 = bl.percentile(fp[size]["latencies"], 99) / bl.percentile(fe[size]["latencies"], 99)
        lines.append(
            f"- {size} x 5: featurepipe / Feast req/s **{rps:.2f}x**, p99 ratio **{p99:.2f}**"
            " (target: >= 3x req/s, p99 <= 0.33)"
        )
    return "\n".join(lines)


INTRO = """\
## HTTP serving: featurepipe's feature server vs Feast 0.67's `feast serve` vs the library call

`python bench/serving.py --entities N --requests R --concurrency C`: the same N entities x 5 float
features (bench/benchlib.py) materialized by both; per size (1 and 100 entities x 5 features) a load
generator process with C threads, one keep-alive connection each, sends R requests of random ids
after 50 warm-up requests:

- **featurepipe HTTP**: `feature-store serve` (uvicorn, 1 worker), `POST /features/online` with an API key
  (tenant from the key, request validated, values typed with statuses and event times);
- **Feast 0.67 `feast serve`** (1 worker, no access log) in bench/.feast-venv, `POST /get-online-features`;
- **library call**: `FeatureStore.get_online_features` in a loop, one process, no HTTP (latency floor).

The load generator and both servers share the machine's 2 cores; compare ratios of one run."""


if __name__ == "__main__":
    sys.exit(main())
