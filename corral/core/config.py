"""Configuration: typed options declared by their owners, read from standard .ini files.

Why it looks like this: every component (and every plugin, through the
``corral_add_options`` hook) declares the options it owns, with a type and a default, in
one :class:`Schema`. Values are then layered, lowest first::

    defaults < system file < profile file < environment < keyword arguments / flags

Environment variables are named ``CORRAL_<SECTION>_<KEY>`` (upper case). Anything that is
not declared, or does not parse, fails loudly with the file, line, section and key, the
accepted values, and a "did you mean" for typos: a silently ignored misspelt key is the
worst kind of configuration bug on a cluster.
"""

from __future__ import annotations

import configparser
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from corral.core.profiles import profile_dir
from corral.errors import CorralError

__all__ = [
    "Config",
    "ConfigError",
    "PROCESS_VARIABLES",
    "Option",
    "Schema",
    "env_name",
    "load_config",
    "render_ini",
    "system_config_path",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_TYPES = ("str", "int", "float", "bool", "choice", "list", "path")


class ConfigError(CorralError, ValueError):
    """A configuration value, section or key that corral cannot accept."""


@attrs.frozen
class Option:
    """One declared option: where it lives, what it accepts, and what it means."""

    section: str
    key: str
    default: Any
    help: str
    type: str = "str"
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    #: Extra check on the parsed value: raises ValueError (its message is shown) if bad.
    check: Callable[[Any], Any] | None = attrs.field(default=None, eq=False)
    #: What :meth:`accepted` says, when ``check`` narrows the type's description.
    accepts: str = ""

    def __attrs_post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"option type must be one of {', '.join(_TYPES)}, not {self.type!r}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"choice option [{self.section}] {self.key} needs choices")

    def accepted(self) -> str:
        """Human description of the accepted values, for error messages and the ini file."""
        if self.accepts:
            return self.accepts
        if self.type == "choice":
            return "one of " + ", ".join(self.choices)
        if self.type == "bool":
            return "true or false (also yes/no, on/off, 1/0)"
        if self.type == "list":
            return "a comma-separated list"
        if self.type in ("int", "float"):
            kind = "an integer" if self.type == "int" else "a number"
            low = "" if self.minimum is None else f" >= {self.minimum:g}"
            high = "" if self.maximum is None else f" <= {self.maximum:g}"
            joiner = " and" if low and high else ""
            return kind + low + joiner + high
        if self.type == "path":
            return "a file system path (~ is expanded)"
        return "any text"

    def parse(self, raw: Any) -> Any:
        """Convert a raw value (text from a file or the environment, or a Python value).

        An option whose default is None ("unset", e.g. "one engine per core") also takes
        None, or empty text, to mean unset.
        """
        if self.default is None and (raw is None or (isinstance(raw, str) and not raw.strip())):
            return None
        value = self._parse(raw)
        if self.check is not None:
            checked = self.check(value)
            value = value if checked is None else checked
        return value

    def _parse(self, raw: Any) -> Any:
        if not isinstance(raw, str):
            return self._check_python_value(raw)
        text = raw.strip()
        if self.type == "str":
            return raw
        if self.type == "path":
            return Path(text).expanduser()
        if self.type == "bool":
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(text)
        if self.type == "list":
            return [item.strip() for item in re.split(r"[,\n]", text) if item.strip()]
        if self.type == "choice":
            if text not in self.choices:
                raise ValueError(text)
            return text
        number: float = int(text) if self.type == "int" else float(text)
        return self._check_range(number)

    def _check_python_value(self, value: Any) -> Any:
        # Any, not type | tuple[type, ...]: isinstance against it must not narrow value to object
        expected: dict[str, Any] = {
            "int": int,
            "float": (int, float),
            "bool": bool,
            "list": (list, tuple),
            "path": (str, Path),
            "choice": str,
            "str": str,
        }
        if not isinstance(value, expected[self.type]) or (
            self.type in ("int", "float") and isinstance(value, bool)
        ):
            raise ValueError(repr(value))
        if self.type == "choice" and value not in self.choices:
            raise ValueError(repr(value))
        if self.type in ("int", "float"):
            return self._check_range(value)
        if self.type == "path":
            return Path(value).expanduser()
        if self.type == "list":
            return list(value)
        return value

    def _check_range(self, number: float) -> float:
        if self.minimum is not None and number < self.minimum:
            raise ValueError(str(number))
        if self.maximum is not None and number > self.maximum:
            raise ValueError(str(number))
        return number


class Schema:
    """Every option the running process knows about, grouped by section."""

    def __init__(self, options: Iterable[Option] = ()) -> None:
        self._options: dict[str, dict[str, Option]] = {}
        for option in options:
            self.add(option)

    def add(self, option: Option) -> Option:
        """Declare ``option``; declaring the same section and key twice is an error."""
        section = self._options.setdefault(option.section, {})
        if option.key in section:
            raise ValueError(f"option [{option.section}] {option.key} is declared twice")
        section[option.key] = option
        return option

    def add_option(self, section: str, key: str, default: Any, help: str, **kind: Any) -> Option:
        """Shorthand for ``add(Option(section, key, default, help, ...))`` used by plugins."""
        return self.add(Option(section, key, default, help, **kind))

    def sections(self) -> list[str]:
        return list(self._options)

    def options(self, section: str) -> list[Option]:
        return list(self._options.get(section, {}).values())

    def __iter__(self) -> Any:
        for section in self._options.values():
            yield from section.values()

    def lookup(self, section: str, key: str, *, where: str = "") -> Option:
        """The declared option, or a :class:`ConfigError` with suggestions."""
        prefix = f"{where}: " if where else ""
        if section not in self._options:
            raise ConfigError(
                f"{prefix}unknown section [{section}]"
                + _did_you_mean(section, self._options)
                + f"; known sections: {', '.join(sorted(self._options))}"
            )
        options = self._options[section]
        if key not in options:
            raise ConfigError(
                f"{prefix}unknown key {key!r} in section [{section}]"
                + _did_you_mean(key, options)
                + f"; known keys: {', '.join(sorted(options))}"
            )
        return options[key]


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Config:
    """Resolved option values, and where each came from (for `corral config`-style output)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._values: dict[tuple[str, str], Any] = {}
        self._sources: dict[tuple[str, str], str] = {}
        for option in schema:
            self._set(option, option.default, "default")

    def get(self, section: str, key: str) -> Any:
        """The value of ``[section] key``; unknown names raise :class:`ConfigError`."""
        option = self.schema.lookup(section, key)
        return self._values[(option.section, option.key)]

    def source(self, section: str, key: str) -> str:
        """Where the value of ``[section] key`` came from: default, a file, env or argument."""
        self.schema.lookup(section, key)
        return self._sources[(section, key)]

    def section(self, section: str) -> dict[str, Any]:
        """Every value of one section, by key."""
        if section not in self.schema.sections():
            self.schema.lookup(section, "")  # raises, with suggestions
        return {opt.key: self._values[(section, opt.key)] for opt in self.schema.options(section)}

    def _set(self, option: Option, value: Any, source: str) -> None:
        self._values[(option.section, option.key)] = value
        self._sources[(option.section, option.key)] = source

    def apply(self, option: Option, raw: Any, where: str) -> None:
        """Parse ``raw`` for ``option`` and take it, or fail naming ``where`` it came from."""
        try:
            value = option.parse(raw)
        except (ValueError, TypeError) as error:
            shown = raw.strip() if isinstance(raw, str) else repr(raw)
            # A check's own explanation, when it gives more than the value back.
            reason = str(error) if option.check is not None and str(error) != shown else ""
            raise ConfigError(
                f"{where}: [{option.section}] {option.key}: bad value {shown!r}"
                + (f" ({reason})" if reason else "")
                + f"; expected {option.accepted()}"
                + (_did_you_mean(shown, option.choices) if option.choices else "")
            ) from None
        self._set(option, value, where)


def system_config_path() -> Path:
    """The system-wide file: ``$CORRAL_SYSTEM_INI`` or ``/etc/corral/corral.ini``."""
    return Path(os.environ.get("CORRAL_SYSTEM_INI", "/etc/corral/corral.ini"))


def _key_lines(path: Path) -> dict[tuple[str, str], int]:
    """Line numbers of every ``key = value`` in an ini file, for error messages."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or line[0].isspace():
            continue
        header = re.match(r"^\[([^\]]+)\]", stripped)
        if header:
            section = header.group(1).strip()
            lines.setdefault((section, ""), number)
            continue
        key = re.split(r"[=:]", stripped, maxsplit=1)[0].strip().lower()
        lines.setdefault((section, key), number)
    return lines


def _apply_file(config: Config, path: Path, label: str) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open() as handle:
            parser.read_file(handle)
    except configparser.Error as error:
        raise ConfigError(f"{path}: not a valid ini file: {error}") from None
    lines = _key_lines(path)
    for section in parser.sections():
        where = f"{path}:{lines.get((section, ''), 0)}"
        if section not in config.schema.sections():
            config.schema.lookup(section, "", where=where)
        for key, raw in parser.items(section):
            where = f"{path}:{lines.get((section, key), 0)} ({label})"
            option = config.schema.lookup(section, key, where=where)
            _refuse_inline_comment(section, key, raw, where)
            config.apply(option, raw, where)


#: ``#`` after whitespace: what other ini readers take for a trailing comment. (``;``
#: is left alone: shell lines in values, ``a ; b``, need it.)
_INLINE_COMMENT = re.compile(r"\s#")


def _refuse_inline_comment(section: str, key: str, raw: str, where: str) -> None:
    """Refuse ``key = value   # comment``: configparser (as corral reads it) keeps the
    comment in the value, which then failed far from here or not at all (``ssh_args``
    gained an argument, ``python`` a path that does not exist on the remote host).
    Comments belong on lines of their own; a ``#`` with no space before it stays."""
    found = _INLINE_COMMENT.search(raw)
    if found is None:
        return
    value, comment = raw[: found.start()].rstrip(), raw[found.start() :].strip()
    raise ConfigError(
        f"{where}: [{section}] {key}: {raw.strip()!r} ends with a comment ({comment!r}); "
        f"corral.ini takes comments on lines of their own: write {key} = {value} and put "
        "the comment on the line above"
    )


def env_name(section: str, key: str) -> str:
    """``CORRAL_<SECTION>_<KEY>``; characters a variable name cannot hold (the ``:`` of
    ``[launcher:ssh]``) become ``_``: ``CORRAL_LAUNCHER_SSH_HOSTS``."""
    return "CORRAL_" + re.sub(r"[^A-Za-z0-9]", "_", f"{section}_{key}").upper()


def _env_section(section: str) -> str:
    return re.sub(r"[^a-z0-9]", "_", section.lower())


#: Variables corral's processes hand each other (a monitor tells its engine its uuid, a
#: kernel manager its kernel where to say it is ready, ...), named like options of a
#: section (``CORRAL_<SECTION>_<KEY>``) without being options: the environment layer
#: leaves them alone. Before, an engine's plugins failed to load under its monitor
#: (``CORRAL_ENGINE_UUID``: unknown key 'uuid' in [engine]). ``tests/test_config.py``
#: scans the code for every such name.
PROCESS_VARIABLES = frozenset(
    {
        "CORRAL_CONTROLLER_GRACE",
        "CORRAL_ENGINE_ID_FROM_RANK",
        "CORRAL_ENGINE_UUID",
        "CORRAL_KERNEL_LOG_LEVEL",
        "CORRAL_KERNEL_READY_FD",
    }
)


def _apply_environment(config: Config, environ: Mapping[str, str]) -> None:
    sections = sorted(config.schema.sections(), key=len, reverse=True)
    for name, raw in environ.items():
        if not name.startswith("CORRAL_") or name in PROCESS_VARIABLES:
            continue
        rest = name[len("CORRAL_") :].lower()
        section = next((s for s in sections if rest.startswith(_env_section(s) + "_")), None)
        if section is None:
            continue  # CORRAL_DIR and friends: not options of a declared section
        key = rest[len(section) + 1 :]
        where = f"environment variable {name}"
        option = config.schema.lookup(section, key, where=where)
        config.apply(option, raw, where)


def load_config(
    schema: Schema,
    *,
    profile: str | None = "default",
    system_file: Path | None = None,
    profile_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve every option of ``schema`` through the layers, lowest first.

    ``overrides`` maps ``"section.key"`` to a value (keyword arguments, command-line flags).
    Missing files are simply skipped; a file that exists must be valid.
    """
    config = Config(schema)
    system = system_file if system_file is not None else system_config_path()
    if system.is_file():
        _apply_file(config, system, "system file")
    if profile_file is None and profile is not None and _exists(profile):
        profile_file = profile_dir(profile, create=False) / "corral.ini"
    if profile_file is not None and profile_file.is_file():
        _apply_file(config, profile_file, "profile file")
    _apply_environment(config, os.environ if environ is None else environ)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        where = f"argument {dotted}"
        config.apply(config.schema.lookup(section, key, where=where), value, where)
    return config


def _exists(profile: str) -> bool:
    try:
        profile_dir(profile, create=False)
    except LookupError:
        return False
    return True


def _render_default(option: Option) -> str:
    value = option.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return "" if value is None else str(value)


def render_ini(schema: Schema, *, header: Sequence[str] = ()) -> str:
    """A commented ``corral.ini`` listing every option with its help, values and default."""
    out: list[str] = [f"# {line}" if line else "#" for line in header]
    for section in schema.sections():
        out += ["", f"[{section}]"]
        for option in schema.options(section):
            out += [f"# {line}" for line in option.help.splitlines()]
            out.append(f"# Accepts {option.accepted()}.")
            out.append(f"# {option.key} = {_render_default(option)}")
    return "\n".join(out).lstrip("\n") + "\n"
