"""What a JSON value may be on its way to Loops: numbers JavaScript can hold, and a bound on nesting.

Loops reads JSON with JavaScript, where every number is an IEEE 754 double
(https://tc39.es/ecma262/#sec-ecmascript-language-types-number-type): a number beyond about ±1.8e308 becomes
``Infinity``, which no JSON can carry, and JSON has no NaN. Yet ``1e5000``, ``1e100000000`` or an integer of
thousands of digits is valid JSON, and so is an object nested a thousand levels deep; anyone with a Segment write
key can put one in an archive. Python chokes on each: ``int(Decimal("1e100000000"))`` runs for minutes, an integer
of more than 4,300 digits cannot be turned into text, recursion stops near 1,000 levels. One such record must cost
one rejection, never the run.

So a record is checked once, before anything converts a value (``problem``: an iterative walk that only compares,
``Decimal.adjusted()``-cheap per value), what is written of a rejected record is cut to size (``clipped``), a line
too deep for any JSON reader is cut as text (``cut_text``) and read with hooks that convert nothing large
(``loads``), and tap-segment-archive checks each line it emits (``line_problem``, a byte count for ordinary lines).
"""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

#: How deep a record may nest objects and lists (the record itself is level 1). Loops property values are scalars,
#: and the rules read at most three levels (``context.traits.email``); anything nested is left out
#: (``nested_value``). Real Segment calls nest a handful of levels (``properties.products[].variants[]``), warehouse
#: JSON columns rarely more than ten. At 32 levels, every recursive step a record meets (the SDK's stream maps and
#: flattening, JSON encoding, schema validation, the rejects file) stays far below Python's recursion limit of 1,000
#: frames, which msgspec reaches at about 980 levels, even at twenty frames per level.
MAX_DEPTH = 32

#: The reasons of a record rejected here.
INVALID_NUMBER = "invalid_number"
TOO_DEEP = "too_deep"

#: What stands in, in the rejects file, for a container deeper than ``MAX_DEPTH``.
CUT_MARK = f"[cut: nested deeper than {MAX_DEPTH} levels]"

#: The smallest magnitude JavaScript reads as Infinity: the largest double plus half its last unit (round to
#: nearest). ``1.7976931348623158e308`` is read as the largest double and is carried; ``1.8e308`` is not.
_LIMIT = 2**1024 - 2**970
_LIMIT_DECIMAL = decimal.Decimal(_LIMIT)
#: The most digits an integer below ``_LIMIT`` can have.
_LIMIT_DIGITS = len(str(_LIMIT))
_NON_FINITE_WORDS = frozenset({"NaN", "-NaN", "sNaN", "-sNaN", "Infinity", "-Infinity"})


class Unreadable(str):
    """A number as written in the input that no JSON reader can hold (``NaN``, ``Infinity``, or an integer too long
    to read), kept as its description so that the record can still be rejected, and shown, whole."""


@dataclass(frozen=True)
class Problem:
    """Why a record cannot be sent: ``reason`` (``invalid_number`` or ``too_deep``), where (a path such as
    ``traits.plan``; empty for the whole value) and, for a number, what it is (``1E+5000``)."""

    reason: str
    where: str
    what: str = ""

    @property
    def label(self) -> str:
        """A few words for a count (tap-segment-archive's bad lines)."""
        return "number out of range" if self.reason == INVALID_NUMBER else "nested too deep"

    @property
    def message(self) -> str:
        place = repr(self.where) if self.where else "the value"
        if self.reason == INVALID_NUMBER:
            return (
                f"{place} is {self.what}: not a number JSON can carry to Loops (JavaScript reads numbers as IEEE "
                "doubles: finite, at most ±1.8e308)"
            )
        at = f" (at {place})" if self.where else ""
        return (
            f"objects or lists nest more than {MAX_DEPTH} levels deep{at}; Loops property values are scalars: leave "
            "that value out or flatten it (stream_maps), or fix it at the source"
        )


