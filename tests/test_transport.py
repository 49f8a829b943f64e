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


def test_redis_channels_keep_one_client_for_their_commands() -> None:
    """redis:// is kombu's Redis transport with one kept redis-py client per channel (not
    one built per publish): messages still go and come whole, and a channel whose pool
    was replaced (a reconnect) uses the new pool."""
    from scheduler_project.transport import RedisChannel
    from tests.services import REDIS_URL, require_redis

    require_redis()
    with Connection(f"{REDIS_URL}/15") as conn:
        queue = conn.SimpleQueue("kept-client-test")
        try:
            channel = queue.channel
            assert isinstance(channel, RedisChannel)
            queue.put({"n": 0})
            kept = channel._create_client()
            queue.put({"n": 1})
            assert channel._create_client() is kept
            channel._pool = None  # as after a reconnect
            queue.put({"n": 2})
            renewed = channel._create_client()
            assert renewed is not kept and renewed.connection_pool is channel.pool
            got = []
            for _ in range(3):
                message = queue.get(timeout=5)
                got.append(message.payload["n"])
                message.ack()
            assert got == [0, 1, 2]
        finally:
            queue.clear()
            queue.close()
