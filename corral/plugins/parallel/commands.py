"""``corral cluster start|stop|status|list`` and ``corral demo``.

A cluster started from the command line is owned by one *manager* process: the
``corral cluster start`` process itself, or with ``--daemon`` a detached copy of it. The
manager holds the launchers, so the engines die with it if it is killed (their parent
watch), and it stops the cluster cleanly on SIGTERM or Ctrl-C. ``corral cluster stop``
therefore only has to signal the manager named in ``<profile>/run/cluster-ID.json``; it
falls back to the controller's and engines' process groups, and to a shutdown request
through a client, when the manager is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from corral.core import compat
from corral.core.config import Config, ConfigError
from corral.core.private import write_private
from corral.core.processes import Spawned, child_env, process_alive
from corral.core.profiles import profile_dir
from corral.plugins.markers import hookimpl
from corral.plugins.parallel.aggregatefile import MEMBERS, is_aggregate

_MODULE = "corral.plugins.parallel.commands"


@hookimpl
def corral_add_commands(subparsers: argparse._SubParsersAction) -> None:
    cluster = subparsers.add_parser("cluster", help="start, stop and inspect clusters")
    actions = cluster.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)

    start = actions.add_parser(
        "start", help="start a controller (or several: --controllers N) and engines"
    )
    _profile_option(start)
    _start_options(start)
    start.add_argument("--daemon", action="store_true", help="detach and return once ready")
    start.set_defaults(run=run_start)

    stop = actions.add_parser("stop", help="stop a cluster (or all of this profile's)")
    _profile_option(stop)
    which = stop.add_mutually_exclusive_group()
    which.add_argument("--cluster-id", default=None)
    which.add_argument("--all", action="store_true")
    stop.set_defaults(run=run_stop)

    status = actions.add_parser("status", help="engines and queues of a running cluster")
    _profile_option(status)
    status.add_argument("--cluster-id", default=None)
    status.set_defaults(run=run_status)

    listing = actions.add_parser("list", help="clusters of this profile")
    _profile_option(listing)
    listing.set_defaults(run=run_list)

    engines = actions.add_parser("engines", help="engines of a running cluster: id, host, pid")
    _profile_option(engines)
    engines.add_argument("--cluster-id", default=None)
    engines.set_defaults(run=run_engines)

    clean = actions.add_parser(
        "clean", help="remove what crashed clusters left: records, cluster and pid files"
    )
    _profile_option(clean)
    clean.set_defaults(run=run_clean)

    demo = subparsers.add_parser(
        "demo", help="start a cluster on every core, count primes, show the speed-up"
    )
    _profile_option(demo)
    demo.add_argument("-n", "--engines", type=int, default=None, help="default: one per core")
    demo.add_argument("--limit", type=int, default=3_000_000, help="count primes below this")
    demo.add_argument("--chunks", type=int, default=96, help="tasks to split the work into")
    demo.add_argument("--no-serial", action="store_true", help="skip the one-core baseline")
    demo.set_defaults(run=_run_demo)


def _start_options(parser: argparse.ArgumentParser) -> None:
    # Values stay text and default to None: the cluster's settings parse and check them
    # (the same rules as corral.ini and Cluster(...)), and None leaves the profile's.
    parser.add_argument("-n", "--engines", default=None, help="[cluster] n: engines to start")
    parser.add_argument("--cluster-id", default=None, help="default: a new unique id")
    parser.add_argument(
        "--controllers",
        default=None,
        help="[cluster] controllers: aggregate N controllers, each with its share of the "
        "engines, behind one client (corral.Client connects to all of them)",
    )
    parser.add_argument(
        "--threads",
        action="store_const",
        const="threads",
        default=None,
        dest="mode",
        help="controller in one process ([cluster] controller_mode = threads)",
    )
    parser.add_argument("--db", default=None, help="[cluster] db: sqlite, memory or none")
    parser.add_argument("--hb-period", default=None, help="[cluster] hb_period: seconds")
    parser.add_argument("--hb-misses", default=None, help="[cluster] hb_misses")
    parser.add_argument("--timeout", default=None, help="[cluster] engine_timeout: seconds")
    parser.add_argument("--launcher", default=None, help="[cluster] engines: local, ssh, mpi...")
    parser.add_argument("--controller", default=None, help="[cluster] controller launcher")
    parser.add_argument("--ip", default=None, help="[cluster] ip: interface to bind (* = all)")
    parser.add_argument("--location", default=None, help="[cluster] location: address to give")
    parser.add_argument(
        "--encryption",
        choices=["none", "curve"],
        default=None,
        help="curve: encrypt every cluster socket ([security] encryption)",
    )
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a launcher option, e.g. -o hosts=node1:4,node2:8 (repeatable)",
    )


def _cluster_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Cluster(...)`` keyword arguments the start flags stand for."""
    kwargs: dict[str, Any] = {
        "n": args.engines,
        "controllers": args.controllers,
        "controller_mode": args.mode,
        "db": args.db,
        "hb_period": args.hb_period,
        "hb_misses": args.hb_misses,
        "engine_timeout": args.timeout,
        "engines": args.launcher,
        "controller": args.controller,
        "ip": args.ip,
        "location": args.location,
        "encryption": args.encryption,
    }
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"argument --option {item!r}: expected KEY=VALUE")
        kwargs[key.strip()] = value
    return kwargs