def problem(value: Any, max_depth: int = MAX_DEPTH) -> Problem | None:
    """The first number JavaScript cannot hold or container deeper than ``max_depth`` in ``value``, or None.

    Iterative (no recursion, whatever the depth) and converting nothing: it compares, so that ``1E+100000000`` or an
    integer of 4,000 digits costs what ``1.5`` costs. Runs on every record: the common types are tested first.
    """
    if type(value) is not dict and not _is_container(value):
        what = _bad_number(value)
        return Problem(INVALID_NUMBER, "", what) if what is not None else None
    stack: list[tuple[Any, int, Any]] = [(value, 1, None)]
    pop, push = stack.pop, stack.append
    decimal_type = decimal.Decimal
    while stack:
        node = pop()
        container, depth, _ = node
        pairs = container.items() if type(container) is dict else _pairs(container)
        for key, item in pairs:
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is dict or kind is list or (kind is not int and kind is not decimal_type and _is_container(item)):
                if depth >= max_depth:
                    return Problem(TOO_DEEP, _path((node, key)))
                push((item, depth + 1, (node, key)))
                continue
            if kind is int:
                if -_LIMIT < item < _LIMIT:
                    continue
            elif (
                kind is decimal_type
                and item.is_finite()
                and (item.adjusted() < 308 or item.copy_abs() < _LIMIT_DECIMAL)
            ):
                continue
            what = _bad_number(item)
            if what is not None:
                return Problem(INVALID_NUMBER, _path((node, key)), what)
    return None


def clipped(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """``value`` as it can be written whole: containers deeper than ``max_depth`` replaced by ``CUT_MARK``, numbers
    JSON cannot carry by a marker naming them (``"[number out of range: 1E+5000]"``). Iterative; a plain copy when
    there is nothing to cut (mappings become dicts and tuples lists)."""
    if not _is_container(value):
        return _clip_scalar(value)
    root: Any = {} if isinstance(value, Mapping) else []
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]
    while stack:
        source, target, depth = stack.pop()
        for key, item in _pairs(source):
            copy: Any
            if _is_container(item):
                if depth >= max_depth:
                    copy = CUT_MARK
                else:
                    copy = {} if isinstance(item, Mapping) else []
                    stack.append((item, copy, depth + 1))
            else:
                copy = _clip_scalar(item)
            if isinstance(target, dict):
                target[key] = copy
            else:
                target.append(copy)
    return root


def loads(text: str) -> Any:
    """JSON text → Python, converting nothing that could take long or fail: fractions and exponents as ``Decimal``
    (as the SDK reads them), integers too long for any double and NaN/Infinity as ``Unreadable``.

    ``ValueError`` for text that is not JSON; ``RecursionError`` for text nested too deep (see ``cut_text``).
    """
    return json.loads(text, parse_float=decimal.Decimal, parse_int=_int, parse_constant=Unreadable)


_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def cut_text(text: str, max_depth: int) -> str:
    """JSON text with every object or list deeper than ``max_depth`` (the outermost value is level 1) replaced by
    ``CUT_MARK``: what no recursive reader could read becomes readable. Strings are skipped whole (a bracket inside
    one is text); one pass over the brackets."""
    parts: list[str] = []
    depth = 0
    start = 0
    cut_at = -1
    mark = json.dumps(CUT_MARK)
    for token in _TOKENS.finditer(text):
        char = text[token.start()]
        if char == '"':
            continue
        if char in "[{":
            depth += 1
            if depth == max_depth + 1:
                cut_at = token.start()
        else:
            if depth == max_depth + 1 and cut_at >= 0:
                parts += [text[start:cut_at], mark]
                start = token.end()
                cut_at = -1
            depth -= 1
    parts.append(text[start:])
    return "".join(parts)


