"""``json.dumps`` and ``json.loads`` for the request path, through the C accelerator
``_json`` that ``json`` itself uses, without importing ``json``: its decoder imports
``re``, which imports ``enum`` (~5 ms of a request's start).

``dumps`` gives exactly ``json.dumps(obj)`` (default separators, ASCII, NaN allowed);
``loads`` reads a JSON document as ``json.loads`` does (a ValueError when it is not
one; its message may name less than json's).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _unsupported(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# json.JSONEncoder's arguments to the C encoder with json.dumps' defaults (markers None:
# no check for circular references; our documents are trees).
_encoder = _json.make_encoder(
    None, _unsupported, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
)


def dumps(obj: object) -> str:
    return "".join(_encoder(obj, 0))


class _Context:
    """What the C scanner reads from a ``json.JSONDecoder`` with the default arguments."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # typeshed: any object with these attributes
_SPACE = " \t\n\r"  # JSON's whitespace


def loads(text: str) -> Any:
    s = text.strip(_SPACE)
    try:
        value, end = _scan(s, 0)
    except StopIteration:
        raise ValueError("not a JSON document") from None
    if end != len(s):
        raise ValueError("not a JSON document (extra data)")
    return value
