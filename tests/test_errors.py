"""One exception hierarchy: every exception class corral defines derives from CorralError.

The check imports every module of the package (as a user's ``import`` would), so a new
error class anywhere that forgets the base fails here rather than in a user's ``except``.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from collections import defaultdict

import pytest

import corral
from corral.errors import CorralError


def _corral_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(corral.__path__, "corral.")
        if not info.name.endswith("__main__")
    ]


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for name in _corral_modules():
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            if (error.name or "").startswith("corral"):
                raise  # a broken corral import is a failure, not a missing extra
            continue  # an optional dependency (prompt_toolkit, distributed...) not installed
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                found.append(obj)
    return found


def test_every_module_imports_and_defines_some_errors() -> None:
    classes = _exception_classes()
    # The scan would pass vacuously if it found nothing (a wrong package path, say).
    assert len(classes) >= 30
    modules = {cls.__module__ for cls in classes}
    assert "corral.transports.zmq.wire" in modules and "corral.core.config" in modules


def test_every_exception_class_derives_from_corral_error() -> None:
    strays = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _exception_classes()
        if not issubclass(cls, CorralError)
    ]
    assert strays == []


def test_exception_class_names_are_unique() -> None:
    by_name: dict[str, set[str]] = defaultdict(set)
    for cls in _exception_classes():
        by_name[cls.__name__].add(cls.__module__)
    assert {name: mods for name, mods in by_name.items() if len(mods) > 1} == {}


@pytest.mark.parametrize(
    ("path", "builtin"),
    [
        ("corral.transports.zmq.client.MessageTimeout", TimeoutError),
        ("corral.core.config.ConfigError", ValueError),
        ("corral.plugins.parallel.client.errors.ControllerLost", ConnectionError),
        ("corral.transports.zmq.wire.BadSignature", ValueError),
        ("corral.core.serialize.DeserializationError", ValueError),
        ("corral.plugins.parallel.launchers.base.LaunchError", RuntimeError),
    ],
)
def test_builtin_bases_kept_where_users_catch_them(path: str, builtin: type) -> None:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, CorralError) and issubclass(cls, builtin)


def test_remote_errors_survive_pickling_with_the_new_base() -> None:
    """Errors travel from engines to clients pickled: the base must not break that."""
    from corral.plugins.parallel.client.errors import EngineError, RemoteError

    error = EngineError("EngineError", "engine 3 died", [])
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is EngineError and isinstance(again, RemoteError)
    assert isinstance(again, CorralError) and again.evalue == "engine 3 died"


def test_the_engine_join_error_is_not_the_clients_engine_error() -> None:
    from corral.plugins.parallel.client.errors import EngineError
    from corral.plugins.parallel.engine import EngineJoinError

    assert EngineJoinError is not EngineError
    assert EngineJoinError.__name__ == "EngineJoinError"