_DECODE = msgspec.json.Decoder(float_hook=decimal.Decimal).decode
#: For ``line_problem``: every digit becomes ``0``, ``E`` becomes ``e`` and ``[`` becomes ``{`` (and ``+`` is
#: deleted), so that opening brackets are one count and digit runs and exponents plain substring searches.
_SHAPES = bytes.maketrans(b"123456789E[", b"000000000e{")
#: A number beyond ``_LIMIT`` has an exponent of three digits or more, or, with an exponent of at most 99, more
#: than 209 digits before its point.
_LONG_MANTISSA = b"0" * 210


def line_problem(line: bytes, max_depth: int = MAX_DEPTH) -> Problem | None:
    """``problem`` for a line of JSON that is not decoded otherwise (tap-segment-archive writes lines as they are).

    A line with no more opening brackets than ``max_depth``, no exponent of three digits and no run of 210 digits
    (in strings or not) cannot hold a problem: that costs one translation, one count and two searches (about 2 µs
    for a Segment call, measured). Any other line is decoded and walked. None also for a line that is not JSON:
    the caller's own checks say so.
    """
    shapes = line.translate(_SHAPES, b"+")
    if shapes.count(b"{") <= max_depth and _LONG_MANTISSA not in shapes and b"0e000" not in shapes:
        return None
    try:
        value = _DECODE(line)
    except RecursionError:
        return Problem(TOO_DEEP, "")
    except msgspec.ValidationError:  # msgspec's "Integer value out of range": more than 4,300 digits
        return Problem(INVALID_NUMBER, "", "an integer of more than 4,300 digits")
    except msgspec.DecodeError:
        return None
    return problem(value, max_depth)


# --- internals


def _is_container(value: Any) -> bool:
    return isinstance(value, Mapping | list | tuple)


def _pairs(container: Any) -> Any:
    return container.items() if isinstance(container, Mapping) else enumerate(container)


def _bad_number(value: Any) -> str | None:
    """What ``value`` is when it is a number JavaScript cannot hold (``NaN``, ``1E+5000``, ``an integer of 5,000
    digits``), else None. Never converts the number: only compares and measures."""
    if isinstance(value, Unreadable):
        return str(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -_LIMIT < value < _LIMIT else f"an integer of {_digits(value):,} digits"
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        if value.adjusted() < 308 or value.copy_abs() < _LIMIT_DECIMAL:
            return None
        text = str(value)
        return text if len(text) <= 40 else f"{value:.6E}"
    return None


def _clip_scalar(value: Any) -> Any:
    what = _bad_number(value)
    if what is None:
        return value
    if what in _NON_FINITE_WORDS:
        return f"[not a JSON number: {what}]"
    return f"[number out of range: {what}]"


def _digits(value: int) -> int:
    """The number of decimal digits of ``value``, without turning it into text."""
    value = abs(value)
    digits = int((value.bit_length() - 1) * math.log10(2)) + 1
    return digits + 1 if value >= 10**digits else digits


def _int(text: str) -> int | Unreadable:
    """An integer literal: an int when a double could hold it, else ``Unreadable`` (Python refuses to read more
    than 4,300 digits, and anything over ``_LIMIT_DIGITS`` is beyond a double anyway)."""
    digits = len(text) - (text[0] == "-")
    if digits <= _LIMIT_DIGITS:
        return int(text)
    return Unreadable(f"an integer of {digits:,} digits")


def _path(trail: Any) -> str:
    """``traits.plan``, ``products[2].price`` from the chain of (node, key) pairs; long paths and keys shortened."""
    keys: list[Any] = []
    while trail is not None:
        node, key = trail
        keys.append(key)
        trail = node[2]
    keys.reverse()
    shown = keys if len(keys) <= 8 else keys[:8]
    text = ""
    for key in shown:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            name = str(key)
            name = name if len(name) <= 40 else name[:40] + "…"
            text += f".{name}" if text else name
    return text + ("…" if len(keys) > len(shown) else "")
