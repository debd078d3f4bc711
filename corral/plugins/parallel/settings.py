"""The options of a cluster, its controller and its engines, and how a Cluster resolves them.

Why one module: ``corral.Cluster(...)`` keyword arguments, ``corral cluster start`` flags,
``CORRAL_CLUSTER_*`` environment variables and the ``[cluster]``, ``[controller]`` and
``[engine]`` sections of ``corral.ini`` are four spellings of the same settings. They are
declared once here, as :class:`~corral.core.config.Option` objects, and every spelling is
checked by the same rules (:func:`resolve`), so ``Cluster(hb_period=0)``,
``--hb-period 0`` and ``hb_period = 0`` in a file fail alike, before any process starts,
naming where the bad value came from and what is accepted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from corral.core.config import Config, ConfigError, Option, Schema, load_config

__all__ = ["CLUSTER_OPTIONS", "check_host", "declare", "resolve"]


def check_host(value: str) -> str:
    """A host name or address (no spaces, no shell metacharacters): it ends up on the
    command line of ssh and in URLs, where such characters would be a way in."""
    text = value.strip()
    if text and not all(ch.isalnum() or ch in "-._:[]*@%" for ch in text):
        raise ValueError(f"{text!r} is not a host name or address")
    return text


def _check_size(value: str) -> str:
    from corral.plugins.parallel.launchers.monitor import parse_size

    parse_size(value)
    return value


#: Every option of the cluster, its controller and its engines (launchers declare their
#: own ``[launcher:NAME]`` sections next to their code).
CLUSTER_OPTIONS: tuple[Option, ...] = (
    Option(
        "cluster",
        "n",
        None,
        "Engines to start; empty: one per CPU core of this machine. 0 (Python API only):\n"
        "none yet, add them with Cluster.add_engines(); tasks wait for them.",
        type="int",
        minimum=0,
    ),
    Option(
        "cluster",
        "engines",
        "local",
        "Launcher that starts the engines: local, ssh, mpi, or a plugin's launcher\n"
        "(`corral plugins` lists what is installed).",
    ),
    Option(
        "cluster",
        "controller",
        "local",
        "Launcher that starts the controller (local, or a plugin's launcher).",
    ),
    Option(
        "cluster",
        "controller_mode",
        "processes",
        "processes: one process per controller component (fastest under load);\n"
        "threads: one process (lighter, starts faster).",
        type="choice",
        choices=("processes", "threads"),
    ),
    Option(
        "cluster",
        "ip",
        "127.0.0.1",
        "Interface the controller binds: 127.0.0.1 (this machine only), an address of\n"
        "one interface, or * for every interface. Engines on other hosts need one\n"
        "they can reach (and see `location`).",
        check=check_host,
        accepts="an IP address, a host name, or *",
    ),
    Option(
        "cluster",
        "location",
        "",
        "Address engines and clients connect to, written into the cluster file; empty:\n"
        "the `ip` setting (or this host's name when ip is *). Set it when the controller\n"
        "binds * or 0.0.0.0 and engines run elsewhere.",
        check=check_host,
        accepts="an IP address or host name reachable from the engines, or empty",
    ),
    Option(
        "cluster",
        "controllers",
        1,
        "Controllers aggregated behind one client, each with its share of the engines\n"
        "(corral.plugins.parallel.shards); 1: one controller.",
        type="int",
        minimum=1,
    ),
    Option(
        "cluster",
        "hb_period",
        1.0,
        "Seconds between heartbeats.",
        type="float",
        minimum=0.01,
    ),
    Option(
        "cluster",
        "hb_misses",
        2,
        "Missed heartbeats in a row after which an engine is declared dead.",
        type="int",
        minimum=1,
    ),
    Option(
        "cluster",
        "db",
        "sqlite",
        "The controller's task database: sqlite (in the profile's db/), memory, or none.",
        type="choice",
        choices=("sqlite", "memory", "none"),
    ),
    Option(
        "cluster",
        "engine_timeout",
        30.0,
        "Seconds to wait for the controller's cluster file, and for engines to register.",
        type="float",
        minimum=0.1,
    ),
    Option(
        "cluster",
        "stop_grace",
        3.0,
        "Seconds between SIGTERM and SIGKILL when stopping the cluster.",
        type="float",
        minimum=0,
    ),
    Option(
        "cluster",
        "keep_logs",
        20,
        "Log files of earlier clusters kept in the profile's log/ (oldest removed first\n"
        "when a cluster starts); 0 keeps none of them.",
        type="int",
        minimum=0,
    ),
    Option(
        "cluster",
        "keep_dbs",
        10,
        "Task databases of earlier clusters kept in the profile's db/.",
        type="int",
        minimum=0,
    ),
    Option(
        "controller",
        "log_level",
        "warning",
        "How much the controller logs to its log file.",
        type="choice",
        choices=("debug", "info", "warning", "error"),
    ),
    Option(
        "controller",
        "hwm",
        128,
        "Load-balanced tasks one engine may hold at once (the rest wait in the\n"
        "scheduler, for whichever engine frees first); 0: no bound.",
        type="int",
        minimum=0,
    ),
    Option(
        "controller",
        "memory_bound_mb",
        32.0,
        "MB of large results (1 MB and up) each controller process holds for a client\n"
        "that is not reading, or for the task database to write, before it leaves them\n"
        "to the database (the client fetches them when it reads) or stops taking more\n"
        "from the engines. Bounds the controller's memory under slow clients.",
        type="float",
        minimum=0,
    ),
    Option(
        "controller",
        "policy",
        "leastload",
        "How the scheduler picks an engine: leastload, lru, random, twobin, weighted, or "
        "a policy a plugin registers through corral_schedulers.",
    ),
    Option(
        "controller",
        "args",
        [],
        "Extra command-line arguments for the controller process.",
        type="list",
    ),
    Option(
        "engine",
        "log_level",
        "warning",
        "How much each engine logs to its log file.",
        type="choice",
        choices=("debug", "info", "warning", "error"),
    ),
    Option(
        "engine",
        "timeout",
        30.0,
        "Seconds an engine waits for the controller to answer its registration before\n"
        "it gives up with an error naming the address it tried.",
        type="float",
        minimum=0.1,
    ),
    Option(
        "engine",
        "controller_grace",
        60.0,
        "Seconds an engine that lost its controller keeps running, waiting for one\n"
        "restarted on the same cluster (it re-registers with its id and namespace).",
        type="float",
        minimum=0,
    ),
    Option(
        "engine",
        "args",
        [],
        "Extra command-line arguments for every engine process.",
        type="list",
    ),
    # What each engine's monitor does (corral/plugins/parallel/launchers/monitor.py).
    Option(
        "engine",
        "restart",
        0,
        "How many times its monitor restarts an engine that crashed (killed by a\n"
        "signal, the OOM killer, memory_limit or walltime, or a non-zero exit);\n"
        "0: never. A restarted engine registers with a new id.",
        type="int",
        minimum=0,
    ),
    Option(
        "engine",
        "restart_backoff",
        0.5,
        "Seconds before the first restart; doubled for each further restart.",
        type="float",
        minimum=0,
    ),
    Option(
        "engine",
        "memory_limit",
        "",
        "Kill (and, if restart allows, restart) an engine whose process tree holds more\n"
        "resident memory than this, e.g. 2GB; empty: no limit.",
        check=_check_size,
        accepts="a size such as 512MB or 2GB, or empty",
    ),
    Option(
        "engine",
        "walltime",
        0.0,
        "Seconds an engine may run before its monitor kills it; 0: no limit.",
        type="float",
        minimum=0,
    ),
)


def declare(schema: Schema) -> None:
    """Add :data:`CLUSTER_OPTIONS` and the built-in launchers' options to ``schema``."""
    from corral.plugins.parallel.launchers.builtin import LAUNCHER_OPTIONS

    for option in (*CLUSTER_OPTIONS, *LAUNCHER_OPTIONS):
        schema.add(option)


