"""The embedded broker (localfs://): a consumer racing a producer in another process
never sees a half-written message, and every message arrives once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from kombu import Connection

import scheduler_project.celery  # noqa: F401  (registers the localfs:// alias)

N = 60
PRODUCER = """
import sys
import scheduler_project.celery
from kombu import Connection
options = {"data_folder_in": sys.argv[1], "data_folder_out": sys.argv[1],
           "control_folder": sys.argv[1] + "-control"}
with Connection("localfs://", transport_options=options) as conn:
    queue = conn.SimpleQueue("race")
    for n in range(int(sys.argv[2])):
        queue.put({"n": n, "pad": "x" * 2_000_000})
"""


def test_consumer_racing_a_producer_reads_every_message_whole(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(tmp_path / "control"),
        "polling_interval": 0.001,
    }
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(folder), str(N)],
        cwd=Path(__file__).resolve().parents[1],
    )
    seen: list[int] = []
    deadline = time.monotonic() + 60
    with Connection("localfs://", transport_options=options) as conn:
        queue = conn.SimpleQueue("race")
        while len(seen) < N and time.monotonic() < deadline:
            try:
                message = queue.get(block=True, timeout=0.5)
            except queue.Empty:
                continue
            seen.append(message.payload["n"])
            message.ack()
    producer.wait(timeout=30)
    assert producer.returncode == 0
    assert sorted(seen) == list(range(N))
    assert not list(folder.iterdir())  # nothing half-written left behind
