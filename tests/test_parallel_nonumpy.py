"""Real numpy arrays travel through a controller that cannot import numpy or cloudpickle:
the controller forwards and stores opaque frames and never unpickles user data."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from parallel_client_harness import ROOT, LiveCluster

FORBID = textwrap.dedent(
    """
    import sys

    class _Forbid:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("numpy", "cloudpickle"):
                raise ImportError(f"the controller must not import {name}")
            return None

    sys.meta_path.insert(0, _Forbid())
    """
)


@pytest.fixture
def blind_cluster(tmp_path: Path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FORBID)
    path = os.pathsep.join([str(hook), str(ROOT)])
    cluster = LiveCluster(tmp_path / "corral", threads=False, controller_env={"PYTHONPATH": path})
    try:
        yield cluster
    finally:
        cluster.stop()


def test_numpy_arrays_cross_a_controller_without_numpy(blind_cluster):
    client = blind_cluster.client
    array = np.arange(300_000, dtype=np.float64)  # large: travels as an out-of-band frame

    def double(values):
        return values * 2

    balanced = client.load_balanced_view()
    result = balanced.apply_async(double, array)
    assert np.array_equal(result.get(timeout=30), array * 2)

    direct = client[0]
    assert np.array_equal(direct.apply_sync(double, array), array * 2)

    # The hub stored the reply's buffers as opaque bytes; another client can still get it.
    again = blind_cluster.connect().get_result(result.msg_ids[0])
    assert np.array_equal(again.get(timeout=30), array * 2)
    assert blind_cluster.controller.poll() is None  # the controller is still serving
