"""The display protocol: turning objects into MIME bundles and publishing them.

``format_object`` asks an object for its rich representations (``_repr_html_``,
``_repr_mimebundle_``, ...) and always adds ``text/plain``. ``display``,
``update_display`` and ``clear_output`` post ``DISPLAY_DATA``, ``UPDATE_DISPLAY_DATA`` and
``CLEAR_OUTPUT`` to the *current* interpreter's center (the one executing now, or the one
that ran last, so a background thread's display still reaches its frontend); with no
interpreter at all they post to ``shared_center`` with the sender ``"corral.display"``.

The rich wrappers (``HTML``, ``Markdown``, ``JSON``, ``Image``, ``Pretty``, ...) are tiny:
each only knows which MIME type it is.
"""

from __future__ import annotations

import base64
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from corral.core.events import CLEAR_OUTPUT, DISPLAY_DATA, UPDATE_DISPLAY_DATA
from corral.notification.center import shared_center

__all__ = [
    "DisplayHandle",
    "DisplayObject",
    "HTML",
    "Image",
    "JSON",
    "Latex",
    "Markdown",
    "Pretty",
    "SVG",
    "clear_output",
    "display",
    "displays_itself",
    "format_object",
    "get_current",
    "set_current",
    "set_formatter",
    "set_plain_options",
    "update_display",
]

#: ``_repr_*_`` method -> MIME type, in the order frontends usually prefer.
REPR_METHODS: dict[str, str] = {
    "_repr_html_": "text/html",
    "_repr_markdown_": "text/markdown",
    "_repr_svg_": "image/svg+xml",
    "_repr_png_": "image/png",
    "_repr_jpeg_": "image/jpeg",
    "_repr_json_": "application/json",
    "_repr_latex_": "text/latex",
    "_repr_javascript_": "application/javascript",
    "_repr_pdf_": "application/pdf",
}
_BINARY = {"image/png", "image/jpeg", "application/pdf"}

_current: Any = None  # the interpreter display() posts through; see set_current

#: Formats objects instead of corral's own rules once IPython is in use (its
#: ``DisplayFormatter.format``), so formatters registered with IPython (``for_type``,
#: matplotlib figures) apply to displays and cell results alike.
_formatter: Any = None

#: ``%precision``'s format for floats in ``text/plain`` (None: ``repr``), and ``%pprint``.
_float_format: str | None = None
_pretty = True


def set_formatter(formatter: Any) -> None:
    """Format objects with ``formatter(obj, include=, exclude=)`` (None: corral's rules)."""
    global _formatter
    _formatter = formatter


def set_current(interpreter: Any) -> None:
    """Make ``interpreter`` (anything with ``center``) the target of display()."""
    global _current
    _current = interpreter


def get_current() -> Any:
    """The interpreter display() posts through, or None."""
    return _current


def _ipython_publisher() -> Any:
    """IPython's display publisher when corral.display runs under an IPython kernel.

    So portable code can use ``corral.display`` under ipykernel too: with no corral
    interpreter in this process, displays go through IPython's shell if there is one.
    """
    module = sys.modules.get("IPython.core.interactiveshell")
    if module is None or not module.InteractiveShell.initialized():
        return None
    shell = module.InteractiveShell.instance()
    ours = sys.modules.get("corral.core.ipython_shell")
    if ours is not None and isinstance(shell, ours.ZMQInteractiveShell):
        return None  # corral's own shell: its interpreter is gone, post as without one
    return getattr(shell, "display_pub", None)


def _target() -> tuple[Any, Any]:
    interp = _current
    if interp is None:
        return shared_center, "corral.display"
    return interp.center, interp


def _encode(mime: str, value: Any) -> Any:
    """JSON-safe form of a representation: binary images become base64 text."""
    if mime in _BINARY and isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def set_plain_options(*, float_format: str | None = None, pretty: bool = True) -> None:
    """How ``text/plain`` is made: ``float_format`` (``"%.3f"``) for floats, even inside
    containers, as ``%precision`` asks; ``pretty=False`` gives bare ``repr`` (``%pprint``)."""
    global _float_format, _pretty
    _float_format, _pretty = float_format, pretty


