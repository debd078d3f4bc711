"""``corral_schedulers`` and ``corral_serializers``: a distribution installed with an entry
point picks where tasks run and how its objects travel, in a real cluster.

The toy distribution (``tests/data/toy_extensions``) is installed into a site directory on
``PYTHONPATH`` with its dist-info, so ``importlib.metadata`` finds its entry point exactly
as it finds a pip-installed one, in the test's process and in the cluster's.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from corral.core import serialize as ser
from corral.errors import CorralError
from corral.plugins import get_plugin_manager, hookspecs
from corral.plugins.parallel.controller.policies import POLICIES, get_policy

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "data" / "toy_extensions" / "corral_toy_extensions.py"


@pytest.fixture
def toy_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(TOY, site)
    info = site / "corral_toy_extensions-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: corral-toy-extensions\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[corral]\ntoyext = corral_toy_extensions\n")
    (info / "RECORD").write_text("")
    return site


def run_python(site: Path | None, tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    paths = [str(site)] if site else []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, str(REPO)]),
        "CORRAL_DIR": str(tmp_path / "corral"),
        "CORRAL_SYSTEM_INI": str(tmp_path / "none.ini"),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def test_hooks_are_declared_and_the_builtin_policies_register_through_one() -> None:
    assert hasattr(hookspecs, "corral_schedulers") and hasattr(hookspecs, "corral_serializers")
    registered = [m for m in get_plugin_manager().hook.corral_schedulers() if m]
    assert any(set(m) >= set(POLICIES) for m in registered)


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown scheduling policy 'nope'.*leastload.*twobin"):
        get_policy("nope")


@pytest.fixture
def own_reducers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reducers registered by a test go when it ends: the pickler of every later test in
    this process is the untouched one."""
    monkeypatch.setattr(ser, "_reducers", {})
    monkeypatch.setattr(ser._FastPickler, "dispatch_table", None, raising=False)
    monkeypatch.delattr(ser._FastPickler, "dispatch_table")


@pytest.mark.usefixtures("own_reducers")
def test_registered_reducer_pickles_what_pickle_refuses() -> None:
    class Gauge:
        def __init__(self, value: int) -> None:
            self.value = value
            self.lock = threading.Lock()

    with pytest.raises(ser.SerializationError):
        ser.serialize(Gauge(1))
    ser.register_reducers({Gauge: lambda g: (complex, (g.value, 0))})
    assert ser.deserialize(ser.serialize(Gauge(7))) == 7 + 0j
    assert ser.deserialize(ser.serialize([1, "a", b"x"])) == [1, "a", b"x"]  # others untouched
    with pytest.raises(TypeError):
        ser.register_reducers({"Gauge": print})  # type: ignore[dict-item]


@pytest.mark.usefixtures("own_reducers")
def test_copyreg_entries_added_later_are_still_honoured() -> None:
    import copyreg

    class Late:
        pass

    class Mine:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    ser.register_reducers({Mine: lambda m: (str, ("mine",))})
    copyreg.pickle(Late, lambda obj: (str, ("late",)))
    try:
        assert ser.deserialize(ser.serialize([Mine(), Late()])) == ["mine", "late"]
    finally:
        del copyreg.dispatch_table[Late]


@pytest.mark.usefixtures("own_reducers")
def test_reducer_source_is_asked_once_and_only_when_pickling_fails() -> None:
    class Probe:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    asked: list[int] = []

    def source() -> dict[type, ser.Reducer]:
        asked.append(1)
        return {Probe: lambda p: (int, (5,))}

    from corral.plugins.serializers import plugin_reducers

    ser.set_reducer_source(source)
    try:
        ser.serialize({"plain": 1})
        assert asked == []  # nothing failed, nothing loaded
        assert ser.deserialize(ser.serialize(Probe())) == 5
        assert ser.deserialize(ser.serialize(Probe())) == 5
        assert asked == [1]
    finally:
        ser.set_reducer_source(plugin_reducers)


def test_plugin_policy_and_serializer_without_a_cluster(toy_site: Path, tmp_path: Path) -> None:
    result = run_python(
        toy_site,
        tmp_path,
        """
        import random
        import corral.plugins.parallel  # names the plugins as the serializers' source
        from corral.core.serialize import deserialize, serialize
        from corral.plugins.parallel.controller.policies import POLICIES, get_policy
        from corral_toy_extensions import Thermometer

        print("policy", get_policy("toy-last")([0, 0, 0], [0, 0, 0], random.Random(), 0))
        print("builtin kept", get_policy("leastload") is POLICIES["leastload"])
        back = deserialize(serialize({"t": Thermometer(21.5)}))["t"]
        print("thermometer", type(back).__name__, back.degrees)
        """,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "policy 2" in result.stdout
    assert "builtin kept True" in result.stdout
    assert "thermometer Thermometer 21.5" in result.stdout


def test_without_the_plugin_the_thermometer_does_not_pickle(tmp_path: Path) -> None:
    sys.path.insert(0, str(TOY.parent))
    try:
        from corral_toy_extensions import Thermometer  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(TOY.parent))
    with pytest.raises(ser.SerializationError) as info:
        ser.serialize(Thermometer(1.0))
    assert isinstance(info.value, CorralError)


@pytest.mark.timeout(240)
def test_a_cluster_schedules_and_serializes_through_the_plugin(
    toy_site: Path, tmp_path: Path
) -> None:
    """The controller process finds the policy by name; engines and client find the
    reducer on first need; the tasks' placement shows which policy ran."""
    result = run_python(
        toy_site,
        tmp_path,
        """
        import os
        import corral
        from corral.core.profiles import profile_dir
        from corral_toy_extensions import Thermometer

        ini = profile_dir("toys") / "corral.ini"
        ini.write_text("[cluster]\\nn = 3\\n[controller]\\npolicy = toy-last\\n")
        with corral.Cluster(profile="toys") as rc:
            rc.wait_for_engines(3, timeout=60)
            lb = rc.load_balanced_view()
            pids = {lb.apply_sync(os.getpid) for _ in range(12)}
            print("engines used", len(pids))
            warmer = lb.apply_sync(lambda t: Thermometer(t.degrees + 1), Thermometer(20.0))
            print("returned", type(warmer).__name__, warmer.degrees)
        """,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "engines used 1" in result.stdout  # least-load would spread 12 sequential tasks
    assert "returned Thermometer 21.0" in result.stdout


def test_an_unknown_policy_in_the_profile_fails_naming_file_and_key(
    toy_site: Path, tmp_path: Path
) -> None:
    result = run_python(
        toy_site,
        tmp_path,
        """
        import corral
        from corral.core.profiles import profile_dir

        (profile_dir("p") / "corral.ini").write_text("[controller]\\npolicy = toy-lats\\n")
        try:
            corral.Cluster(profile="p")
        except ValueError as error:
            print(error)
        """,
    )
    assert "corral.ini:2" in result.stdout, result.stderr
    assert "unknown scheduling policy 'toy-lats'" in result.stdout
    assert "toy-last" in result.stdout  # the installed plugin's policy is listed


def test_random_is_still_reproducible_through_get_policy() -> None:
    choose = get_policy("random")
    assert choose([0] * 5, [0] * 5, random.Random(3), 0) == random.Random(3).randrange(5)
