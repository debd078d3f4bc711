"""An engine the hub has declared dead, but which is still running, leaves by itself."""

from __future__ import annotations

import os
import signal
import time

import psutil
from parallel_client_harness import LiveCluster


def test_engine_dropped_by_the_hub_exits(tmp_path):
    cluster = LiveCluster(tmp_path / "corral", n=1, hb_period=0.1, hb_misses=1)
    try:
        client = cluster.client
        engine = psutil.Process(cluster.engines[0].pid)
        # A task round trip: the engine is serving, its subscriptions long made (a SUB
        # connected just before registration may not have reached the hub's PUB yet).
        assert client[0].apply_sync(os.getpid) == engine.pid
        os.kill(engine.pid, signal.SIGSTOP)  # a stalled host: no beats answered
        try:
            deadline = time.monotonic() + 30
            while client.ids and time.monotonic() < deadline:  # the hub's notice reaches us
                time.sleep(0.02)
            assert client.ids == []
        finally:
            os.kill(engine.pid, signal.SIGCONT)
        # Resumed, it reads the same notice and exits instead of lingering unused.
        assert cluster.engines[0].wait(timeout=30) == 1
    finally:
        cluster.stop()
