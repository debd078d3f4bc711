"""Shared test configuration: a sandboxed home, the ``process``/``slow`` markers, SIGINT.

Three things every test gets, so no test file has to remember them:

* **A sandbox.** Before any test module is imported, ``HOME``, ``CORRAL_DIR``,
  ``IPYTHONDIR``, the ``JUPYTER_*`` directories and the XDG base directories point into one
  temporary directory per session, removed at the end. Child processes inherit it, so a
  kernel's log or an engine's profile never lands in the user's real ``~/.corral`` or
  ``~/.ipython``. Fixtures that ``monkeypatch.setenv("CORRAL_DIR", ...)`` still win for their
  test, and monkeypatch restores the sandbox after it.
* **Markers.** ``process`` marks every test of a file that starts processes, ``slow`` those
  of files that take minutes or need outside systems (a browser, a batch system, sshd,
  fuzzing). They are applied here from the two lists below, not written in the files: the
  lists are the one place to update, and ``tests/test_conftest.py`` fails when a file that
  starts processes is missing from ``PROCESS_FILES``. ``pytest -m "not process"`` is the
  fast subset (CONTRIBUTING.md).
* **SIGINT restored.** Some CI runners start the suite with SIGINT ignored. An ignored
  signal is inherited through ``exec``, so every kernel and engine would ignore the
  interrupts the tests send. A handled signal is reset to its default in an exec'd child,
  so installing Python's default handler here is enough for the session and its children.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

#: Test files that start processes (kernels, engines, controllers, consoles, daemons).
PROCESS_FILES: frozenset[str] = frozenset(
    {
        "test_bridge.py",
        "test_notebook_realistic.py",
        "test_parallel_cluster_sets.py",
        "test_parallel_shards_api.py",
        "test_parallel_curve_stall.py",
        "test_parallel_data_channel_race.py",
        "test_parallel_data_unreachable.py",
        "test_parallel_network_blips2.py",
        "test_zerocopy_exit.py",
        "test_parallel_late_subscriber.py",
        "test_parallel_seal_mitm.py",
        "test_parallel_replay_memory.py",
        "test_keyfile.py",
        "test_parallel_coalesce.py",
        "test_parallel_task_feed.py",
        "test_parallel_engine_plugins.py",
        "test_bridge_zmq.py",
        "test_cluster_config.py",
        "test_conftest.py",
        "test_console.py",
        "test_attacks_more.py",
        "test_extension_hooks.py",
        "test_frames_chunked.py",
        "test_frontend_plugin_example.py",
        "test_ipc_claims.py",
        "test_ipp_client.py",
        "test_ipp_console.py",
        "test_ipp_dask.py",
        "test_ipp_joblib.py",
        "test_ipp_magics.py",
        "test_ipp_names.py",
        "test_ipp_notebook.py",
        "test_notebook_outputs.py",
        "test_ipp_scripts.py",
        "test_ipp_scripts_more.py",
        "test_jupyterlab_browser.py",
        "test_kernel_client.py",
        "test_kernel_debugger.py",
        "test_kernel_ipython_compat.py",
        "test_kernel_magics.py",
        "test_kernel_manager.py",
        "test_kernel_options.py",
        "test_kernel_parallel_requests.py",
        "test_kernel_orphans.py",
        "test_kernel_private.py",
        "test_kernel_protocol.py",
        "test_kernel_provisioner.py",
        "test_kernel_security.py",
        "test_kernelspec.py",
        "test_launcher_mpi.py",
        "test_launcher_plugin.py",
        "test_launcher_scripts.py",
        "test_launcher_sge.py",
        "test_launcher_slurm.py",
        "test_launcher_ssh.py",
        "test_layers.py",
        "test_lazy_exports.py",
        "test_monitor.py",
        "test_notebook_parallel.py",
        "test_notebook_parity.py",
        "test_parallel_bind_kernel.py",
        "test_parallel_cli.py",
        "test_parallel_client.py",
        "test_parallel_client_failure.py",
        "test_parallel_cluster.py",
        "test_parallel_controller.py",
        "test_parallel_controller_loss.py",
        "test_parallel_curve.py",
        "test_parallel_engine.py",
        "test_parallel_engine_dropped.py",
        "test_parallel_network_blips.py",
        "test_parallel_engine_fuzz.py",
        "test_parallel_events.py",
        "test_parallel_flow.py",
        "test_parallel_fuzz.py",
        "test_parallel_hub_open.py",
        "test_parallel_local.py",
        "test_parallel_nonumpy.py",
        "test_parallel_replay.py",
        "test_parallel_restart_replay.py",
        "test_parallel_scheduling.py",
        "test_parallel_lb_busy.py",
        "test_parallel_security.py",
        "test_parallel_shards.py",
        "test_parallel_simengine.py",
        "test_parallel_wrong_data.py",
        "test_plugins.py",
        "test_private_files.py",
        "test_processes.py",
        "test_run.py",
        "test_serialize.py",
    }
)

#: Test files that take minutes or need a browser, a batch system, sshd or MPI.
SLOW_FILES: frozenset[str] = frozenset(
    {
        "test_jupyterlab_browser.py",
        "test_launcher_mpi.py",
        "test_launcher_sge.py",
        "test_launcher_slurm.py",
        "test_launcher_ssh.py",
        "test_notebook_parity.py",
        "test_parallel_engine_fuzz.py",
        "test_parallel_fuzz.py",
        "test_ipp_dask.py",
        "test_ipp_notebook.py",
    }
)

#: Variables pointed into the sandbox, each to its own subdirectory.
SANDBOX_DIRS: dict[str, str] = {
    "HOME": "home",
    "USERPROFILE": "home",  # what Windows' Path.home() reads
    "CORRAL_DIR": "home/.corral",
    "IPYTHONDIR": "home/.ipython",
    "JUPYTER_CONFIG_DIR": "home/.jupyter",
    "JUPYTER_DATA_DIR": "home/.local/share/jupyter",
    "JUPYTER_RUNTIME_DIR": "home/.local/share/jupyter/runtime",
    "XDG_CONFIG_HOME": "home/.config",
    "XDG_DATA_HOME": "home/.local/share",
    "XDG_CACHE_HOME": "home/.cache",
    "MPLCONFIGDIR": "home/.config/matplotlib",
}

_saved_env: dict[str, str | None] = {}
_sandbox: Path | None = None


def _enter_sandbox() -> Path:
    """Point the home-relative variables into a new temporary directory; return it."""
    root = Path(tempfile.mkdtemp(prefix="corral-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    real_home = Path.home()
    for name, sub in SANDBOX_DIRS.items():
        _saved_env[name] = os.environ.get(name)
        path = root / sub
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    # pyenv's shims find their versions under $HOME unless told where: keep the real ones.
    if "PYENV_ROOT" not in os.environ and (real_home / ".pyenv").is_dir():
        _saved_env["PYENV_ROOT"] = None
        os.environ["PYENV_ROOT"] = str(real_home / ".pyenv")
    return root


def _leave_sandbox() -> None:
    """Restore the variables saved by :func:`_enter_sandbox`.

    The directory itself is removed at interpreter exit (registered by
    :func:`_enter_sandbox`, so after the ``atexit`` hooks registered later run first):
    an IPython shell a test made writes its history there from its own ``atexit`` hook.
    """
    for name, value in _saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_env.clear()


def restore_sigint() -> None:
    """Handle SIGINT with Python's default handler if it was ignored (see module docstring)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    """Runs before test modules are imported, so import-time paths see the sandbox."""
    global _sandbox
    restore_sigint()
    if _sandbox is None:
        _sandbox = _enter_sandbox()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _sandbox
    if _sandbox is not None:
        _leave_sandbox()
        _sandbox = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its file's membership in :data:`PROCESS_FILES` / :data:`SLOW_FILES`."""
    for item in items:
        name = item.path.name
        if name in PROCESS_FILES:
            item.add_marker(pytest.mark.process)
        if name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def sandbox_home() -> Path:
    """The session's sandboxed ``HOME`` (every test already runs with it)."""
    return Path(os.environ["HOME"])
