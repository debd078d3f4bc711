"""A jupyter_client kernel provisioner that returns once the kernel has bound its ports.

jupyter_client starts a kernel and connects its client sockets right away, long before
the new process has bound anything. The first connection attempt is refused, and libzmq
waits its reconnect interval (100 ms, plus a random jitter of up to another 100 ms)
before it tries again. So every jupyter_client frontend (nbclient, JupyterLab,
``jupyter console``) waits 100-200 ms for the kernel's first reply however fast the
kernel starts.

This provisioner removes that wait. It hands the kernel the write end of a pipe (its
number in :data:`READY_FD_ENV`); :mod:`.kernel_main` writes one byte there right after
binding. ``launch_kernel`` returns when that byte arrives, so the client's first connect
finds the ports open. Nothing is polled: the wait is a read on the pipe, which also ends
at once if the kernel dies before binding (end of file), and after
:attr:`CorralProvisioner.ready_timeout` seconds (10) at the latest; after either, jupyter_client
carries on exactly as it would have without this provisioner.

Kernelspecs name it in ``metadata.kernel_provisioner.provisioner_name``
(:data:`.kernelspec.PROVISIONER_NAME`, registered under the ``jupyter_client.kernel_provisioners``
entry point group). Windows has no ``pass_fds``: there the provisioner only launches.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Float

from .kernel_main import READY_FD_ENV

__all__ = ["CorralProvisioner"]


class CorralProvisioner(LocalProvisioner):  # type: ignore[misc]
    """:class:`LocalProvisioner` whose ``launch_kernel`` waits for the kernel to bind."""

    ready_timeout = Float(
        10.0,
        config=True,
        help="Seconds to wait for the kernel to bind before handing it to the client anyway.",
    )

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the kernel, then wait until it says its sockets are bound."""
        if os.name != "posix":
            return await super().launch_kernel(cmd, **kwargs)
        read_fd, write_fd = os.pipe()
        try:
            env = dict(kwargs.get("env") or os.environ)
            env[READY_FD_ENV] = str(write_fd)
            kwargs["env"] = env
            kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), write_fd)
            try:
                info = await super().launch_kernel(cmd, **kwargs)
            finally:
                # The kernel holds its own copy now; ours would keep end-of-file from
                # arriving should the kernel die before it binds.
                os.close(write_fd)
            await self._wait_until_bound(read_fd)
        finally:
            os.close(read_fd)
        return info

    async def _wait_until_bound(self, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        signalled: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not signalled.done():
                signalled.set_result(None)

        loop.add_reader(read_fd, readable)
        try:
            await asyncio.wait_for(signalled, self.ready_timeout)
        except asyncio.TimeoutError:
            self.log.warning(
                "kernel %s did not report its ports bound within %.0f s; connecting anyway",
                self.kernel_id,
                self.ready_timeout,
            )
        finally:
            loop.remove_reader(read_fd)
        # One byte means bound; end of file means the kernel ended first. Either way the
        # caller goes on, and jupyter_client notices a dead kernel as it always does.
