"""Simulated engines (corral/plugins/parallel/simengine.py) against a real controller:
they register, stay alive on heartbeats alone, answer load-balanced, direct and broadcast
requests, and leave when the cluster shuts down."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from parallel_client_harness import LiveCluster

N = 40


def test_a_crowd_of_simulated_engines_serves_a_real_controller(tmp_path: Path) -> None:
    cluster = LiveCluster(tmp_path, n=0, threads=False, hb_period=0.2, hb_misses=3)
    crowd = None
    try:
        crowd = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral.plugins.parallel.simengine",
                str(cluster.cluster_file),
                "-n",
                str(N),
                "--wave",
                "16",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=cluster.env,
        )
        assert crowd.stdout is not None
        line = json.loads(crowd.stdout.readline())
        assert line["engines"] == N
        client = cluster.client
        client.wait_for_engines(N, timeout=30)
        ids = sorted(client.ids)
        assert len(ids) == N
        # Alive on echoed beats alone: several times the hub's patience later, all still there.
        time.sleep(0.2 * 3 * 4)
        assert sorted(client.ids) == ids
        # Load-balanced: canned results, spread over many engines.
        view = client.load_balanced_view()
        results = [view.apply_async(abs, -i) for i in range(400)]
        assert [r.get(timeout=30) for r in results] == [None] * 400
        ran_on = {r.engine_id for r in results}
        assert len(ran_on) > N // 2, ran_on
        # Direct to every engine, and one broadcast execute.
        assert client[:].apply_sync(abs, -1) == [None] * N
        reply = client[:].execute("x = 1", block=True)
        assert reply.successful()
        # The hub counts what the queues' copies tell it (they trail the replies a little).
        deadline = time.monotonic() + 30
        while True:
            status = client.queue_status()
            done = sum(status[i]["completed"] for i in ids)
            if done >= 400 + 2 * N or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert done == 400 + 2 * N
    finally:
        cluster.stop()
        if crowd is not None:
            try:
                crowd.wait(20)  # told to shut down with the cluster
            finally:
                if crowd.poll() is None:
                    crowd.kill()
                    crowd.wait(5)
    assert crowd.returncode == 0
