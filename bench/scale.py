"""The aggregator service at fleet scale, on the real broker, with bench/loadgen.py.

For each (K sites, D parameters): a fresh topic prefix and fleet config (FedAvg, update-level
privacy, one synchronous round waiting for all K), ``fairfleet aggregator run`` as its own
process; once it has announced round 0 its RSS is the idle baseline; the load generator commits
all K signed updates in one transaction; the round's close time is from that commit until the
model version 1 release is read. Then, in the same run, a raw confluent-kafka consumer (already
connected, fresh group) reads the same records of the updates topic as bytes:
``ratio_vs_raw_consume`` = close seconds / raw seconds. ``peak_rss_bytes`` is the aggregator's
VmHWM; ``peak_rss_growth_bytes`` that minus its idle RSS (the issue's goal: at most
3 × groups × D × 8 bytes, independent of K). Writes bench/results/scale.json.

Each cell runs again with ``models[].aggregator.workers = 2`` (``fairfleet aggregator run`` as
the combiner plus ``--worker 0`` and ``--worker 1``; timed the same way, once all three are up
and the workers hold their partitions); ``max_abs_diff_vs_one_worker`` is the largest absolute
difference between its released model and the one-worker model of the same updates (both
flattened by tensor name), ``partials_at_close`` the combiner's last partial per partition
(worker, sites) when it closed, ``partials_published`` how many partials each worker published.
Environment: ``SCALE_GRID="100x100000,1000x100000"`` picks cells, ``SCALE_REPEATS`` the repeats,
``SCALE_WORKERS=0`` skips the several-workers runs. ``python -m bench.scale compare K D RUNS``
only compares 1 worker with 2 workers + combiner (a line per run; no results file).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from confluent_kafka import Consumer, TopicPartition

from bench.loadgen import MODEL, LoadGenerator, fleet_config, wait_announcement
from fairfleet.aggregator.rounds import announcement
from fairfleet.aggregator.validation import Rejection, check_payload
from fairfleet.bus import Reader, connect
from fairfleet.bus.kafka import FETCH_QUEUE_BACKOFF_MS
from fairfleet.bus.topics import MAX_MESSAGE_BYTES
from fairfleet.learning.tensors import flatten, from_safetensors_bytes
from fairfleet.messages import ModelRelease

OUT = Path(__file__).resolve().parent / "results" / "scale.json"
GRID = ((100, 100_000), (1000, 100_000), (5000, 100_000), (200, 5_000_000))
REPEATS = 3  # medians of time and ratio; the largest peak RSS
BIG_BYTES = 1_000_000_000  # a cell moving more than this through the broker runs once
WORKERS = 2  # the several-workers variant of each cell: a combiner and this many workers
GRID_NOTE = (
    "The issue's grid, each cell once (SCALE_REPEATS=1), one worker and then two workers plus "
    "a combiner, in one pass on a quiet machine (load average in each row)."
)


RSS_NOTE = (
    "peak_rss_growth_bytes = VmHWM after the round minus VmRSS before it. The round itself "
    "holds O(groups x D) floats (the fold) and a few scalars per site; the rest is transient: "
    "librdkafka's fetched records (the updates consumer's prefetch queue, "
    "queued.max.messages.kbytes, and each fetch response, fetch.max.bytes, are bounded at 8 MiB "
    "instead of librdkafka's 64 MiB and fairfleet.bus's 64 MiB; a response's buffer lives until "
    "its last record is read, so the queue, the response in flight and the one being read "
    "overlap), the Python copy of each record and the decoded vector of the update in hand."
)
RATIO_NOTE = (
    "cpu_s: CPU seconds (user + system, all threads, from /proc) of each process from the "
    "commit of the round's updates until the release is read; raw_cpu_s: the raw consumer "
    "process's own and the broker's while it reads the same records. The one-worker service is "
    "CPU-bound, not waiting: at K = 5000 it used as many CPU seconds as the round took. Beyond "
    "what the raw consumer spends on the same records, each update costs ~0.4-0.5 ms of CPU at "
    "D = 100k: one sha256 pass over its 400 kB (0.21 ms here), two Ed25519 verifications (the "
    "update and its ledger commit, 0.06 ms each), JSON and pydantic, check_payload and the "
    "fold. A ratio of 1.3 would need (service + broker CPU) / (1.3 x raw seconds) cores: at "
    "K = 5000 more than the machine's 2 even if all of it ran in parallel; see docs/aggregator.md "
    "('Time'). An earlier py-spy --idle profile put ~70% of the loop in KafkaConsumer.poll; "
    "timing the loop directly (perf_counter around poll and handle, K = 5000) gave 1.42 s in "
    "polls that returned a record (the Reader's decode and hash included) and 1.85 s handling "
    "them, for a 3.2 s round: py-spy's idle attribution was wrong."
)
UPDATE_CHECK_NOTE = (
    "In-process, no broker: seconds per update of check_payload (zero-copy safetensors views, "
    "one concatenation, one float64-accumulated sum of squares that is also the NaN/Inf check) "
    "against the check it replaced (record copy, safetensors.torch.load, torch.cat, isfinite, "
    "float64 copy + BLAS norm) on the same payloads; medians of 5 interleaved repeats; "
    "thread_env 1 = OMP/OPENBLAS/MKL_NUM_THREADS=1."
)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _wait_release(bus: Any, prefix: str, version: int, timeout: float) -> tuple[float, np.ndarray]:
    """When model ``version`` was read, and its weights as one flat vector."""
    reader = Reader(bus.consumer(f"scale-{uuid.uuid4().hex[:8]}", [f"{prefix}models"]), "bench")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = reader.poll(0.2)
            if (
                env is not None
                and isinstance(env.message, ModelRelease)
                and env.message.version >= version
            ):
                seen = time.time()
                # by name (from_safetensors_bytes sorts): the same layout in every run
                weights = flatten(from_safetensors_bytes(bytes(env.payload))).numpy()
                return seen, weights
        raise TimeoutError(f"model version {version} not released within {timeout} s")
    finally:
        reader.consumer.close()


def _wait_log(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not log {text!r} within {timeout} s")
        time.sleep(0.2)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # with librdkafka's threads
    return usage.ru_utime + usage.ru_stime


def _listener_pid(bootstrap: str) -> int | None:
    """The process listening on the bootstrap's port (the broker), from /proc; None if not
    found (e.g. another user's broker)."""
    port = int(bootstrap.rsplit(":", 1)[1])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def _raw_consume(bootstrap: str, topic: str) -> tuple[float, int, dict[str, float]]:
    """Seconds and bytes for a raw consumer to read every data record of ``topic``: an update
    larger than ``kafka.chunk_bytes`` is several records, and the topic was written by one
    transaction, so each partition holds its data records then one commit marker."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES,
            "max.partition.fetch.bytes": MAX_MESSAGE_BYTES + 65536,
            "receive.message.max.bytes": 4 * MAX_MESSAGE_BYTES + 2 * 1024 * 1024,
            # as fairfleet's consumers: librdkafka's default waits 1 s whenever its 64 MiB
            # queue is full: K = 1000 was read at a third of the byte rate of K = 5000 with it
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    records = 0
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        records += max(0, high - low - 1)  # minus the transaction's commit marker
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.05)  # joined (not timed); nothing is read before the timer
    got = nbytes = 0
    broker = _listener_pid(bootstrap)
    cpu_before = (_own_cpu_s(), _cpu_s(broker) if broker else 0.0)
    start = time.perf_counter()
    while got < records:
        for msg in consumer.consume(min(500, records - got), 1.0):
            value = msg.value()
            if msg.error() is None and value is not None:
                got += 1
                nbytes += len(value)
    seconds = time.perf_counter() - start
    cpu = {"consumer": _own_cpu_s() - cpu_before[0]}
    if broker:  # not found (a broker of another user or host): no figure rather than 0
        cpu["broker"] = _cpu_s(broker) - cpu_before[1]
    consumer.close()
    return seconds, nbytes, cpu


def run_one(
    bootstrap: str, sites: int, params: int, workdir: Path, workers: int = 1
) -> tuple[dict[str, Any], np.ndarray]:
    """One round of ``sites`` updates of ``params`` parameters: its row and the released model."""
    load_before = os.getloadavg()[0]
    prefix = f"scale-{uuid.uuid4().hex[:6]}."
    config, keys = fleet_config(
        bootstrap, prefix, sites, params, workdir / f"keys-{prefix}", workers=workers
    )
    path = workdir / f"fleet-{sites}-{params}-{workers}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    gen = LoadGenerator(config, keys)
    bus = connect(bootstrap)
    run = [str(Path(sys.executable).with_name("fairfleet")), "aggregator", "run"]
    run += ["--config", str(path), "--model", MODEL, "--metrics-port", "0", "--keep-running"]
    roles = [("aggregator" if workers == 1 else "combiner", [])]
    roles += [(f"worker-{i}", ["--worker", str(i)]) for i in range(workers if workers > 1 else 0)]
    logs = {role: workdir / f"{prefix}{role}.log" for role, _ in roles}
    procs = {}
    for role, extra in roles:
        with logs[role].open("w") as log:  # no OMP/OPENBLAS thread settings: as deployed
            procs[role] = subprocess.Popen(run + extra, stdout=log, stderr=subprocess.STDOUT)
    try:
        ann = wait_announcement(bus, prefix, 0, 120, config.kafka.partitions)
        for role, _ in roles[1:]:
            _wait_log(logs[role], "worker partitions assign", 120)
        time.sleep(1.0)  # let it settle after the bootstrap commit
        idle = {role: _status_kb(proc.pid, "VmRSS") * 1024 for role, proc in procs.items()}
        updates = gen.updates(ann)
        record_bytes = sum(len(p) for _, p, _ in updates)
        broker = _listener_pid(bootstrap)
        committed = gen.publish_round(bus, updates)
        # read_committed: nothing of the round was readable before this point
        cpu_before = {role: _cpu_s(proc.pid) for role, proc in procs.items()}
        if broker:
            cpu_before["broker"] = _cpu_s(broker)
        del updates
        released, model = _wait_release(bus, prefix, 1, timeout=1800)
        cpu = {role: _cpu_s(proc.pid) - cpu_before[role] for role, proc in procs.items()}
        if broker:  # not found: no figure rather than 0
            cpu["broker"] = _cpu_s(broker) - cpu_before["broker"]
        peak = {role: _status_kb(proc.pid, "VmHWM") * 1024 for role, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    closed = [
        json.loads(line)
        for line in logs[roles[0][0]].read_text().splitlines()
        if '"round closed"' in line
    ]
    if not closed or closed[0].get("participants") != sites:  # a model of other updates
        raise RuntimeError(f"Round 0 did not close with all {sites} sites: {closed}.")
    partials = _partials_seen(logs) if workers > 1 else {}
    raw_s, raw_bytes, raw_cpu = _raw_consume(bootstrap, f"{prefix}updates")
    close_s = released - committed
    growth = {role: peak[role] - idle[role] for role in procs}
    row: dict[str, Any] = {
        "sites": sites,
        "params": params,
        "workers": workers,
        "round_close_s": close_s,
        "raw_consume_s": raw_s,
        "raw_bytes": raw_bytes,
        "payload_bytes": record_bytes,
        "ratio_vs_raw_consume": close_s / raw_s,
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "raw_cpu_s": {k: round(v, 2) for k, v in raw_cpu.items()},
        "peak_rss_bytes": max(peak.values()),
        "idle_rss_bytes": idle[roles[0][0]] if workers == 1 else idle,
        "peak_rss_growth_bytes": max(growth.values()),
        "goal_rss_growth_bytes": 3 * 1 * params * 8,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if workers > 1:
        row["peak_rss_growth_by_process"] = growth
        row.update(partials)
    return row, model


def _partials_seen(logs: dict[str, Path]) -> dict[str, Any]:
    """From the logs of a several-workers run: the combiner's last accepted partial per updates
    partition (worker, sites: what the round closed with) and how many partials each worker
    published."""
    lines = {
        role: [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
        for role, path in logs.items()
    }
    last: dict[str, dict[str, int]] = {}
    for entry in lines["combiner"]:
        if entry.get("msg") == "partial accepted":
            last[str(entry["partition"])] = {"worker": entry["worker"], "sites": entry["sites"]}
        elif entry.get("msg") == "round closed":
            break
    published = {
        role: sum(1 for e in entries if e.get("msg") == "partial published")
        for role, entries in lines.items()
        if role != "combiner"
    }
    return {"partials_at_close": last, "partials_published": published}


def _cell(
    bootstrap: str, sites: int, params: int, workdir: Path, workers: int, repeats: int
) -> tuple[dict[str, Any], np.ndarray]:
    """``repeats`` runs of one cell: medians of time and ratio, the largest RSS growth."""
    runs, model = [], np.zeros(0)
    for _ in range(repeats):
        row, model = run_one(bootstrap, sites, params, workdir, workers)
        runs.append(row)
        print(json.dumps(row), flush=True)
    keys = ("round_close_s", "raw_consume_s", "ratio_vs_raw_consume")
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    kept = (*keys, "cpu_s", "raw_cpu_s", "peak_rss_growth_bytes", "load_average_1m")
    return {
        **runs[0],
        **median,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "peak_rss_growth_bytes": max(r["peak_rss_growth_bytes"] for r in runs),
        "repeats": [{k: r[k] for k in kept} for r in runs],
    }, model


def _library_check(payload: bytes, names: list[str]) -> tuple[np.ndarray, float]:
    """The update check before the fleet-scale work: copy the record, safetensors' load (a copy
    per tensor), torch.cat (another copy), an isfinite pass, a float64 copy for the norm."""
    tensors = from_safetensors_bytes(bytes(payload))
    vector = flatten({k: tensors[k] for k in names}).numpy()
    if not bool(np.isfinite(vector).all()):
        raise ValueError("not finite")
    return vector, float(np.linalg.norm(vector.astype(np.float64)))


def update_check(params: int, updates: int, repeats: int = 5) -> dict[str, Any]:
    """Seconds per update of the aggregator's payload check (``check_payload``: decode, shape,
    dtype, NaN/Inf, norm) against :func:`_library_check` on the same payloads, interleaved
    repeats in this process (medians), with the threads as deployed (no env settings)."""
    config, keys = fleet_config("127.0.0.1:9", "check.", updates, params, Path(tempfile.mkdtemp()))
    gen = LoadGenerator(config, keys)
    ann = announcement(config.model(MODEL), "fedavg", 0, 0)
    batch = gen.updates(ann)
    names = ["weight", "bias"]
    shapes = {"weight": ((1, params - 1), "float32"), "bias": ((1,), "float32")}
    ours, library = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for msg, payload, _ in batch:
            checked = check_payload(msg, memoryview(payload), shapes, ann)
            assert not isinstance(checked, Rejection), checked
        ours.append((time.perf_counter() - start) / updates)
        start = time.perf_counter()
        for _, payload, _ in batch:
            _library_check(memoryview(payload), names)  # type: ignore[arg-type]
        library.append((time.perf_counter() - start) / updates)
    mine, theirs = statistics.median(ours), statistics.median(library)
    return {
        "params": params,
        "updates": updates,
        "check_payload_s": mine,
        "library_check_s": theirs,
        "ratio_vs_library": mine / theirs,
    }


CHECK_CELLS = ((100_000, 200), (5_000_000, 6))  # (D, updates) of the in-process check bench
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def update_checks() -> list[dict[str, Any]]:
    """:func:`update_check` per cell of CHECK_CELLS, in a fresh process as deployed and in one
    with the thread pools at 1 (the BLAS norm of the library path suffers from pools)."""
    rows = []
    for threads, extra in (("default", {}), ("1", ONE_THREAD)):
        out = subprocess.run(
            [sys.executable, "-m", "bench.scale", "check"],
            env={**os.environ, **extra},
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        rows += [{**row, "thread_env": threads} for row in json.loads(out)]
    return rows


def main() -> dict[str, Any]:
    bootstrap = os.environ.get("FAIRFLEET_BOOTSTRAP")
    if not bootstrap:
        raise SystemExit("FAIRFLEET_BOOTSTRAP is not set: run through `make bench`.")
    grid = GRID
    if os.environ.get("SCALE_GRID"):  # e.g. "100x100000,1000x100000"
        grid = tuple(
            tuple(int(x) for x in cell.split("x")) for cell in os.environ["SCALE_GRID"].split(",")
        )  # type: ignore[assignment]
    checks = update_checks()
    repeats = int(os.environ.get("SCALE_REPEATS", REPEATS))
    workers = int(os.environ.get("SCALE_WORKERS", WORKERS))
    rows: list[dict[str, Any]] = []
    several: list[dict[str, Any]] = []
    result = _write(checks, rows, several)
    with tempfile.TemporaryDirectory() as tmp:
        for sites, params in grid:
            n = 1 if sites * params * 4 > BIG_BYTES else repeats
            row, model = _cell(bootstrap, sites, params, Path(tmp), 1, n)
            rows.append(row)
            if workers > 1:
                split, split_model = _cell(bootstrap, sites, params, Path(tmp), workers, n)
                split["max_abs_diff_vs_one_worker"] = float(np.max(np.abs(split_model - model)))
                split["bit_identical_to_one_worker"] = bool(np.array_equal(split_model, model))
                several.append(split)
            result = _write(checks, rows, several)  # after each cell: a long grid cut short
    return result


def _write(
    checks: list[dict[str, Any]], rows: list[dict[str, Any]], several: list[dict[str, Any]]
) -> dict[str, Any]:
    result = {
        "broker": "local single-node KRaft (its own, not shared with other tests)",
        "strategy": "fedavg (one group)",
        "method": (
            "round close = commit of the K updates (one transaction, each with its site's "
            "signed ledger commit) until model version 1 is read; raw = an already-joined "
            "confluent-kafka consumer reading the same update records as bytes in the same run "
            "(fetch.queue.backoff.ms as fairfleet's consumers); no OMP/OPENBLAS thread settings (the update path uses no BLAS or torch pool)"
        ),
        "cores": os.cpu_count(),
        "grid_reduced": any(r["sites"] * r["params"] * 4 > BIG_BYTES for r in rows),
        "grid_note": GRID_NOTE,
        "update_check": checks,
        "update_check_note": UPDATE_CHECK_NOTE,
        "runs": rows,
        "workers_runs": several,
        "rss_note": RSS_NOTE,
        "ratio_note": RATIO_NOTE,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    return result


def compare(sites: int, params: int, runs: int) -> None:
    """One one-worker round, then ``runs`` rounds of 2 workers + combiner on the same updates:
    a JSON line per two-worker run (max abs model difference, the partials at close, partials
    published, close seconds). Writes no results file."""
    bootstrap = os.environ.get("FAIRFLEET_BOOTSTRAP")
    if not bootstrap:
        raise SystemExit("FAIRFLEET_BOOTSTRAP is not set.")
    with tempfile.TemporaryDirectory() as tmp:
        _, one = run_one(bootstrap, sites, params, Path(tmp), 1)
        for _ in range(runs):
            row, two = run_one(bootstrap, sites, params, Path(tmp), WORKERS)
            keep = ("sites", "params", "round_close_s", "partials_at_close", "partials_published")
            out = {k: row[k] for k in keep} | {"max_abs_diff": float(np.max(np.abs(two - one)))}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["check"]:
        print(json.dumps([update_check(d, n) for d, n in CHECK_CELLS]))
    elif sys.argv[1:2] == ["compare"]:  # compare K D RUNS
        compare(*(int(x) for x in sys.argv[2:5]))
    else:
        print(json.dumps(main(), indent=2))
