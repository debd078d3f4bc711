"""Installing corral as a Jupyter kernel: a ``kernel.json`` in the standard data dirs.

Jupyter finds kernels in ``<data dir>/kernels/<name>/kernel.json``; this writes one whose
``argv`` starts this interpreter with :mod:`corral.plugins.kernel_main`, so
jupyter_client, nbclient, ``jupyter console`` and JupyterLab can start corral kernels.

The spec can also name corral's kernel provisioner (:mod:`.provisioner`), which saves
jupyter_client frontends 100-200 ms on every kernel start. But jupyter_client refuses a
kernelspec whose provisioner it cannot load, and a per-user spec is read by every
Jupyter of that user, also one in an environment without corral. So by default the
provisioner is named only in specs installed into an environment (``sys_prefix`` or
``prefix``) whose own corral is installed with the provisioner's entry point; a per-user
spec names it only when asked (``provisioner=True``, ``--provisioner``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from corral.transports.zmq.kernel_main import KERNEL_MODULE

__all__ = ["PROVISIONER_NAME", "add_kernel_cli", "install_kernelspec", "kernel_json", "kernels_dir"]

DEFAULT_NAME = "corral"

#: The provisioner's name under the ``jupyter_client.kernel_provisioners`` entry points.
PROVISIONER_NAME = "corral-provisioner"


def provisioner_available() -> bool:
    """Whether this environment's jupyter_client can load corral's provisioner: both are
    installed, with the entry point (not so for a checkout used through PYTHONPATH)."""
    if importlib.util.find_spec("jupyter_client") is None:
        return False
    from importlib.metadata import entry_points

    return bool(entry_points(group="jupyter_client.kernel_provisioners", name=PROVISIONER_NAME))


def kernel_json(
    display_name: str | None = None, *, provisioner: bool | None = None
) -> dict[str, Any]:
    """The ``kernel.json`` content for this Python; ``provisioner=None`` names corral's
    provisioner if :func:`provisioner_available` (see the module doc)."""
    major_minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    from .debugger import debugger_available

    # JupyterLab offers its debugger for a kernel only when its spec says it has one.
    metadata: dict[str, Any] = {
        "debugger": debugger_available(),
        "supported_encryption": ["curve"],
    }
    if provisioner_available() if provisioner is None else provisioner:
        metadata["kernel_provisioner"] = {"provisioner_name": PROVISIONER_NAME}
    return {
        "argv": [
            sys.executable,
            "-m",
            KERNEL_MODULE,
            "-f",
            "{connection_file}",
        ],
        "display_name": display_name or f"Python {major_minor} (corral)",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": metadata,
    }


def _user_data_dir() -> Path:
    try:
        from jupyter_core.paths import jupyter_data_dir
    except ImportError:
        base = os.environ.get("JUPYTER_DATA_DIR") or os.path.join(
            os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "jupyter"
        )
        return Path(base)
    return Path(jupyter_data_dir())


def kernels_dir(
    *, user: bool = False, sys_prefix: bool = False, prefix: str | os.PathLike[str] | None = None
) -> Path:
    """The ``kernels`` directory for exactly one of ``user``, ``sys_prefix``, ``prefix``."""
    if sum((bool(user), bool(sys_prefix), prefix is not None)) != 1:
        raise ValueError("choose exactly one of user=True, sys_prefix=True or prefix=PATH")
    if user:
        return _user_data_dir() / "kernels"
    base = Path(sys.prefix) if sys_prefix else Path(prefix)  # type: ignore[arg-type]
    return base / "share" / "jupyter" / "kernels"


def install_kernelspec(
    user: bool = True,
    sys_prefix: bool = False,
    prefix: str | os.PathLike[str] | None = None,
    name: str = DEFAULT_NAME,
    display_name: str | None = None,
    provisioner: bool | None = None,
) -> Path:
    """Write the kernelspec; returns its directory. ``sys_prefix``/``prefix`` override ``user``."""
    if sys_prefix or prefix is not None:
        user = False
    directory = kernels_dir(user=user, sys_prefix=sys_prefix, prefix=prefix) / name
    # Whatever the umask: under ``umask 000`` ``mkdir(parents=True)`` made every missing
    # directory (``~/.local/share/jupyter/kernels/corral`` included) writable by all, so
    # another user could swap in a kernel.json whose argv Jupyter would run as this one.
    # A per-user spec is owner-only, like everything else corral writes; one installed
    # into an environment is for its other users to read, and for nobody else to write.
    dir_mode, file_mode = (0o700, 0o600) if user else (0o755, 0o644)
    _make_dirs(directory, dir_mode)
    if provisioner is None and user:
        provisioner = False  # every Jupyter of this user reads it (see the module doc)
    spec = kernel_json(display_name, provisioner=provisioner)
    tmp = directory / "kernel.json.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), file_mode)
        fh.write(json.dumps(spec, indent=1) + "\n")
    os.replace(tmp, directory / "kernel.json")
    return directory


def _make_dirs(directory: Path, mode: int) -> None:
    """``directory`` and its missing parents with ``mode`` (not filtered by the umask);
    ``directory`` itself, if it exists and is ours, is set to ``mode`` too."""
    from corral.core.private import make_missing_dirs

    make_missing_dirs(directory, mode)
    if directory.stat().st_uid == os.getuid():
        os.chmod(directory, mode)


def add_kernel_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``kernel install`` to a ``corral`` argparse subparsers object."""
    kernel = subparsers.add_parser("kernel", help="manage the Jupyter kernelspec")
    actions = kernel.add_subparsers(dest="kernel_command", required=True)
    install = actions.add_parser("install", help="install corral as a Jupyter kernel")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="per-user data dir (default)")
    where.add_argument("--sys-prefix", action="store_true", help="sys.prefix/share/jupyter")
    where.add_argument("--prefix", help="PREFIX/share/jupyter")
    install.add_argument("--name", default=DEFAULT_NAME)
    install.add_argument("--display-name", default=None)
    install.add_argument(
        "--provisioner",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="name corral's jupyter_client provisioner: kernels answer 100-200 ms sooner,"
        " but a Jupyter without corral installed cannot start the kernel (default: yes for"
        " --sys-prefix/--prefix installs when this environment has it, no for --user)",
    )
    install.set_defaults(run=_install_command)
    return kernel


def _install_command(args: argparse.Namespace, config: Any = None) -> int:
    path = install_kernelspec(
        user=not (args.sys_prefix or args.prefix),
        sys_prefix=args.sys_prefix,
        prefix=args.prefix,
        name=args.name,
        display_name=args.display_name,
        provisioner=args.provisioner,
    )
    print(f"installed kernelspec {args.name!r} in {path}")
    spec = json.loads((path / "kernel.json").read_text(encoding="utf-8"))
    if "kernel_provisioner" not in spec["metadata"] and provisioner_available():
        print(
            "tip: if Jupyter runs in this environment, add --provisioner: kernels then answer"
            " their first request 100-200 ms sooner"
        )
    return 0
