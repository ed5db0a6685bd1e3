"""``saia_ctl.cjson`` (json through its C half, for the request path) writes and reads
exactly what ``json`` does."""

from __future__ import annotations

import json
import math
import random

import pytest

from saia_ctl import cjson

DOCS: list[object] = [
    {},
    [],
    "",
    0,
    -0.0,
    2**70,
    True,
    None,
    {"object": "usage", "user": 'a"b\\c\n\u00e9\u2603\U0001f600', "gpu_hours": 0.1 + 0.2, "limits": []},
    {"x": [1.5, None, False, {"y": 1e300, "z": 5e-324}], "": "empty key"},
]


def _random_doc(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-20, 20)
    if kind == 1:
        return rng.randint(-(2**64), 2**64)
    if kind == 2:
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)])) for _ in range(5)
        )
    if kind == 3:
        return rng.choice([None, True, False])
    if kind in (4, 5):
        return {f"k{i}\u00e4": _random_doc(rng, depth + 1) for i in range(rng.randrange(4))}
    return [_random_doc(rng, depth + 1) for _ in range(rng.randrange(4))]


@pytest.mark.parametrize("doc", DOCS + [_random_doc(random.Random(seed)) for seed in range(50)])
def test_dumps_and_loads_are_jsons(doc: object) -> None:
    text = json.dumps(doc)
    assert cjson.dumps(doc) == text
    assert cjson.loads(text) == json.loads(text)
    assert cjson.loads(f" \n{text}\t ") == doc


def test_constants_and_bad_documents() -> None:
    assert cjson.dumps(math.inf) == "Infinity"
    got = cjson.loads("[NaN, Infinity, -Infinity]")
    assert math.isnan(got[0]) and got[1:] == [math.inf, -math.inf]
    for bad in ("", "   ", "[1", '{"a": 1} x', "nul", "{'a': 1}", "[1,]"):
        with pytest.raises(ValueError):
            cjson.loads(bad)
    with pytest.raises(TypeError, match="not JSON serializable"):
        cjson.dumps({"a": object()})
