"""ipyparallel's dependency helpers: ``Reference``, ``require``, ``depend``, ``Dependency``.

What runs where:

* ``after``/``follow`` (a :class:`Dependency`, results or msg_ids) are enforced by the
  controller's task scheduler: the task waits until they have succeeded (or, with a
  :class:`Dependency`'s flags, until any of them / their failure is accepted), and fails
  with :class:`~.errors.ImpossibleDependency` once they can never be met
  (``DependencyTimeout`` after ``timeout``).
* :func:`require` and :func:`depend` are checked **on the engine, just before the
  function runs**: the function is wrapped so that the engine first imports the required
  modules (or evaluates the condition) and raises :class:`~.errors.UnmetDependency` if
  that fails. On a load-balanced view the scheduler then sends the task to another
  engine, and fails it with :class:`~.errors.ImpossibleDependency` once every engine
  rejected it, as ipyparallel does; on a direct view the ``UnmetDependency`` is the
  answer.
* :class:`Reference` arguments are looked up in the engine's namespace when the task
  runs (``view.apply(f, Reference("a"))`` calls ``f(a)`` with the engine's ``a``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .errors import UnmetDependency

__all__ = [
    "Dependency",
    "Reference",
    "bind_kernel",
    "depend",
    "dependency_field",
    "dependent",
    "references_in_use",
    "require",
    "use_cloudpickle",
    "use_dill",
    "use_pickle",
    "with_references",
]

# Set once the first Reference is made: until then submitting pays nothing to look for
# them (Client._apply checks this flag only).
_USED = [False]


def references_in_use() -> bool:
    """Whether any :class:`Reference` was ever created in this process."""
    return _USED[0]


class Reference:
    """An argument that stands for a name in the engine's namespace.

    ``view.apply(f, Reference("a"))`` runs ``f(a)`` with each engine's own ``a``; dotted
    paths (``Reference("a.b")``) name attributes, and, as in ipyparallel, any expression
    is evaluated in the engine's namespace (``Reference("g[0]")``). A Reference may also
    stand for the function itself: ``view.map(Reference("f"), xs)``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 expressions, and References as the function.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"a Reference names a variable or an expression, not {name!r}")
        if not all(p.isidentifier() for p in name.split(".")):
            try:
                compile(name, "<Reference>", "eval")
            except SyntaxError:
                raise TypeError(f"a Reference is a name or an expression, not {name!r}") from None
        self.name = name
        _USED[0] = True

    def __repr__(self) -> str:
        return f"<Reference {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("Reference", self.name))


#: Containers longer than this are not searched for References (ipyparallel's
#: ``item_threshold``): an argument of a million items is not walked on every apply.
_SHALLOW = 64


def _make_ref_caller() -> Callable[..., Any]:
    """The engine side of References, shipped by value and run in the engine's namespace
    (``__main__`` functions are rebound there), so ``globals()`` is that namespace."""
    shallow = _SHALLOW  # travels in the closure: the engine's globals() has no _SHALLOW

    def corral_call_with_references(func: Any, args: Any, kwargs: Any) -> Any:
        ns = globals()

        def resolve(value: Any) -> Any:
            if type(value).__name__ != "Reference" or not hasattr(value, "name"):
                return value
            path = value.name.split(".")
            if not all(p.isidentifier() for p in path):  # an expression (ipyparallel's)
                return eval(value.name, ns)
            head, *rest = path
            if head not in ns:
                raise NameError(f"name {head!r} is not defined on this engine")
            found = ns[head]
            for attr in rest:
                found = getattr(found, attr)
            return found

        def resolve_in(value: Any) -> Any:
            # One level into a short plain list, tuple or dict, as ipyparallel does.
            kind = type(value)
            if kind in (list, tuple) and len(value) < shallow:
                return kind(resolve(v) for v in value)
            if kind is dict and len(value) < shallow:
                return {k: resolve(v) for k, v in value.items()}
            return resolve(value)

        func = resolve(func)
        args = [resolve_in(a) for a in args]
        kwargs = {k: resolve_in(v) for k, v in (kwargs or {}).items()}
        return func(*args, **kwargs)

    corral_call_with_references.__module__ = "__main__"
    corral_call_with_references.__qualname__ = "corral_call_with_references"
    return corral_call_with_references


_call_with_references = _make_ref_caller()


def _holds_reference(value: Any) -> bool:
    if isinstance(value, Reference):
        return True
    kind = type(value)
    if kind in (list, tuple) and len(value) < _SHALLOW:
        return any(isinstance(v, Reference) for v in value)
    if kind is dict and len(value) < _SHALLOW:
        return any(isinstance(v, Reference) for v in value.values())
    return False


