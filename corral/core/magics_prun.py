"""``%prun`` / ``%%prun``: run a statement under cProfile and show pstats' table.

The table goes to the pager (a ``page`` payload, shown below the cell by notebook
frontends), as IPython sends it.
"""

from __future__ import annotations

import sys
from typing import Any

from corral.core.magics import MagicsRegistry, UsageError
from corral.core.tracebacks import hide_from_tracebacks

__all__ = ["parse_prun_options", "register_prun_magics"]

hide_from_tracebacks(__file__)

_WITH_VALUE = {"s", "l", "D", "T"}
_FLAGS = {"q", "r"}


def parse_prun_options(line: str) -> tuple[dict[str, list[str]], str]:
    """Leading options of ``%prun``; ``-s`` and ``-l`` may repeat, so each maps to a list."""
    opts: dict[str, list[str]] = {}
    rest = line.strip()
    while len(rest) > 1 and rest[0] == "-" and rest[1].isalpha():
        flag, rest = rest[1], rest[2:]
        if flag in _FLAGS:
            opts.setdefault(flag, []).append("")
            rest = ("-" + rest) if rest and not rest[0].isspace() else rest.lstrip()
            continue
        if flag not in _WITH_VALUE:
            raise UsageError(f"option -{flag} not recognized")
        value, _, rest = rest.lstrip().partition(" ")
        if not value:
            raise UsageError(f"option -{flag} requires an argument")
        opts.setdefault(flag, []).append(value)
        rest = rest.lstrip()
    return opts, rest


def _limit(text: str) -> int | float | str:
    """``-l 5`` (rows), ``-l 0.25`` (a fraction) or ``-l name`` (a regex), as pstats takes."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def prun_magic(interp: Any, line: str, cell: str | None = None) -> Any:
    """Profile a statement: ``%prun [-s KEY] [-l LIMIT] [-q] [-r] [-D FILE] [-T FILE] stmt``.

    ``-s`` sorts by a pstats key (default ``time``; repeat for ties), ``-l`` limits rows
    (a count, a fraction, or a regular expression on names; may repeat), ``-q`` shows
    nothing, ``-r`` returns the ``pstats.Stats``, ``-D`` dumps the raw stats to a file and
    ``-T`` writes the table to a text file. As ``%%prun`` the cell is profiled.
    """
    import cProfile
    import io
    import pstats

    from corral.core.magics import transform_cell

    opts, rest = parse_prun_options(line)
    source = cell if cell is not None else rest
    if not source.strip():
        raise UsageError("%prun needs a statement to profile")
    profiler = cProfile.Profile()
    try:
        profiler.runctx(transform_cell(source), interp.user_ns, interp.user_ns)
    except SystemExit:
        print("*** SystemExit exception caught in code being profiled.")
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).strip_dirs()
    stats.sort_stats(*(opts.get("s") or ["time"]))
    stats.print_stats(*(_limit(x) for x in opts.get("l", [])))
    table = buffer.getvalue().rstrip() + "\n"
    stats.stream = sys.stdout  # type: ignore[attr-defined]
    if "q" not in opts:
        interp.add_payload({"source": "page", "data": {"text/plain": table}, "start": 0})
    for dump in opts.get("D", []):
        profiler.dump_stats(dump)
        print(f"\n*** Profile stats marshalled to file {dump!r}.")
    for text_file in opts.get("T", []):
        with open(text_file, "w", encoding="utf-8") as f:
            f.write(table)
        print(f"\n*** Profile printout saved to text file {text_file!r}.")
    return stats if "r" in opts else None


def prun_cell(interp: Any, line: str, cell: str) -> Any:
    """Profile the cell; the ``%%prun`` line takes ``%prun``'s options."""
    return prun_magic(interp, line, cell)


def register_prun_magics(registry: MagicsRegistry) -> None:
    """Add ``%prun`` and ``%%prun``."""
    registry.register_line("prun", prun_magic)
    registry.register_cell("prun", prun_cell)
