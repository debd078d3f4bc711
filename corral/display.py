"""Rich output for user code: ``from corral.display import display, HTML, Image``.

A public re-export of :mod:`corral.core.display`, so user code and plugins import one
stable name while the implementation stays free to move.
"""

from corral.core.display import (
    HTML,
    JSON,
    SVG,
    DisplayHandle,
    DisplayObject,
    Image,
    Latex,
    Markdown,
    Pretty,
    clear_output,
    display,
    format_object,
    update_display,
)

__all__ = [
    "HTML",
    "JSON",
    "SVG",
    "DisplayHandle",
    "DisplayObject",
    "Image",
    "Latex",
    "Markdown",
    "Pretty",
    "clear_output",
    "display",
    "format_object",
    "update_display",
]