def with_references(
    func: Callable[..., Any], args: Any, kwargs: dict[str, Any] | None
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any] | None]:
    """``(func, args, kwargs)`` rewritten to resolve References on the engine, if any:
    the function, arguments, and the items of arguments that are short plain lists,
    tuples or dicts (``apply(f, [Reference("a"), Reference("b")])``), as in ipyparallel."""
    values = [func, *args, *(kwargs or {}).values()]
    if not any(_holds_reference(v) for v in values):
        return func, tuple(args), kwargs
    return _call_with_references, (func, tuple(args), dict(kwargs or {})), None


class Dependency(set):  # type: ignore[type-arg]
    """A set of msg_ids a task depends on, for ``after=``/``follow=``, with
    ipyparallel's flags: ``all`` (every one, else any one), ``success`` (a success meets
    it), ``failure`` (a failure meets it). The scheduler enforces them (see
    :mod:`corral.plugins.parallel.controller.dependencies`).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``all=False``, ``success=False`` and ``failure=True``.
    """

    def __init__(
        self,
        dependencies: Iterable[Any] = (),
        all: bool = True,  # noqa: A002 - ipyparallel's keyword
        success: bool = True,
        failure: bool = False,
    ) -> None:
        from .asyncresult import msg_ids_of

        if not (success or failure):
            raise ValueError("a Dependency with success=False and failure=False is never met")
        super().__init__(msg_ids_of(list(dependencies)))
        self.all = all
        self.success = success
        self.failure = failure

    def as_dict(self) -> dict[str, Any]:
        """The form the scheduler reads (ipyparallel's too)."""
        return {
            "dependencies": sorted(self),
            "all": self.all,
            "success": self.success,
            "failure": self.failure,
        }

    def _state(self, completed: Iterable[str], failed: Iterable[str]) -> str:
        from corral.plugins.parallel.controller import dependencies as rules

        done, bad = set(completed), set(failed)
        outcomes = [
            rules.SUCCEEDED if m in done else rules.FAILED if m in bad else rules.PENDING
            for m in sorted(self)
        ]
        spec = rules.Spec(tuple(sorted(self)), self.all, self.success, self.failure)
        return rules.state(spec, outcomes)

    def check(self, completed: Iterable[str], failed: Iterable[str] | None = None) -> bool:
        """Whether the dependency is met, given the msg_ids that succeeded and failed."""
        return self._state(completed, failed or ()) == "met"

    def unreachable(self, completed: Iterable[str], failed: Iterable[str] | None = None) -> bool:
        """Whether it can never be met any more, given what succeeded and failed."""
        return self._state(completed, failed or ()) == "impossible"


def dependency_field(value: Any) -> list[str] | dict[str, Any]:
    """A view's ``after``/``follow`` flag as request metadata: msg_ids, or a flagged
    :class:`Dependency`'s dict."""
    from .asyncresult import msg_ids_of

    if isinstance(value, Dependency) and not (value.all and value.success and not value.failure):
        return value.as_dict()
    return msg_ids_of(value)


def _make_dependent_caller() -> Callable[..., Any]:
    """The engine side of require/depend, run in the engine's namespace (see above)."""

    def corral_dependent(
        func: Any,
        condition: Any,
        condition_args: Any,
        modules: Any,
        args: Any,
        kwargs: Any,
        pushed: Any = None,
        scope: Any = None,
    ) -> Any:
        import importlib

        ns = globals()
        # The function whose globals need the names: func, or (an index into args) the
        # user's function a map's chunk runner calls. An index, not the function: each
        # argument is unpickled on its own, so a second copy would have its own globals.
        scope = func if scope is None else args[scope]
        if pushed:  # require(f) / require(name=value): names the function needs
            ns.update(pushed)
            target = getattr(scope, "__globals__", None)
            if isinstance(target, dict) and target is not ns:
                target.update(pushed)
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise UnmetDependency("UnmetDependency", f"cannot import {name}: {exc}") from None
            top = name.split(".")[0]
            ns[top] = importlib.import_module(top)
            target = getattr(scope, "__globals__", None)
            if isinstance(target, dict):
                target[top] = ns[top]
            del module
        if condition is not None and not condition(*condition_args):
            cname = getattr(condition, "__name__", "condition")
            raise UnmetDependency("UnmetDependency", f"{cname}{tuple(condition_args)} is false")
        return func(*args, **kwargs)

    corral_dependent.__module__ = "__main__"
    corral_dependent.__qualname__ = "corral_dependent"
    return corral_dependent


_dependent_call = _make_dependent_caller()


