"""Start a real controller and real engines for the client tests, and stop them again.

The controller prints one JSON line (its cluster file) once every socket is bound, so the
harness waits on that line rather than polling; engines are waited for through the
client (``wait_for_engines``), which is woken by the hub's notifications.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from corral.plugins.parallel.client import Client

ROOT = Path(__file__).resolve().parent.parent


class LiveCluster:
    """A controller (threads or processes) and ``n`` engines under ``corral_dir``."""

    def __init__(
        self,
        corral_dir: Path,
        *,
        n: int = 2,
        threads: bool = True,
        profile: str = "client",
        cluster_id: str = "c1",
        hb_period: float = 0.2,
        hb_misses: int = 5,  # slack for a saturated CI machine; death still seen in ~1 s
        controller_env: dict[str, str] | None = None,
        engine_env: dict[str, str] | None = None,
        controller_args: tuple[str, ...] = (),
    ) -> None:
        self.corral_dir = corral_dir
        self.profile = profile
        self.cluster_id = cluster_id
        self.env = dict(
            os.environ,
            CORRAL_DIR=str(corral_dir),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        args = [
            sys.executable,
            "-m",
            "corral.plugins.parallel.controller",
            "--profile",
            profile,
            "--cluster-id",
            cluster_id,
            "--hb-period",
            str(hb_period),
            "--hb-misses",
            str(hb_misses),
        ]
        if threads:
            args.append("--threads")
        args.extend(controller_args)
        self.engine_env = engine_env or {}
        self._controller_args = args
        self._controller_env = {**self.env, **(controller_env or {})}
        self.engines: list[subprocess.Popen[Any]] = []
        self.clients: list[Client] = []
        self.old_controllers: list[subprocess.Popen[Any]] = []
        self.controller = self._start_controller()
        try:
            for _ in range(n):
                self.add_engine()
            self.client = self.connect()
            self.client.wait_for_engines(n, timeout=60)
        except BaseException:
            self.stop()
            raise

    def _start_controller(self) -> subprocess.Popen[Any]:
        controller = subprocess.Popen(
            self._controller_args,
            env=self._controller_env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = controller.stdout.readline() if controller.stdout else ""
        if not line:
            controller.wait(5)
            raise RuntimeError("the controller exited before writing its cluster file")
        self.cluster_file = Path(json.loads(line)["cluster_file"])
        # Keep draining stdout so the controller never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(controller,), daemon=True).start()
        return controller

    def kill_controller(self) -> None:
        """``kill -9`` of the controller and every component process (its group)."""
        os.killpg(self.controller.pid, signal.SIGKILL)
        self.controller.wait(10)
        self.old_controllers.append(self.controller)

    def restart_controller(self) -> None:
        """A controller started again on the same profile and cluster id."""
        self.controller = self._start_controller()

    @staticmethod
    def _drain(controller: subprocess.Popen[Any]) -> None:
        stream = controller.stdout
        if stream is not None:
            for _ in stream:
                pass

    def add_engine(self) -> subprocess.Popen[Any]:
        engine = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral.plugins.parallel.engine",
                "--file",
                str(self.cluster_file),
            ],
            env={**self.env, **self.engine_env},
            start_new_session=True,
        )
        self.engines.append(engine)
        return engine

    def connect(self, **kwargs: Any) -> Client:
        client = Client(connection_file=self.cluster_file, **kwargs)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            if not client.closed:
                try:
                    client.shutdown(hub=True, timeout=5)
                    break
                except Exception:
                    continue
        for client in self.clients:
            client.close()
        for proc in [*self.engines, self.controller]:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
