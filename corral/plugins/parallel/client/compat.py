"""The ipyparallel-shaped parts of :class:`~.client.Client` that the core client does not need.

ipyparallel's users reach for ``rc.wait()``, ``rc.outstanding``, ``rc.history``,
``rc.hub_history()``, ``rc.resubmit()`` and ``rc.send_signal()`` in everyday scripts. They
are built here on the client's own machinery (its pending table, its hub requests, its
control requests), so the core client stays about sending and receiving, and none of this
adds work to a task's path.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .asyncresult import AsyncResult
from .bymsgid import MetadataView, ResultsView

if TYPE_CHECKING:
    from .client import Client
    from .messages import Parsed

__all__ = ["ClientCompat", "connection_source", "control_result", "forever"]


def forever(timeout: float | None) -> float | None:
    """ipyparallel spells "no timeout" ``-1``; corral ``None``. Both mean wait forever."""
    if timeout is None or timeout < 0:
        return None
    return float(timeout)


def control_result(
    futures: list[concurrent.futures.Future[Parsed]],
) -> concurrent.futures.Future[None]:
    """One future for several control replies: done when all are, failing like the first
    error reply (a ``RemoteError``)."""
    from .errors import error_from_content

    combined: concurrent.futures.Future[None] = concurrent.futures.Future()
    remaining = [len(futures)]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one_done(future: concurrent.futures.Future[Parsed]) -> None:
        content = future.result().content
        with lock:
            if content.get("status", "ok") == "error":
                errors.append(error_from_content(content))
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            if errors:
                combined.set_exception(errors[0])
            else:
                combined.set_result(None)

    if not futures:
        combined.set_result(None)
    for future in futures:
        future.add_done_callback(one_done)
    return combined


def connection_source(
    profile: str, connection_file: str | Path | None, url_file: str | Path | None
) -> tuple[str, str | Path | None]:
    """``(profile, connection_file)`` from ``Client``'s arguments, ipyparallel's
    spellings included: ``url_file=`` names the connection file, and so does a first
    positional argument that is a path (``Client("/path/cluster.json")``: ipyparallel's
    first parameter is the file; a profile name never holds a slash or ends in .json)."""
    if url_file is not None:
        if connection_file is not None:
            raise TypeError("give connection_file or url_file, not both")
        connection_file = url_file
    if isinstance(profile, Path) or (
        isinstance(profile, str)
        and ("/" in profile or os.sep in profile or profile.endswith(".json"))
    ):
        if connection_file is not None:
            raise TypeError(f"{profile!r} is a file, and connection_file is given too")
        return "default", profile
    return profile, connection_file


async def _ready(value: Any) -> Any:
    return value


class ClientCompat:
    """Mixed into :class:`~.client.Client`: ipyparallel's bookkeeping calls."""

    # Provided by Client.
    _pending: dict[str, AsyncResult]
    _recent: Any
    _history: Any
    _engines: dict[int, Any]
    timeout: float

    @property
    def outstanding(self) -> set[str]:
        """msg_ids of this client's tasks whose replies have not arrived yet."""
        return set(self._pending)

    def __await__(self) -> Generator[Any, None, Any]:
        """A client is connected once it exists; awaiting it gives it back, so
        ipyparallel's ``rc = await cluster.connect_client()`` runs unchanged."""
        return _ready(self).__await__()

    @property
    def results(self) -> ResultsView:
        """``{msg_id: value or RemoteError}`` of this client's finished tasks that it still
        holds (a live view; see :mod:`.bymsgid`)."""
        return ResultsView(self)

    @property
    def metadata(self) -> MetadataView:
        """``{msg_id: metadata dict}`` of this client's tasks that it still holds,
        pending ones included (a live view; see :mod:`.bymsgid`)."""
        return MetadataView(self)

    @property
    def history(self) -> list[str]:
        """msg_ids this client submitted, oldest first (the newest 50,000; the hub's
        :meth:`hub_history` has every task of the cluster)."""
        return list(self._history)

    def hub_history(self, timeout: float | None = None) -> list[str]:
        """msg_ids of every task the hub has recorded, in submission order."""
        records = self.db_query({"msg_id": {"$ne": None}}, ["submitted"], timeout)  # type: ignore[attr-defined]
        records.sort(key=lambda r: r.get("submitted") or "")
        return list(dict.fromkeys(r["msg_id"] for r in records))

    def _results_of(self, jobs: Any) -> list[AsyncResult]:
        """The live results named by ``jobs``: results, msg_ids, history indices."""
        if jobs is None:
            return list({id(r): r for r in self._pending.values()}.values())
        if isinstance(jobs, (AsyncResult, str, int)):
            jobs = [jobs]
        out: dict[int, AsyncResult] = {}
        history: list[str] | None = None
        for job in jobs:
            if isinstance(job, AsyncResult):
                out[id(job)] = job
                continue
            if isinstance(job, int) and not isinstance(job, bool):
                history = self.history if history is None else history
                job = history[job]
            if not isinstance(job, str):
                raise TypeError(f"jobs are AsyncResults, msg_ids or history indices, not {job!r}")
            result = self._pending.get(job) or self._recent.get(job)
            if result is None:
                result = self.get_result(job)  # type: ignore[attr-defined]
            out[id(result)] = result
        return list(out.values())

    def wait(self, jobs: Any = None, timeout: float | None = -1) -> bool:
        """Wait until ``jobs`` (results, msg_ids or indices into :attr:`history`; None: every
        outstanding task of this client) are done, or ``timeout`` seconds (``-1``/None:
        forever) pass. Whether all are done; never raises for failed tasks."""
        results = self._results_of(jobs)
        if not results:
            return True
        _, not_done = concurrent.futures.wait(results, forever(timeout))
        return not not_done

    def abort(
        self, jobs: Any = None, targets: Any = None, block: bool | None = None
    ) -> concurrent.futures.Future[None] | None:
        """Abort queued tasks: results, msg_ids or history indices (None: every task this
        client has outstanding). A task already running is not stopped (use
        :meth:`send_signal`); its result then fails with :class:`~.errors.TaskAborted` only
        if the abort arrived first. ``targets`` (engine ids) limits the abort to those
        engines' queues, as in ipyparallel: the same tasks elsewhere still run. Waits for
        the engines' acknowledgement, unless ``block=False``: then a future of it."""
        only = None
        if targets is not None:
            resolved = self._resolve_targets(targets)  # type: ignore[attr-defined]
            only = {resolved} if isinstance(resolved, int) else set(resolved)
        futures = []
        for result in self._results_of(jobs):
            futures += self._abort(result, wait=block is not False, only=only)  # type: ignore[attr-defined]
        if block is False:
            return control_result(futures)
        return None

    def resubmit(self, jobs: Any, block: bool | None = None) -> AsyncResult:
        """Send the tasks of ``jobs`` again, as new tasks (new msg_ids), to where they went
        the first time (the same engines, or the load balancer).

        Only requests this client sent and still holds a result for can be resubmitted:
        the hub's database keeps replies, not request bodies.
        """
        results = self._results_of(jobs)
        if not results:
            raise ValueError("nothing to resubmit")
        again = []
        for result in results:
            request = getattr(result, "_request", None)
            if request is None:
                raise ValueError(
                    f"{result!r} cannot be resubmitted: its request was not sent by this "
                    "client (or it is a composite of several requests)"
                )
            again.append(self._resend(result, request))  # type: ignore[attr-defined]
        if len(again) == 1 and not (again[0]._single and isinstance(jobs, (list, tuple))):
            out = again[0]
        else:  # several, or a list of msg_ids: a list of values, as ipyparallel's
            out = _combine_results(self, again)
        if block:
            out.wait()
        return out

    def send_signal(
        self, sig: int | str, targets: Any = None, block: bool | None = None
    ) -> concurrent.futures.Future[None] | None:
        """Send signal ``sig`` (a number or a name such as ``"SIGTERM"``) to the engine
        processes of ``targets`` (all engines by default).

        ``SIGINT`` interrupts the running task, as :meth:`AsyncResult.interrupt` does.
        Blocks until the engines acknowledged unless ``block=False`` (then a future).
        """
        resolved = self._resolve_targets(targets)  # type: ignore[attr-defined]
        ids = [resolved] if isinstance(resolved, int) else resolved
        futures = self._control("signal_request", {"sig": sig}, ids)  # type: ignore[attr-defined]
        return self._finish_control(futures, block, None)

    def wait_interactive(
        self, jobs: Any = None, interval: float = 1.0, timeout: float | None = -1
    ) -> None:
        """Wait for ``jobs`` (None: everything outstanding) with a progress bar."""
        results = self._results_of(jobs)
        if not results:
            return
        from .views import _Combined

        # Mixed into Client: self is the client the combined result belongs to.
        combined = _Combined(cast("Client", self), results, False, "tasks", False)
        combined.wait_interactive(interval=interval, timeout=forever(timeout))

    def purge_everything(self) -> int:
        """Forget every finished task in the hub's database and this client's
        :attr:`history`, as ipyparallel's does; how many records the hub purged."""
        purged: int = self.purge_results("all")  # type: ignore[attr-defined]
        self._history.clear()
        return purged

    def purge_hub_results(self, jobs: Any = None, targets: Any = None) -> int:
        """:meth:`purge_results` (the hub's database is the only store)."""
        return self.purge_results(jobs, targets)  # type: ignore[attr-defined,no-any-return]

    def purge_local_results(self, jobs: Any = "all", targets: Any = None) -> None:
        """Drop finished tasks from :attr:`results` and :attr:`metadata`: ``jobs``
        (``"all"``, results, msg_ids) and every task that ran on ``targets`` (engine ids).
        A result you still hold keeps its value; ``get_result(msg_id)`` fetches a purged
        one from the hub. ``RuntimeError`` if any of them is still outstanding."""
        recent = self._recent
        if jobs == "all":
            if self._pending:
                raise RuntimeError(f"can't purge outstanding tasks: {sorted(self._pending)}")
            recent.clear()
            return
        from .client import msg_ids_of

        msg_ids = set(msg_ids_of(jobs or []))
        if targets is not None:
            wanted = {targets} if isinstance(targets, int) else set(targets)
            metadata = self.metadata
            for msg_id in list(recent.keys()):
                md = metadata.get(msg_id)
                if isinstance(md, dict) and md.get("engine_id") in wanted:
                    msg_ids.add(msg_id)
        outstanding = msg_ids & set(self._pending)
        if outstanding:
            raise RuntimeError(f"can't purge outstanding tasks: {sorted(outstanding)}")
        for msg_id in msg_ids:
            recent.pop(msg_id, None)

    def spin(self) -> None:
        """Nothing to do: corral's I/O thread always receives (ipyparallel compatibility)."""

    def spin_thread(self, interval: float = 1) -> None:
        """Nothing to do: corral's I/O thread always receives."""

    def stop_spin_thread(self) -> None:
        """Nothing to do (see :meth:`spin_thread`)."""

    def become_distributed(self, *args: Any, **kwargs: Any) -> Any:
        """The older name of :meth:`become_dask`."""
        return self.become_dask(*args, **kwargs)

    def stop_distributed(self, targets: Any = None) -> None:
        """The older name of :meth:`stop_dask`."""
        self.stop_dask(targets)

    def activate(self, targets: Any = "all", suffix: str = "") -> Any:
        """A blocking direct view on ``targets``, activated for ``%px{suffix}`` & co.
        (see :meth:`DirectView.activate`); the view."""
        view = self.direct_view(targets)  # type: ignore[attr-defined]
        view.block = True
        view.activate(suffix)
        return view

    def become_dask(
        self,
        targets: Any = "all",
        port: int = 0,
        nanny: bool = False,
        scheduler_args: dict[str, Any] | None = None,
        **worker_args: Any,
    ) -> Any:
        """Make the engines of ``targets`` dask workers; a ``distributed.Client`` of them.

        The scheduler runs in this process (on a thread; ``scheduler_args`` go to
        ``distributed.Scheduler``, ``port`` is its port), the workers inside the engines
        (``worker_args`` go to ``distributed.Worker``, ``nthreads`` defaults to 1). They
        talk TLS with a throwaway certificate when ``cryptography`` is installed. Needs
        ``pip install corral[dask]``. See :mod:`.dask`.
        """
        from .dask import become_dask

        return become_dask(self, targets, port, nanny, scheduler_args, **worker_args)

    def stop_dask(self, targets: Any = None) -> None:
        """Stop the dask workers :meth:`become_dask` started, and its scheduler."""
        from .dask import stop_dask

        stop_dask(self, targets)

    def _finish_control(
        self,
        futures: list[concurrent.futures.Future[Parsed]],
        block: bool | None,
        timeout: float | None,
    ) -> concurrent.futures.Future[None] | None:
        """Wait for control replies (raising the first error), or hand back a future."""
        combined = control_result(futures)
        if block is False:
            return combined
        try:
            combined.result(timeout if timeout is not None else self.timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError("engines did not acknowledge the control request") from None
        return None


def _combine_results(
    client: Any, parts: Iterable[AsyncResult], fname: str = "resubmit"
) -> AsyncResult:
    """One result whose value is the list of the parts' values."""
    from .views import _Combined

    return _Combined(client, list(parts), False, fname, False)