def _plain(obj: Any, warn: bool = True) -> str:
    try:
        if not _pretty:
            return repr(obj)
        if getattr(type(obj), "_repr_pretty_", None) is not None:
            shown = _ipython_pretty(obj)
            if shown is not None:
                return shown
        text: str = _printer_class()(_float_format).pformat(obj)
        return text
    except Exception as exc:
        # Said, as a failing _repr_html_ is: a broken __repr__ shown silently as
        # <X object at 0x...> hides the user's bug (IPython shows the error).
        if warn:
            _warn(obj, "__repr__", exc)
        return object.__repr__(obj)


def _ipython_pretty(obj: Any) -> str | None:
    """``obj._repr_pretty_`` through IPython's pretty printer, which that method is
    written for (it is handed IPython's printer); None without IPython.

    Imported only for such an object: IPython costs tens of milliseconds, and libraries
    that define only ``_repr_pretty_`` show their own text under ipykernel.
    """
    try:
        from IPython.lib.pretty import pretty
    except ImportError:
        return None
    text: str = pretty(obj)  # type: ignore[no-untyped-call]  # IPython has no annotations
    return text


_printer: Any = None


def _printer_class() -> Any:
    """The pprint subclass behind ``text/plain``, defined on first use (pprint is
    imported lazily here, as everywhere in this module)."""
    global _printer
    if _printer is not None:
        return _printer
    import pprint

    # pprint cuts a long str or bytes into adjacent literals in parentheses, which reads
    # as a tuple (or, inside a list, as several items). IPython shows the one literal.
    whole = (str.__repr__, bytes.__repr__, bytearray.__repr__)
    dispatch = {k: v for k, v in pprint.PrettyPrinter._dispatch.items() if k not in whole}  # type: ignore[attr-defined]

    class Printer(pprint.PrettyPrinter):
        """pprint that keeps strings whole, with floats formatted by ``%precision``'s
        format when one is set."""

        _dispatch = dispatch

        def __init__(self, float_format: str | None) -> None:
            super().__init__(sort_dicts=False)
            self.float_format = float_format

        def format(
            self, obj: Any, context: dict[int, int], maxlevels: int, level: int
        ) -> tuple[str, bool, bool]:
            if self.float_format is not None and type(obj) is float:
                return self.float_format % obj, True, False
            return super().format(obj, context, maxlevels, level)

    _printer = Printer
    return Printer


def _warn(obj: Any, method: str, exc: BaseException) -> None:
    print(
        f"corral: {type(obj).__name__}.{method} raised {type(exc).__name__}: {exc}",
        file=sys.stderr,
    )


def _wanted(mime: str, include: Iterable[str] | None, exclude: Iterable[str] | None) -> bool:
    return (include is None or mime in include) and (exclude is None or mime not in exclude)


