"""Kafka start time: from launching ``buildflow run`` to the first row, on the local stack's
broker (tansu), for a fresh consumer group and for a restart of the same group, against the
local folder bucket in the same run as the baseline.

A model-free app (each record -> one row in DuckDB) so that only the source's start counts.
Variants, run interleaved round by round so machine load hits each alike:

* ``librdkafka defaults``: ``session.timeout.ms`` 45000 and the eager range/round-robin
  assignors: what buildflow's consumer used before ``CONSUMER_DEFAULTS``;
* ``buildflow defaults``: ``buildflow.io.kafka.provider.CONSUMER_DEFAULTS``;
* ``manual assignment``: ``KafkaTopic(assignment="manual")``, no group join;
* ``local bucket``: a ``GCSFileStream`` in the ``local`` environment (the baseline).

Launch to first row = the summary's ``first_row_at`` (wall clock) minus the wall clock just
before the ``buildflow run --until-idle`` process was started: Python start-up, imports, the
group join and the first poll included.

    .venv/bin/python -m benchmarks.kafka_start --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

APP = """
import dataclasses, json, os
from buildflow import Node
from buildflow.io import DuckDBTable, FileEvent, GCSFileStream, KafkaTopic

@dataclasses.dataclass
class Row:
    name: str
    size: int

variant = os.environ["VARIANT"]
if variant == "bucket":
    source = GCSFileStream(bucket_name=os.environ["TOPIC"])
else:
    source = KafkaTopic(
        os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["TOPIC"],
        group_id=os.environ["TOPIC"] + "-group",
        assignment="manual" if variant == "manual" else "group",
        consumer_config=json.loads(os.environ.get("CONSUMER_CONFIG", "{}")),
    )

app = Node(name="kafka-start")

@app.processor(source=source, sink=DuckDBTable(table="bench.start_rows", destroy_protection=False))
def rows(event: FileEvent) -> Row:
    return Row(event.name, len(event.blob))
"""

#: librdkafka's own defaults for what CONSUMER_DEFAULTS changes
#: (https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md)
LIBRDKAFKA_DEFAULTS = {
    "session.timeout.ms": "45000",
    "heartbeat.interval.ms": "3000",
    "partition.assignment.strategy": "range,roundrobin",
}

VARIANTS = {
    "librdkafka defaults": ("group", LIBRDKAFKA_DEFAULTS),
    "buildflow defaults": ("group", {}),
    "manual assignment": ("manual", {}),
    "local bucket": ("bucket", {}),
}


def launch_to_first_row(tmp: Path, env: dict[str, str], state: Path) -> float:
    summary = tmp / f"summary-{uuid.uuid4().hex[:6]}.json"
    cmd = [sys.executable, "-m", "buildflow.cli", "run", "start_app:app", "--until-idle", "--no-progress"]
    t0 = time.time()
    proc = subprocess.run(
        [*cmd, "--state-dir", str(state), "--summary-json", str(summary)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise SystemExit(f"run failed:\n{proc.stdout}\n{proc.stderr}")
    first = json.loads(summary.read_text())["processors"][0]["first_row_at"]
    if first is None:
        raise SystemExit(f"no row written:\n{proc.stderr}")
    return float(first) - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from confluent_kafka import Producer

    from infra import stack as stack_mod

    results: dict[str, dict[str, list[float]]] = {v: {"fresh": [], "restart": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stack = stack_mod.start(state_dir=tmp / "stack")
        (tmp / "start_app.py").write_text(APP)
        bootstrap = stack.env["KAFKA_BOOTSTRAP_SERVERS"]
        load0 = os.getloadavg()[0]
        try:
            for _ in range(args.rounds):
                for name, (variant, config) in VARIANTS.items():
                    topic = f"start-{uuid.uuid4().hex[:8]}"
                    state = tmp / f"state-{topic}"
                    env = {
                        **os.environ,
                        **stack.env,
                        "PYTHONPATH": str(REPO),
                        "VARIANT": variant,
                        "TOPIC": topic,
                        "CONSUMER_CONFIG": json.dumps(config),
                    }
                    env.pop("BUILDFLOW_ENV", None)
                    subprocess.run(
                        [sys.executable, "-m", "buildflow.cli", "plan", "start_app:app", "--yes",
                         "--state-dir", str(state)],
                        cwd=tmp, env=env, check=True, capture_output=True, timeout=120,
                    )  # fmt: skip
                    folder = state / "buckets" / topic
                    for phase in ("fresh", "restart"):
                        if variant == "bucket":
                            (folder / f"{phase}.bin").write_bytes(b"x" * 100)
                        else:
                            producer = Producer({"bootstrap.servers": bootstrap})
                            producer.produce(topic, b"x" * 100, key=phase.encode())
                            producer.flush(30)
                            del producer
                        results[name][phase].append(launch_to_first_row(tmp, env, state))
        finally:
            stack_mod.stop(tmp / "stack")
        load1 = os.getloadavg()[0]

    base = {p: statistics.median(results["local bucket"][p]) for p in ("fresh", "restart")}
    print(
        f"launch to first row, median of {args.rounds} interleaved rounds ({os.cpu_count()} CPUs, "
        f"tansu broker; 1-min load {load0:.2f} before, {load1:.2f} after)\n"
    )
    print("| source | fresh group s | restart s | fresh / local bucket |\n|---|---:|---:|---:|")
    for name in VARIANTS:
        fresh, restart = (statistics.median(results[name][p]) for p in ("fresh", "restart"))
        runs = ", ".join(f"{x:.1f}" for x in results[name]["fresh"])
        print(f"| {name} | {fresh:.2f} ({runs}) | {restart:.2f} | {fresh / base['fresh']:.2f} |")


if __name__ == "__main__":
    main()
