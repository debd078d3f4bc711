"""Entry points that start from nothing: they make a ``Client()`` of the default profile.

``%load_ext corral``, the ``%px`` magics before any ``view.activate()``, and
``corral.register_joblib_backend()`` without a view all need a client nobody passed
them. Making one means importing :mod:`.client`, which imports the views, which offer
``activate()`` and ``register_joblib_backend()``: kept inside :mod:`.magics` and
:mod:`.joblib_backend`, that was an import cycle through the whole client package. So
those modules take a *factory* for their default view, and the factories live here, at
the top of the package, where importing the client is an arrow pointing down.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "default_direct_view",
    "default_load_balanced_view",
    "load_ipython_extension",
    "register_joblib_backend",
]


def default_direct_view() -> Any:
    """What ``%px`` uses until a view is activated: all engines of the first client this
    process made that is still usable (ipyparallel activates the first ``Client``), else
    of ``Client()``, blocking (as ipyparallel's ``rc.activate()``)."""
    from .client import Client, first_usable_client

    client = first_usable_client() or Client()
    view = client.direct_view("all")
    view.block = True
    return view


def default_load_balanced_view() -> Any:
    """What a joblib backend registered without a view runs on."""
    from .client import Client

    return Client().load_balanced_view()


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext corral``: the %px magics, on all engines of ``Client()`` (connected at
    the first %px) unless a view is activated."""
    from .magics import ParallelMagics, register_ipython

    magics = getattr(shell, "_corral_px_magics", None)
    if magics is None:
        magics = ParallelMagics(None, view_factory=default_direct_view)
        shell._corral_px_magics = magics
    register_ipython(shell, magics)


def register_joblib_backend(
    name: str = "corral", make_default: bool = False, view: Any = None
) -> None:
    """Register a joblib backend called ``name`` running on ``view`` (default: a
    load-balanced view of ``Client()``, connected on first use).

    Then ``with joblib.parallel_backend(name):`` runs ``Parallel`` / ``n_jobs`` work on
    the cluster; ``make_default=True`` makes it joblib's default backend.

    .. versionadded:: 0.1
    """
    from .joblib_backend import register
    from .views import LoadBalancedView

    if view is not None and not isinstance(view, LoadBalancedView):
        # A direct view would run every batch on each of its engines.
        view = view.client.load_balanced_view(view.targets)
    register(name, make_default, view=view, view_factory=default_load_balanced_view)