def _start_argv(args: argparse.Namespace) -> list[str]:
    """The start flags again, for the detached manager."""
    argv: list[str] = []
    for flag, value in (
        ("-n", args.engines),
        ("--controllers", args.controllers),
        ("--db", args.db),
        ("--hb-period", args.hb_period),
        ("--hb-misses", args.hb_misses),
        ("--timeout", args.timeout),
        ("--launcher", args.launcher),
        ("--controller", args.controller),
        ("--ip", args.ip),
        ("--location", args.location),
        ("--encryption", args.encryption),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.mode == "threads":
        argv.append("--threads")
    for item in args.option:
        argv += ["--option", item]
    return argv


def _profile_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given here it overrides `corral --profile`, absent it leaves that alone.
    parser.add_argument("--profile", default=argparse.SUPPRESS, help="profile to use")


def _run_demo(args: argparse.Namespace, config: Config) -> int:
    from corral.plugins.parallel.demo import run_demo

    return run_demo(args, config)


# ---------------------------------------------------------------------- records


def _records(profile: str) -> list[dict[str, Any]]:
    """Every cluster of the profile: from records (manager-run) and bare cluster files."""
    from corral.plugins.parallel.cluster import read_record

    pdir = profile_dir(profile)
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((pdir / "run").glob("cluster-*.json")):
        record = read_record(path)
        if record and "cluster_id" in record:
            record["record_file"] = str(path)
            found[record["cluster_id"]] = record
    for path in sorted((pdir / "security").glob("cluster-*.json")):
        cluster_id = path.stem[len("cluster-") :]
        info = read_record(path) or {}
        entry = found.setdefault(cluster_id, {"cluster_id": cluster_id})
        entry["cluster_file"] = str(path)
        if is_aggregate(info):
            entry.setdefault("members", [str(m.get("cluster_id")) for m in info[MEMBERS]])
        entry.setdefault("controller", info.get("controller_pid"))
    # An aggregate's members are listed, stopped and connected to through it.
    members = {m for record in found.values() for m in record.get("members", [])}
    for record in found.values():
        if record.get("members"):
            parts = [found.get(m, {}) for m in record["members"]]
            record.setdefault("controllers", [p.get("controller") for p in parts])
            record.setdefault("engines", [e for p in parts for e in p.get("engines", [])])
            record["member_records"] = parts
            record["controller"] = record.get("controller") or next(
                (pid for pid in record["controllers"] if pid), None
            )
    return [record for cid, record in found.items() if cid not in members]


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None if it is missing or half-written."""
    from corral.plugins.parallel.cluster import read_record

    return read_record(path)


def _running(pid: int | None) -> bool:
    """Whether a pid from a cluster record names a live process (zombies count as gone)."""
    if not pid:
        return False
    return process_alive(pid)


def _record_running(record: dict[str, Any]) -> bool:
    """Whether the cluster of ``record`` still runs: its controller, or for an aggregate
    every member controller (a record outlives a script killed before its stop)."""
    if record.get("members"):
        return all(_running(pid) for pid in record.get("controllers") or [None])
    return _running(record.get("controller"))


def _pick(profile: str, cluster_id: str | None) -> dict[str, Any] | None:
    """The cluster named, or the only one there is; None (with a message) otherwise."""
    records = _records(profile)
    if cluster_id is not None:
        for record in records:
            if record["cluster_id"] == cluster_id:
                return record
        print(f"corral: no cluster {cluster_id!r} in profile {profile!r}", file=sys.stderr)
        return None
    if len(records) == 1:
        return records[0]
    live = [record for record in records if _record_running(record)]
    if len(live) == 1:  # the others are records of clusters that are gone
        return live[0]
    if not records:
        print(f"corral: no cluster running in profile {profile!r}", file=sys.stderr)
    elif not live:
        print(
            f"corral: no cluster running in profile {profile!r} ({len(records)} stale "
            "records: `corral cluster clean` removes them)",
            file=sys.stderr,
        )
    else:
        records = live
        ids = ", ".join(r["cluster_id"] for r in records)
        print(f"corral: several clusters ({ids}); choose one with --cluster-id", file=sys.stderr)
    return None


# ---------------------------------------------------------------------- start


def run_start(args: argparse.Namespace, config: Config) -> int:
    from corral.plugins.parallel.cluster import Cluster, new_cluster_id

    cluster_id = args.cluster_id or new_cluster_id()
    # Built before anything starts (and before detaching): a bad value fails here, in the
    # user's terminal, naming its source. [cluster] controllers > 1 builds a Shards: the
    # same start, stop, record and ready mark over every member (parallel/shards.py).
    try:
        cluster = Cluster(profile=args.profile, cluster_id=cluster_id, **_cluster_kwargs(args))
    except (ConfigError, ValueError) as error:
        print(f"corral: configuration error: {error}", file=sys.stderr, flush=True)
        return 2
    if cluster.n == 0:  # only the Python API can add engines to it later
        print(
            "corral: configuration error: [cluster] n: bad value '0'; expected an integer "
            ">= 1 (a cluster with no engines is for the Python API: Cluster(n=0))",
            file=sys.stderr,
            flush=True,
        )
        return 2
    if args.daemon:
        return _start_daemon(args, cluster_id, cluster.engine_timeout)
    stop_now = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_now.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_signal)
    try:
        started = time.perf_counter()
        cluster.start_and_connect()
        if isinstance(cluster, Cluster):
            assert cluster.controller is not None
            cluster.controller.on_stop(lambda launcher: stop_now.set())
        else:
            cluster.on_stop(stop_now.set)
        cluster._write_record()
        _mark_ready(cluster.record_file)
        _report_ended_sets(cluster, stop_now)
        controllers = len(getattr(cluster, "clusters", [cluster]))
        print(
            f"cluster {cluster.cluster_id} ready: {cluster.n} engines"
            + (f" behind {controllers} controllers" if controllers > 1 else "")
            + f" in {time.perf_counter() - started:.2f} s (profile {args.profile!r})\n"
            f"connect: corral.Client(profile={args.profile!r}, "
            f"cluster_id={cluster.cluster_id!r})\n"
            f"stop:    corral --profile {args.profile} cluster stop --cluster-id "
            f"{cluster.cluster_id}",
            flush=True,
        )
        while not stop_now.wait(0.5):
            pass
    except Exception as error:
        print(f"corral: {error}", file=sys.stderr, flush=True)
        cluster.stop()
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not cluster.is_running:
        print(f"cluster {cluster.cluster_id}: the controller exited", flush=True)
    cluster.stop()
    print(f"cluster {cluster.cluster_id} stopped", flush=True)
    return 0


def _report_ended_sets(cluster: Any, stopping: threading.Event) -> None:
    """Say when an engine set ends while the cluster runs: a batch system's ``scancel`` or
    ``qdel``, a walltime, every engine of a set dead.

    Why: the controller lives on and the engines are simply gone, so ``status`` showed
    ``engines up: 0`` and the cluster's log nothing. The manager writes the launcher's
    words (the scheduler's, for a batch job) to its log and to the record, for ``status``.
    """
    for member in getattr(cluster, "clusters", [cluster]):
        for engines in list(member.engines):
            engines.on_stop(lambda launcher, m=member: _set_ended(m, launcher, stopping))


def _set_ended(member: Any, engines: Any, stopping: threading.Event) -> None:
    if stopping.is_set():
        return  # stopped on purpose
    said = engines.describe() or f"exit status {engines.poll()}"
    message = f"engine set {engines.engine_set_id} ({engines.name}) ended: {said}"
    print(f"cluster {member.cluster_id}: {message}", flush=True)
    from corral.plugins.parallel.cluster import read_record

    record = read_record(member.record_file)
    if record is not None:
        record["ended"] = [*record.get("ended", []), message]
        record["n"] = max(0, int(record.get("n") or 0) - engines.n)
        member._store_record(record)


def _mark_ready(path: Path) -> None:
    record = json.loads(path.read_text())
    record["ready"] = True
    tmp = path.with_suffix(".tmp")
    write_private(tmp, json.dumps(record, indent=1))
    os.replace(tmp, path)


def _start_daemon(args: argparse.Namespace, cluster_id: str, timeout: float) -> int:
    """Run ``corral cluster start`` detached (own session, output to a log file) and
    return once it reports the cluster ready, or quote its log if it fails."""
    from corral.plugins.parallel.cluster import read_record, record_path

    pdir = profile_dir(args.profile)
    log_file = pdir / "log" / f"cluster-{cluster_id}.log"
    # The manager runs this module directly: it needs no plugins, and starts faster.
    argv = [sys.executable, "-m", _MODULE, "--profile", args.profile]
    argv += ["--cluster-id", cluster_id, *_start_argv(args)]
    child = Spawned(argv, log_file=log_file, env=child_env())
    proc = child.popen
    record_file = record_path(pdir, cluster_id)
    deadline = time.monotonic() + timeout + 30
    while True:
        record = read_record(record_file)
        if record and record.get("ready") and record.get("manager_pid") == proc.pid:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            print(
                f"corral: cluster {cluster_id} failed to start; its log ({log_file}) ends "
                f"with:\n{child.output_tail() or '(no output)'}",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.02)
    print(cluster_id)
    print(
        f"cluster {cluster_id} running in the background (manager pid {proc.pid}, "
        f"{record['n']} engines, profile {args.profile!r})\n"
        f"connect: corral.Client(profile={args.profile!r}, cluster_id={cluster_id!r})\n"
        f"stop:    corral --profile {args.profile} cluster stop --cluster-id {cluster_id}\n"
        f"log:     {log_file}"
    )
    return 0


# ---------------------------------------------------------------------- stop


def run_stop(args: argparse.Namespace, config: Config) -> int:
    if args.all:
        records = _records(args.profile)
        if not records:
            print(f"no clusters in profile {args.profile!r}")
        return max([stop_cluster(args.profile, r) for r in records], default=0)
    record = _pick(args.profile, args.cluster_id)
    return 1 if record is None else stop_cluster(args.profile, record)


def stop_cluster(profile: str, record: dict[str, Any]) -> int:
    """Signal the manager; failing that, shut down through a client and kill the groups."""
    import psutil

    cluster_id = record["cluster_id"]
    manager = record.get("manager_pid")
    managed = _running(manager)
    if managed:
        assert manager is not None  # _running(None) is False
        os.kill(manager, signal.SIGTERM)
        try:
            psutil.Process(manager).wait(30)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            os.kill(manager, signal.SIGKILL)
    if record.get("members"):
        return _stop_aggregate(profile, record)
    if not managed:
        cluster_file = record.get("cluster_file")
        if cluster_file and Path(cluster_file).exists() and _running(record.get("controller")):
            try:
                from corral.plugins.parallel.client import Client

                client = Client(connection_file=cluster_file)
                try:
                    client.shutdown()
                finally:
                    client.close()
            except Exception as error:
                print(f"corral: shutdown request failed: {error}", file=sys.stderr)
    # Whatever is left (a manager killed with -9, a controller that ignored shutdown).
    pids = [record.get("controller"), *record.get("engines", [])]
    procs = []
    for pid in pids:
        if _running(pid):
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                continue
            compat.signal_group(pid, compat.TERMINATE)
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive:
        compat.signal_group(proc.pid, compat.KILL)
    pdir = profile_dir(profile)
    for path in (
        pdir / "security" / f"cluster-{cluster_id}.json",
        pdir / "run" / f"cluster-{cluster_id}.json",
        pdir / "run" / f"controller-{cluster_id}.pid",
        *(pdir / "run").glob(f"engine-{cluster_id}-*.pid"),
    ):
        path.unlink(missing_ok=True)
    print(f"cluster {cluster_id} stopped")
    return 0


def _stop_aggregate(profile: str, record: dict[str, Any]) -> int:
    """After its manager (if any) is gone: stop what is left of every member, as a
    cluster of its own, then remove the aggregate's files."""
    pdir = profile_dir(profile)
    (pdir / "security" / f"cluster-{record['cluster_id']}.json").unlink(missing_ok=True)
    found = {r["cluster_id"]: r for r in record.get("member_records", []) if r}
    for member in record["members"]:
        part = dict(found.get(member) or {"cluster_id": member})
        part["manager_pid"] = None  # the aggregate's manager, already dealt with
        file = pdir / "security" / f"cluster-{member}.json"
        if file.exists():
            part.setdefault("cluster_file", str(file))
            part.setdefault("controller", (read_json_file(file) or {}).get("controller_pid"))
        with contextlib.redirect_stdout(io.StringIO()):  # one line for the aggregate
            stop_cluster(profile, part)
    (pdir / "run" / f"cluster-{record['cluster_id']}.json").unlink(missing_ok=True)
    print(f"cluster {record['cluster_id']} stopped ({len(record['members'])} controllers)")
    return 0


# ---------------------------------------------------------------------- status, list


def _connect(profile: str, record: dict[str, Any]) -> Any:
    """A client of the cluster of ``record``, or None after saying why there is none.

    Why not just connect: a controller killed under a script that still holds its
    cluster leaves its files behind, and a client would wait its whole timeout for an
    answer, then end in a traceback. A dead controller is said at once, with what
    cleans up; one that is alive and silent, in one line.
    """
    from corral.plugins.parallel.client import Client

    cluster_id = record["cluster_id"]
    stop = f"`corral --profile {profile} cluster stop --cluster-id {cluster_id}` cleans up"
    if not _record_running(record):
        pids = record.get("controllers") or [record.get("controller")]
        print(
            f"corral: cluster {cluster_id}: its controller (pid "
            f"{', '.join(str(pid) for pid in pids)}) is not running; {stop}",
            file=sys.stderr,
        )
        return None
    try:
        return Client(connection_file=record["cluster_file"])
    except (TimeoutError, OSError) as error:
        print(f"corral: cluster {cluster_id}: {error}; {stop}", file=sys.stderr)
        return None


def run_status(args: argparse.Namespace, config: Config) -> int:
    record = _pick(args.profile, args.cluster_id)
    if record is None:
        return 1
    cluster_file = record.get("cluster_file")
    if not cluster_file or not Path(cluster_file).exists():
        print(f"cluster {record['cluster_id']}: no cluster file; not running")
        return 1
    client = _connect(args.profile, record)
    if client is None:
        return 1
    try:
        ids = sorted(client.ids)
        print(f"cluster {record['cluster_id']} (profile {args.profile!r})")
        if record.get("members"):
            print(f"  controllers: {len(record['members'])} ({', '.join(record['members'])})")
            print(f"  controller pids: {record.get('controllers')}")
        else:
            print(f"  controller pid: {record.get('controller')}")
        print(f"  engines up: {len(ids)}  ids: {ids}")
        for message in record.get("ended", []):
            print(f"  {message}")
        queues = client.queue_status()
        print(f"  {'engine':>6} {'queued':>7} {'running':>8} {'completed':>10}")
        for key in sorted(queues, key=str):
            row = queues[key]
            if not isinstance(row, dict):
                continue
            print(
                f"  {key!s:>6} {row.get('queued', 0):>7} {row.get('running', 0):>8} "
                f"{row.get('completed', 0):>10}"
            )
    finally:
        client.close()
    return 0


def run_list(args: argparse.Namespace, config: Config) -> int:
    records = _records(args.profile)
    if not records:
        print(f"no clusters in profile {args.profile!r}")
        return 0
    print(f"{'cluster id':<26} {'engines':>7} {'manager':>8} {'controller':>10} {'state':<8}")
    for record in records:
        controller = record.get("controller")
        state = "running" if _record_running(record) else "stale"
        members = record.get("members") or []
        if members:  # an aggregate: running while every member controller is
            state += f" ({len(members)} controllers)"
        print(
            f"{record['cluster_id']:<26} {_engine_count(record):>7} "
            f"{record.get('manager_pid') or '-'!s:>8}"
            f" {controller or '-'!s:>10} {state:<8}"
        )
    return 0


def _engine_count(record: dict[str, Any]) -> int:
    """The engines of a listed cluster, without asking its controller.

    Local engines are processes here: the live ones are counted. Those of other
    launchers are not (the record holds an ssh session's pid, mpiexec's, or none for a
    batch job), so counting pids said 1 for two engines over ssh and 0 for a running
    Slurm array; for them the count is what was started, less the engine sets the
    manager saw end.
    """
    if record.get("engine_launcher", "local") == "local":
        return sum(1 for pid in record.get("engines", []) if _running(pid))
    return int(record.get("n") or 0) if _record_running(record) else 0


def run_engines(args: argparse.Namespace, config: Config) -> int:
    record = _pick(args.profile, args.cluster_id)
    if record is None:
        return 1
    cluster_file = record.get("cluster_file")
    if not cluster_file or not Path(cluster_file).exists():
        print(f"cluster {record['cluster_id']}: no cluster file; not running", file=sys.stderr)
        return 1
    client = _connect(args.profile, record)
    if client is None:
        return 1
    try:
        print(f"{'id':>4} {'host':<30} {'pid':>8}")
        for engine_id, info in sorted(client.engines.items()):
            print(f"{engine_id:>4} {info.hostname:<30} {info.pid or '-'!s:>8}")
    finally:
        client.close()
    return 0


def run_clean(args: argparse.Namespace, config: Config) -> int:
    """Remove the files of clusters whose controller and manager are gone."""
    pdir = profile_dir(args.profile)
    removed: list[Path] = []
    for record in _records(args.profile):
        if _running(record.get("manager_pid")) or _running(record.get("controller")):
            continue
        if any(_running(pid) for pid in record.get("controllers") or []):
            continue  # an aggregate with a member still running
        for cluster_id in (record["cluster_id"], *record.get("members", [])):
            for path in (
                pdir / "security" / f"cluster-{cluster_id}.json",
                pdir / "run" / f"cluster-{cluster_id}.json",
                pdir / "run" / f"controller-{cluster_id}.pid",
                *(pdir / "run").glob(f"engine-{cluster_id}-*.pid"),
            ):
                if path.exists():
                    path.unlink()
                    removed.append(path)
    for path in removed:
        print(f"removed {path}")
    if not removed:
        print(f"nothing to clean in profile {args.profile!r}")
    return 0


def _manager_main(argv: list[str] | None = None) -> int:
    """``python -m corral.plugins.parallel.commands``: the detached manager of
    ``corral cluster start --daemon`` (the same as ``corral cluster start`` in the
    foreground, without loading plugins or configuration)."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    parser.add_argument("--profile", default="default")
    _start_options(parser)
    args = parser.parse_args(argv)
    args.daemon = False
    return run_start(args, None)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(_manager_main())
