"""Serialize + deserialize times: corral vs pickle (protocol 4) vs cloudpickle.

Prints figures side by side; no pass/fail (the machine is shared and noisy). Run with
``python benchmarks/serialize.py`` (with corral installed or on
``PYTHONPATH``). Each figure is the best of several runs.

Rows:

* a 100 MB numpy array: corral sends it out of band (no copy when sending; the receiving
  side gets a frame and wraps it), pickle 4 and cloudpickle copy it into one bytes object
  and copy it again when loading;
* a small task tuple ``(func, args, kwargs)`` with an importable function and with a
  lambda: here per-call overhead dominates, and the "cloudpickle.Pickler + buffers" column
  is the design corral did not pick (every object through cloudpickle's Pickler subclass).
"""

from __future__ import annotations

import io
import pickle
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np

from corral.core.serialize import deserialize, pack_apply, serialize, unpack_apply


def best(fn: Callable[[], Any], repeat: int, number: int) -> float:
    """Best mean seconds per call over ``repeat`` batches of ``number`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return min(times)


def cloudpickle_with_buffers(obj: Any) -> Any:
    """The alternative design: cloudpickle's Pickler with protocol 5 out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    file = io.BytesIO()
    cloudpickle.Pickler(file, protocol=5, buffer_callback=buffers.append).dump(obj)
    return pickle.loads(file.getvalue(), buffers=buffers)


def fmt(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:9.2f} ms"
    return f"{seconds * 1e6:9.2f} us"


def row(label: str, figures: dict[str, float]) -> None:
    base = figures["corral"]
    cells = "  ".join(f"{name}: {fmt(t)} ({t / base:5.2f}x)" for name, t in figures.items())
    print(f"{label:<28} {cells}")


def main() -> None:
    array = np.random.default_rng(0).random(100 * 1024 * 1024 // 8)
    print(f"numpy array: {array.nbytes / 2**20:.0f} MiB, serialize + deserialize, best of 5")

    def corral_array() -> None:
        frames = serialize(array)
        # What a socket delivers: fresh writable buffers; the copy models the network.
        deserialize([frames[0], *(bytearray(f) for f in frames[1:])])

    def corral_array_no_network() -> None:
        deserialize(serialize(array))

    row(
        "100 MB array",
        {
            "corral": best(corral_array, 5, 1),
            "corral (no recv copy)": best(corral_array_no_network, 5, 1),
            "pickle 4": best(lambda: pickle.loads(pickle.dumps(array, protocol=4)), 5, 1),
            "cloudpickle": best(lambda: cloudpickle.loads(cloudpickle.dumps(array)), 5, 1),
        },
    )
    frames = serialize(array)
    print(f"  corral frames: {[memoryview(f).nbytes for f in frames]} (frame 1 is a view)")

    print("\nsmall task (func, (3.14159,), {'ndigits': 2}), serialize + deserialize")
    for label, func in [("importable function", round), ("lambda", lambda x, ndigits: x)]:
        task = (func, (3.14159,), {"ndigits": 2})
        row(
            label,
            {
                "corral": best(lambda t=task: deserialize(serialize(t)), 5, 2000),
                "pack/unpack_apply": best(
                    lambda t=task: unpack_apply(pack_apply(t[0], t[1], t[2])), 5, 2000
                ),
                "pickle 4": best(lambda t=task: pickle.loads(pickle.dumps(t, protocol=4)), 5, 2000)
                if func is round
                else float("nan"),
                "cloudpickle": best(
                    lambda t=task: cloudpickle.loads(cloudpickle.dumps(t)), 5, 2000
                ),
                "cloudpickle.Pickler + buffers": best(
                    lambda t=task: cloudpickle_with_buffers(t), 5, 2000
                ),
            },
        )

    values = [float(i) for i in range(1_000_000)]
    print("\nlist of 1e6 floats (a map result), serialize + deserialize, best of 5")
    row(
        "1e6 floats",
        {
            "corral": best(lambda: deserialize(serialize(values)), 5, 1),
            "pickle 4": best(lambda: pickle.loads(pickle.dumps(values, protocol=4)), 5, 1),
            "cloudpickle": best(lambda: cloudpickle.loads(cloudpickle.dumps(values)), 5, 1),
        },
    )


if __name__ == "__main__":
    main()
