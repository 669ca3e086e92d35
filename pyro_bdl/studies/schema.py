"""The declarative schema of a study config: every section, key, type, default and check.

A section is a tuple of `Key`; a key names its type (a *check*: a function that returns
the clean value or raises `Invalid` with what it expected) and its default
(`REQUIRED` when it has none). `read_sections` walks a raw TOML dict against the
schema, collecting *every* problem (unknown sections and keys with a did-you-mean hint,
missing required keys, values of the wrong type) instead of stopping at the first, and returns
the clean values with defaults filled in, so cross-key checks (``pyro_bdl.studies.config``)
can run on well-typed values and add their own problems to the same list.

Nothing here imports or calls user code: a ``network = "package.module:factory"`` string is
checked for its shape only (`import_path`); the factory is imported when the study runs.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple


class Invalid(ValueError):
    """A value that fails its key's check; the message says what was expected ("a positive integer"),
    ``hint`` (optional) what to do ("did you mean 'hmc'?")."""

    def __init__(self, expected: str, hint: str = ""):
        super().__init__(expected)
        self.hint = hint


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: the default of a key that has none
REQUIRED: Any = _Required()

Check = Callable[[Any], Any]


@dataclass(frozen=True)
class Key:
    """One config key: its ``name``, its ``check`` (value -> clean value, or `Invalid`),
    its ``default`` (`REQUIRED`: none; ``None``: "not set", since TOML has no null) and a
    one-line ``doc``."""

    name: str
    check: Check
    default: Any = None
    doc: str = ""


@dataclass(frozen=True)
class Section:
    """A ``[name]`` table of `Key`. ``required``: the section must be present.
    ``open``: keys other than ``keys`` are allowed and passed through as ``extra`` (e.g. the
    method options of ``[reference]``, checked once the method is known)."""

    name: str
    keys: Tuple[Key, ...]
    required: bool = False
    open: bool = False
    doc: str = ""

    def key(self, name: str) -> Key:
        """The `Key` called ``name``."""
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(name)


# -- checks: each returns the clean value or raises Invalid --------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(minimum: Optional[int] = None) -> Check:
    """An integer ``>= minimum``."""
    what = ("a positive integer" if minimum == 1 else "a non-negative integer" if minimum == 0
            else f"an integer >= {minimum}" if minimum is not None else "an integer")

    def check(v: Any) -> int:
        if not _is_int(v) or (minimum is not None and v < minimum):
            raise Invalid(what)
        return int(v)
    return check


def number(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
           high_open: bool = False, what: Optional[str] = None) -> Check:
    """A finite number in the interval given by ``low``/``high`` (closed unless ``*_open``)."""
    if what is None:
        lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
        what = ("a number > 0" if (low == 0 and low_open and high is None) else
                "a number >= 0" if (low == 0 and high is None) else
                f"a number in {lo}, {hi}" if low is not None and high is not None else "a number")

    def check(v: Any) -> float:
        if not _is_number(v) or not math.isfinite(v):
            raise Invalid(what)
        if low is not None and (v < low or (low_open and v == low)):
            raise Invalid(what)
        if high is not None and (v > high or (high_open and v == high)):
            raise Invalid(what)
        return float(v)
    return check


def string(what: str = "a non-empty string") -> Check:
    """A non-empty string."""
    def check(v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise Invalid(what)
        return v
    return check


def choice(options: Callable[[], Sequence[str]] | Sequence[str], what: str = "") -> Check:
    """One of ``options`` (a sequence, or a function giving it, for registries filled at import)."""
    def check(v: Any) -> str:
        known = list(options() if callable(options) else options)
        if v in known:
            return v
        close = difflib.get_close_matches(str(v), known, n=1) if isinstance(v, str) else []
        raise Invalid(f"one of {', '.join(map(str, sorted(known)))}" + (f" ({what})" if what else ""),
                      f"did you mean {close[0]!r}?" if close else "")
    return check


def boolean(v: Any) -> bool:
    """true or false."""
    if not isinstance(v, bool):
        raise Invalid("true or false")
    return v


def table(v: Any) -> Dict[str, Any]:
    """A TOML table (a dict)."""
    if not isinstance(v, Mapping):
        raise Invalid("a table")
    return dict(v)


def list_of(item: Check, what: str, *, scalar_ok: bool = True, unique: bool = True) -> Check:
    """A non-empty list whose every entry passes ``item`` (``what`` names the entries); a single
    value stands for a list of one when ``scalar_ok``; ``unique`` refuses repeats."""
    def check(v: Any) -> Tuple[Any, ...]:
        if scalar_ok and not isinstance(v, list):
            v = [v]
        if not isinstance(v, list) or not v:
            raise Invalid(f"a non-empty list of {what}")
        out = []
        for entry in v:
            try:
                out.append(item(entry))
            except Invalid as err:
                raise Invalid(f"a non-empty list of {what} ({entry!r} is not {err})", err.hint) from None
        if unique and len(set(out)) != len(out):
            raise Invalid(f"a list of {what} with no value twice")
        return tuple(out)
    return check


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")


def import_path(v: Any) -> str:
    """``"mlp"`` or the *shape* of an import path ``"package.module:factory"`` — nothing is
    imported here (a config is checked without running any of its code)."""
    if isinstance(v, str) and (v == "mlp" or _IMPORT_PATH.match(v)):
        return v
    raise Invalid("'mlp' or an import path 'package.module:factory'")


# -- reading a raw config against the schema -----------------------------------------------------
def unknown(key: str, known: Sequence[str], where: str, what: str = "key") -> str:
    """``"<where> unknown <what> 'x'; did you mean 'y'?"`` (or the list of known names)."""
    known = sorted(set(known))
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known {what}s: {', '.join(known)}"
    return f"{where} unknown {what} {key!r}; {hint}"


@dataclass
class Read:
    """What `read_sections` found: ``values[section][key]`` (clean, defaults filled; a key
    whose value failed its check holds its default, so later checks can go on), ``present``
    (sections in the file), ``given[section]`` (keys the file sets), ``failed[section]`` (keys
    whose value failed its check) and ``extra[section]`` (unchecked keys of open sections)."""

    values: Dict[str, Dict[str, Any]]
    present: Tuple[str, ...]
    given: Dict[str, Tuple[str, ...]]
    extra: Dict[str, Dict[str, Any]]
    failed: Dict[str, Tuple[str, ...]]


def read_sections(raw: Any, schema: Sequence[Section], problems: List[str]) -> Read:
    """Check ``raw`` (the TOML dict) against ``schema``; append every problem to ``problems``."""
    by_name = {s.name: s for s in schema}
    if not isinstance(raw, Mapping):
        problems.append(f"expected a table of sections, got {type(raw).__name__}")
        raw = {}
    for name in raw:
        if name not in by_name:
            problems.append(unknown(name, list(by_name), "the config:", "section"))
    values: Dict[str, Dict[str, Any]] = {}
    given: Dict[str, Tuple[str, ...]] = {}
    extra: Dict[str, Dict[str, Any]] = {}
    failed: Dict[str, Tuple[str, ...]] = {}
    present = []
    for section in schema:
        body = raw.get(section.name, None)
        if body is None:
            if section.required:
                problems.append(f"missing section [{section.name}]")
            body = {}
        elif not isinstance(body, Mapping):
            problems.append(f"[{section.name}] must be a table of keys, got {body!r}")
            body = {}
        else:
            present.append(section.name)
        known = {k.name for k in section.keys}
        extra[section.name] = {k: v for k, v in body.items() if k not in known}
        if not section.open:
            for k in extra[section.name]:
                problems.append(unknown(k, list(known), f"[{section.name}]"))
        out: Dict[str, Any] = {}
        bad: List[str] = []
        for key in section.keys:
            if key.name not in body:
                if key.default is REQUIRED:
                    if section.name in raw:  # a missing section is reported once, above
                        problems.append(f"[{section.name}] {key.name} is required")
                    out[key.name] = None
                else:
                    out[key.name] = key.default
                continue
            try:
                out[key.name] = key.check(body[key.name])
            except Invalid as err:
                problems.append(f"[{section.name}] {key.name} must be {err}, got {body[key.name]!r}"
                                + (f"; {err.hint}" if err.hint else ""))
                out[key.name] = None if key.default is REQUIRED else key.default
                bad.append(key.name)
        values[section.name] = out
        given[section.name] = tuple(k for k in body if k in known)
        failed[section.name] = tuple(bad)
    return Read(values, tuple(present), given, extra, failed)


def describe(schema: Sequence[Section]) -> str:
    """The schema as TOML-like text with defaults and docs (for docstrings and ``--help``)."""
    lines: List[str] = []
    for section in schema:
        lines.append(f"[{section.name}]" + ("   # required" if section.required else "   # optional")
                     + (f" — {section.doc}" if section.doc else ""))
        for key in section.keys:
            default = "(required)" if key.default is REQUIRED else "(not set)" if key.default is None else repr(key.default)
            lines.append(f"{key.name} = {default}" + (f"   # {key.doc}" if key.doc else ""))
        lines.append("")
    return "\n".join(lines)


__all__ = ["Key", "Section", "Read", "Check", "REQUIRED", "Invalid", "read_sections", "describe", "unknown", "integer", "number",
           "string", "choice", "boolean", "table", "list_of", "import_path"]