def format_object(
    obj: Any,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The MIME bundle and metadata for ``obj``; ``text/plain`` is always present.

    Methods are looked up on the type, as Python looks up special methods, so a class
    object is shown as a class and not through its instances' ``_repr_html_``.
    """
    if _formatter is not None:
        data, metadata = _formatter(obj, include=include, exclude=exclude)
        data = {mime: _encode(mime, value) for mime, value in data.items()}
        if "text/plain" not in data and (not data or include is None):
            data["text/plain"] = _plain(obj, warn=False)  # IPython showed its error
        return data, metadata
    include = set(include) if include is not None else None
    exclude = set(exclude) if exclude is not None else None
    data = {}
    metadata = {}
    cls = type(obj)
    bundle_method = getattr(cls, "_repr_mimebundle_", None)
    if bundle_method is not None:
        try:
            result = obj._repr_mimebundle_(include=include, exclude=exclude)
        except Exception as exc:
            _warn(obj, "_repr_mimebundle_", exc)
            result = None
        if isinstance(result, tuple):
            result, md = result
            metadata.update(md or {})
        for mime, value in (result or {}).items():
            if _wanted(mime, include, exclude):
                data[mime] = _encode(mime, value)
    for method, mime in REPR_METHODS.items():
        if mime in data or not _wanted(mime, include, exclude):
            continue
        if getattr(cls, method, None) is None:
            continue
        try:
            value = getattr(obj, method)()
        except Exception as exc:
            _warn(obj, method, exc)
            continue
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
            value, md = value
            metadata[mime] = md
        if value is not None:
            data[mime] = _encode(mime, value)
    if "text/plain" not in data:
        data["text/plain"] = _plain(obj)
    return data, metadata


# --------------------------------------------------------------------- publishing


class DisplayHandle:
    """Refers to one output area so it can be replaced later (``display_id``)."""

    def __init__(self, display_id: str | None = None) -> None:
        self.display_id = display_id or uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"<DisplayHandle display_id={self.display_id}>"

    def display(self, obj: Any, **kwargs: Any) -> None:
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj: Any, **kwargs: Any) -> None:
        update_display(obj, display_id=self.display_id, **kwargs)


def _publish(
    kind: str,
    obj: Any,
    *,
    raw: bool,
    include: Iterable[str] | None,
    exclude: Iterable[str] | None,
    metadata: dict[str, Any] | None,
    transient: dict[str, Any] | None,
    display_id: str | None,
) -> None:
    md: dict[str, Any]
    if raw:
        data, md = dict(obj), {}
    else:
        data, md = format_object(obj, include, exclude)
    if metadata:
        md = {**md, **metadata}
    transient = dict(transient or {})
    if display_id is not None:
        transient["display_id"] = display_id
    if _current is None:
        publisher = _ipython_publisher()
        if publisher is not None:
            update = kind == UPDATE_DISPLAY_DATA
            publisher.publish(data=data, metadata=md, transient=transient, update=update)
            return
    center, sender = _target()
    center.post(kind, sender, data=data, metadata=md, transient=transient)


def displays_itself(obj: Any) -> bool:
    """Let an object with ``_ipython_display_`` show itself; whether it had one.

    IPython's protocol: such an object publishes what it wants (or nothing) and no other
    output is made for it, neither by ``display`` nor as a cell's result. Looked up on the
    type, as every other display method here.
    """
    if getattr(type(obj), "_ipython_display_", None) is None:
        return False
    obj._ipython_display_()
    return True


def display(
    *objs: Any,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    metadata: dict[str, Any] | None = None,
    transient: dict[str, Any] | None = None,
    display_id: str | bool | None = None,
    raw: bool = False,
    clear: bool = False,
) -> DisplayHandle | None:
    """Show each object in the output area; ``raw=True`` takes ready MIME bundles.

    ``display_id=True`` makes up an id; with an id, a :class:`DisplayHandle` is returned
    so the output can be updated in place later.
    """
    if display_id is True:
        display_id = uuid.uuid4().hex
    if clear:
        clear_output(wait=True)
    for obj in objs:
        if not raw and displays_itself(obj):
            continue
        _publish(
            DISPLAY_DATA,
            obj,
            raw=raw,
            include=include,
            exclude=exclude,
            metadata=metadata,
            transient=transient,
            display_id=display_id or None,
        )
    return DisplayHandle(display_id) if display_id else None


def update_display(
    obj: Any,
    *,
    display_id: str,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    metadata: dict[str, Any] | None = None,
    transient: dict[str, Any] | None = None,
    raw: bool = False,
) -> None:
    """Replace what an earlier ``display(..., display_id=...)`` showed."""
    _publish(
        UPDATE_DISPLAY_DATA,
        obj,
        raw=raw,
        include=include,
        exclude=exclude,
        metadata=metadata,
        transient=transient,
        display_id=display_id,
    )


def clear_output(wait: bool = False) -> None:
    """Clear the output area, or with ``wait=True`` when the next output arrives."""
    if _current is None:
        publisher = _ipython_publisher()
        if publisher is not None:
            publisher.clear_output(wait)
            return
    center, sender = _target()
    center.post(CLEAR_OUTPUT, sender, wait=wait)


# ------------------------------------------------------------------ rich wrappers


class DisplayObject:
    """Holds data (given, read from ``filename``, or referenced by ``url``) for one type."""

    mime: str = "text/plain"
    binary = False

    def __init__(
        self,
        data: Any = None,
        *,
        url: str | None = None,
        filename: str | Path | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if data is None and filename is not None:
            path = Path(filename)
            data = path.read_bytes() if self.binary else path.read_text()
        self.data = data
        self.url = url
        self.filename = None if filename is None else str(filename)
        self.metadata = metadata or {}

    def __repr__(self) -> str:
        return f"<corral.display.{type(self).__name__} object>"

    def _repr_mimebundle_(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        bundle = {self.mime: self._data()}
        if self.mime != "text/plain":
            bundle["text/plain"] = repr(self)
        return bundle, ({self.mime: self.metadata} if self.metadata else {})

    def _data(self) -> Any:
        return self.data


class HTML(DisplayObject):
    """HTML markup shown rendered."""

    mime = "text/html"


class Markdown(DisplayObject):
    """Markdown text shown rendered."""

    mime = "text/markdown"


class Latex(DisplayObject):
    """LaTeX math shown rendered."""

    mime = "text/latex"


class SVG(DisplayObject):
    """An SVG drawing."""

    mime = "image/svg+xml"


class Pretty(DisplayObject):
    """Plain text shown as is."""

    mime = "text/plain"

    def _repr_mimebundle_(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"text/plain": str(self.data)}, {}


class JSON(DisplayObject):
    """A JSON document (dict or list, or JSON text) shown as an explorable tree."""

    mime = "application/json"

    def __init__(self, data: Any = None, *, expanded: bool = False, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        if isinstance(self.data, (str, bytes)):
            import json

            self.data = json.loads(self.data)
        self.metadata = {"expanded": expanded, **self.metadata}

    def __repr__(self) -> str:
        return _plain(self.data)


_MAGIC_NUMBERS = {b"\x89PNG": "png", b"\xff\xd8": "jpeg"}


class Image(DisplayObject):
    """A PNG or JPEG image, from bytes or a file; or a ``url`` the frontend fetches."""

    binary = True

    def __init__(
        self,
        data: bytes | str | Path | None = None,
        *,
        url: str | None = None,
        filename: str | Path | None = None,
        format: str | None = None,  # noqa: A002 - the name users know
        width: int | None = None,
        height: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(data, (str, Path)) and filename is None and url is None:
            filename, data = data, None
        super().__init__(data, url=url, filename=filename, metadata=metadata)
        self.format = (format or self._guess_format()).lower().replace("jpg", "jpeg")
        if self.format not in ("png", "jpeg"):
            raise ValueError(f"Image supports png and jpeg, not {self.format!r}")
        self.mime = f"image/{self.format}"
        if width:
            self.metadata["width"] = width
        if height:
            self.metadata["height"] = height

    def _guess_format(self) -> str:
        if isinstance(self.data, (bytes, bytearray)):
            for magic, fmt in _MAGIC_NUMBERS.items():
                if bytes(self.data).startswith(magic):
                    return fmt
        name = self.filename or self.url or ""
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        return suffix if suffix in ("png", "jpeg", "jpg") else "png"

    def _repr_mimebundle_(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.data is None and self.url is not None:
            return {"text/html": f'<img src="{self.url}"/>', "text/plain": repr(self)}, {}
        bundle = {self.mime: _encode(self.mime, self.data), "text/plain": repr(self)}
        return bundle, ({self.mime: self.metadata} if self.metadata else {})