def _needs_plugins(profile: str | None, launcher_names: set[str]) -> bool:
    """Whether options of other plugins may be in play: a configuration file exists, or a
    launcher is not built in. Without either, the built-in schema is the whole story, and
    a cluster starts without loading every installed plugin first."""
    from corral.core.config import system_config_path
    from corral.core.profiles import base_dir
    from corral.plugins.parallel.launchers.builtin import BUILTIN_NAMES

    if launcher_names - set(BUILTIN_NAMES):
        return True
    if system_config_path().is_file():
        return True
    return profile is not None and (base_dir() / f"profile_{profile}" / "corral.ini").is_file()


def full_schema(profile: str | None = "default") -> Schema:
    """Every option every loaded plugin declares (built-ins included)."""
    from corral.plugins.manager import get_plugin_manager
    from corral.plugins.runtime import build_schema

    return build_schema(get_plugin_manager(profile=profile))


def resolve(
    profile: str | None,
    cluster: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """The configuration of one cluster: files, environment, then ``cluster`` (keyword
    arguments or flags for ``[cluster]``, ``[controller]`` and ``[engine]``, as
    ``"section.key"`` or plain ``"key"`` for ``[cluster]``) and ``options`` (keys of the
    chosen launchers' ``[launcher:NAME]`` sections).

    :raises ConfigError: any bad value or unknown key, naming where it came from.
    """
    overrides = {(k if "." in k else f"cluster.{k}"): v for k, v in cluster.items()}
    named = {str(overrides[k]) for k in ("cluster.engines", "cluster.controller") if k in overrides}
    env = os.environ if environ is None else environ
    named |= {env[k] for k in ("CORRAL_CLUSTER_ENGINES", "CORRAL_CLUSTER_CONTROLLER") if k in env}
    if _needs_plugins(profile, named):
        schema = full_schema(profile)
    else:
        from corral.transports.zmq.kernel_options import KERNEL_OPTIONS

        schema = Schema()
        declare(schema)
        for option in KERNEL_OPTIONS:  # declared by the core plugin when plugins load
            schema.add(option)
    config = load_config(schema, profile=profile, environ=environ, overrides=overrides)
    _check_launchers(config)
    if options:
        _apply_launcher_options(config, options)
    return config


def _check_launchers(config: Config) -> None:
    from corral.plugins.parallel.controller.policies import get_policy
    from corral.plugins.parallel.launchers.registry import get_launchers

    try:
        get_policy(config.get("controller", "policy"))
    except ValueError as error:
        where = config.source("controller", "policy")
        raise ConfigError(f"{where}: [controller] policy: {error}") from None

    for key in ("engines", "controller"):
        try:
            get_launchers(config.get("cluster", key))
        except ValueError as error:
            where = config.source("cluster", key)
            raise ConfigError(f"{where}: [cluster] {key}: {error}") from None


def _apply_launcher_options(config: Config, options: Mapping[str, Any]) -> None:
    """Keyword arguments that are neither cluster options nor known to the launchers
    in use fail like an unknown key in a file does."""
    sections = [f"launcher:{config.get('cluster', key)}" for key in ("engines", "controller")]
    sections = [s for s in dict.fromkeys(sections) if s in config.schema.sections()]
    for key, value in options.items():
        where = f"argument {key}"
        if "." in key:  # "engine.timeout": any declared option, spelt section.key
            section, _, name = key.rpartition(".")
            config.apply(config.schema.lookup(section, name, where=where), value, where)
            continue
        for section in ("cluster", *sections):
            keys = {option.key: option for option in config.schema.options(section)}
            if key in keys:
                config.apply(keys[key], value, where)
                break
        else:
            known = sorted(o.key for o in config.schema.options("cluster"))
            for section in sections:
                known += [f"{o.key} ({section})" for o in config.schema.options(section)]
            raise ConfigError(
                f"{where}: unknown option {key!r} for this cluster"
                f"{_other_launchers_hint(config, key, sections)}; accepted: {', '.join(known)}"
            )


def _other_launchers_hint(config: Config, key: str, in_use: list[str]) -> str:
    """`` (an option of the ssh launcher, not in use: ...)`` when launchers other than
    those in use declare ``key``: ``hosts=`` with the local launcher is a missing
    ``engines="ssh"``, not a typo."""
    owners = [
        section.removeprefix("launcher:")
        for section in config.schema.sections()
        if section.startswith("launcher:")
        and section not in in_use
        and any(option.key == key for option in config.schema.options(section))
    ]
    if not owners:
        return ""
    names = " / ".join(owners)
    return (
        f" (an option of the {names} launcher, which this cluster does not use: choose it "
        f"with engines='{owners[0]}', `--launcher {owners[0]}`, or [cluster] engines = "
        f"{owners[0]})"
    )