class dependent:  # noqa: N801 - ipyparallel's name
    """``f`` wrapped so that the engine checks ``condition(*args)`` (and imports
    ``modules``) before running it, raising :class:`UnmetDependency` if not met.

    Calling it locally calls ``f`` directly (the check only makes sense on an engine).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        f: Callable[..., Any],
        df: Callable[..., bool] | None,
        *dargs: Any,
        modules: Iterable[str] = (),
        pushed: dict[str, Any] | None = None,
    ) -> None:
        self.f = f
        self.df = df
        self.dargs = dargs
        self.modules = tuple(modules)
        #: names put in the engine's namespace before the call (``require(f, x=1)``)
        self.pushed = dict(pushed or {})
        functools.update_wrapper(self, f)
        _USED[0] = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.f(*args, **kwargs)

    def _shipped(self, args: Any, kwargs: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """What a view sends instead: the engine-side checker and its arguments."""
        return self._checked(self.f, args, kwargs)

    def _checked(
        self, call: Callable[..., Any], args: Any, kwargs: Any = None, scope: int | None = None
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """``call(*args, **kwargs)`` run behind this function's checks on the engine: a
        map sends its chunk runner (which calls :attr:`f` on each element) this way, so
        the modules are imported and the condition tested once per chunk. ``scope``: the
        index in ``args`` of the function whose globals receive the imported and pushed
        names (None: ``call``'s)."""
        return _dependent_call, (
            call,
            self.df,
            self.dargs,
            self.modules,
            tuple(args),
            dict(kwargs or {}),
            self.pushed,
            scope,
        )


def depend(f: Callable[..., bool], *args: Any) -> Callable[[Callable[..., Any]], dependent]:
    """Decorator: run the function only where ``f(*args)`` is true on the engine.

    ::

        @ipp.depend(lambda: os.path.exists("/data"))
        def work(): ...
    """

    def decorate(func: Callable[..., Any]) -> dependent:
        if isinstance(func, dependent):
            both = _both(func.df, func.dargs, f, args)
            return dependent(func.f, both, modules=func.modules, pushed=func.pushed)
        return dependent(func, f, *args)

    return decorate


def _both(df1: Any, args1: Any, df2: Any, args2: Any) -> Callable[[], bool]:
    def both() -> bool:
        return (df1 is None or bool(df1(*args1))) and bool(df2(*args2))

    return both


def require(*objects: str | ModuleType, **mapping: Any) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: the engine imports these modules before running the function (they are
    then names in its namespace), failing with :class:`UnmetDependency` if it cannot.

    As in ipyparallel, ``objects`` are modules (by name or as module objects) or
    functions, and ``mapping`` gives ``name=value`` pairs: functions and values are put
    in the engine's namespace under their names before the call (``require(helper,
    scale=2)`` lets the function call ``helper`` and read ``scale``).
    """
    names = []
    pushed = dict(mapping)
    for obj in objects:
        if isinstance(obj, ModuleType):
            names.append(obj.__name__)
        elif isinstance(obj, str):
            names.append(obj)
        elif callable(obj) and isinstance(getattr(obj, "__name__", None), str):
            pushed[obj.__name__] = obj
        else:
            raise TypeError(f"require takes modules, module names or functions, not {obj!r}")

    def decorate(func: Callable[..., Any]) -> dependent:
        if isinstance(func, dependent):
            return dependent(
                func.f,
                func.df,
                *func.dargs,
                modules=(*func.modules, *names),
                pushed={**func.pushed, **pushed},
            )
        return dependent(func, None, modules=names, pushed=pushed)

    return decorate


def bind_kernel(**kwargs: Any) -> str:
    """ipyparallel's ``bind_kernel``: run on an engine (``rc[0].apply_sync(bind_kernel)``),
    it serves that engine as a Jupyter kernel too and returns its connection file (see
    :func:`corral.plugins.parallel.engine.bind_kernel`); ``RuntimeError`` elsewhere."""
    from corral.plugins.parallel.engine.bound import bind_kernel as bind

    return bind(**kwargs)


def use_cloudpickle() -> None:
    """Accepted for ipyparallel code; changes nothing: corral already sends by value
    (with cloudpickle) whatever plain pickle would get wrong."""


def use_pickle() -> None:
    """Accepted for ipyparallel code; changes nothing (see :func:`use_cloudpickle`)."""


def use_dill() -> None:
    """Accepted for ipyparallel code; changes nothing: what people switch to dill for
    (lambdas, closures, interactively defined functions) corral already sends by value
    with cloudpickle.

    .. versionchanged:: 0.2 a no-op (it raised ``NotImplementedError``).
    """
