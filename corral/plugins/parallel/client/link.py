"""The interface between a :class:`~.client.Client` and the views and results it makes.

Views used to reach into the client's private names (``client._submit``,
``client._resolve_targets``, ...), and ``views`` imported ``client`` while ``client``
imported ``views``: an import cycle, and a contract nobody had written down. This is that
contract. A :class:`ClientLink` names every operation a view may ask of its client, as
public attributes; it is the one module that touches the client's internals, and views
import it instead of the client module (the client's type only under ``TYPE_CHECKING``).

The client keeps its internals; the link binds them once per view (a handful of bound
methods, no calls added on the hot path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client

__all__ = ["ClientLink"]


class ClientLink:
    """What a view may ask of its client.

    * :attr:`submit` ``(channel, msg_type, content, metadata, routes, ...)`` sends one
      request per route and returns the result object;
    * :attr:`apply` / :attr:`apply_wait` send one ``apply_request`` (the latter runs it
      on a local engine and waits);
    * :attr:`broadcast` sends one request every target answers;
    * :attr:`routes` builds the routes sending the same buffers to each target;
    * :attr:`resolve_targets` turns an int, slice, list or ``"all"`` into engine ids;
    * :attr:`data_channels` names engines' direct data paths (None where one is not
      up), opening them all before waiting once;
    * :attr:`results_of` finds the result objects of msg_ids or results;
      :meth:`outstanding_results` the unfinished ones of direct or load-balanced views;
    * :meth:`engine_ident`, :meth:`shipped`, :attr:`has_engines`, and the one-shot
      "no engines yet" warning state (:meth:`warn_once_without_engines`).

    .. versionadded:: 0.1
    """

    __slots__ = (
        "client",
        "submit",
        "apply",
        "apply_wait",
        "broadcast",
        "routes",
        "resolve_targets",
        "data_channels",
        "results_of",
    )

    def __init__(self, client: Client) -> None:
        self.client = client
        self.submit = client._submit
        self.apply = client._apply
        self.apply_wait = client._apply_wait
        self.broadcast = client._broadcast
        self.routes = client._routes
        self.resolve_targets = client._resolve_targets
        self.data_channels = client._data_channels_for
        self.results_of = client._results_of

    @property
    def has_engines(self) -> bool:
        """Whether any engine is registered now."""
        return bool(self.client._engines)

    def engine_id_of(self, uuid: str) -> int | None:
        """The id of the registered engine ``uuid`` (None if this client knows none)."""
        for eid, info in self.client._engines.items():  # not .engines: a copy per call
            if info.uuid == uuid:
                return int(eid)
        return None

    def engine_ident(self, engine_id: int) -> bytes:
        """The routing identity of engine ``engine_id`` on the queues."""
        return self.client._engine(engine_id).ident

    def shipped(self, func: Any) -> Any:
        """``func`` as it travels: the client's cache of functions already sent."""
        return self.client._functions.lookup(func)

    def outstanding_results(self, direct: bool) -> list[Any]:
        """The client's unfinished results sent to named engines (``direct``: by direct
        and broadcast views) or else through the load balancer. A view's ``abort()``
        with no jobs aborts its own kind only, as an ipyparallel view aborts only the
        tasks it sent: ``lview.abort()`` leaves a direct view's queued work alone."""
        from .asyncresult import BroadcastResult

        client = self.client
        routed = client._direct

        def sent_direct(result: Any) -> bool:
            return isinstance(result, BroadcastResult) or any(m in routed for m in result.msg_ids)

        return [r for r in client._results_of(None) if sent_direct(r) == direct]

    def warn_once_without_engines(self, warn: Any) -> None:
        """Call ``warn()`` once per client while it has no engines; re-arm when engines
        come, so the next engineless stretch is told again."""
        client = self.client
        if client._engines:
            client._said_no_engines = False
        elif not getattr(client, "_said_no_engines", False):
            client._said_no_engines = True
            warn()
