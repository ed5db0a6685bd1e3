"""The split of a service's GPU total among its users and idle time (accounting/shares.py):
cumulative rounding, checked against its definition in exact rationals, and one user's
sums read from one of the ledger's blocks without the others'."""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction

import pytest

from saia_ctl.accounting.shares import BLOCK, IDLE, before_and_own, pack, share, split, total_of, unpack

ODD_IDS = [
    "a",
    "b",
    'q"uote',
    "back\\slash",
    "new\nline",
    "ü-umlaut",
    "日本",
    " space",
    "!bang",
    "z" * 300,
    "a,b",
    '"],["',
]


def definition(values: dict[str, int], total: int) -> dict[str, int]:
    """docs/accounting.md's rule as written: idle first, then users by their JSON id; a key
    gets round-half-up(total * running sum / sum) minus the same before it."""
    order = ([IDLE] if IDLE in values else []) + sorted((k for k in values if k != IDLE), key=json.dumps)
    whole = sum(values.values())
    out, running, before = {}, 0, 0
    for k in order:
        running += values[k]
        upto = math.floor(Fraction(total * running, whole) + Fraction(1, 2))
        out[k] = upto - before
        before = upto
    return out


def random_values(rng: random.Random) -> dict[str, int]:
    ids = [f"user{rng.randint(0, 10**6):07d}" for _ in range(rng.randint(1, 200))] + rng.sample(ODD_IDS, 4)
    pool = [rng.randint(1, 10**13) for _ in range(5)] + [1, 3_600_000_000, 1_800_000_000]
    values = {u: rng.choice([*pool, 0, rng.randint(0, 10**16)]) for u in ids}
    values[IDLE] = rng.choice([0, rng.randint(0, 10**15)])
    return values


@pytest.mark.parametrize("seed", range(60))
def test_split_is_its_definition_adds_up_and_keeps_the_quota_rule(seed: int) -> None:
    rng = random.Random(seed)
    values = random_values(rng)
    if sum(values.values()) == 0:
        values["user0000001"] = 1
    whole = sum(values.values())
    for total in (0, 1, rng.randint(2, 50), rng.randint(51, 10**7)):
        got = split(values, total)
        assert got == definition(values, total)
        assert sum(got.values()) == total
        for k, v in values.items():  # each share is the floor or the ceiling of its exact quota
            q = Fraction(total * v, whole)
            assert math.floor(q) <= got[k] <= math.ceil(q), (k, v, q)
        # one user alone, from the three sums (what GET /v1/usage computes): idle comes first
        for k in rng.sample(sorted(set(values) - {IDLE}), 5):
            before = values[IDLE] + sum(
                v for u, v in values.items() if u != IDLE and json.dumps(u) < json.dumps(k)
            )
            assert share(before, values[k], whole, total) == got[k], k


def test_split_of_nothing_goes_to_the_first_key() -> None:
    assert split({IDLE: 0, "a": 0}, 7) == {IDLE: 7, "a": 0}
    assert split({"b": 0, "a": 0}, 3) == {"a": 3, "b": 0}
    assert split({}, 0) == {}


def test_exact_halves_round_up_whatever_the_size() -> None:
    # two equal users of one thousandth: 0.5 each -> the first gets round(0.5) = 1, the second 0
    assert split({"a": 5, "b": 5}, 1) == {"a": 1, "b": 0}
    big = 10**17
    assert split({IDLE: big, "a": big}, 3) == {IDLE: 2, "a": 1}


def lookup(blocks: list[tuple[str, int, bytes, str]], key: str) -> tuple[int, int]:
    """What own_month asks the table: the block whose first key is the last not after key's."""
    enc = json.dumps(key)
    held = [b for b in blocks if b[0] <= enc]
    if not held:
        return 0, 0
    _, before, running, keys = held[-1]
    return before_and_own(before, keys, running, key)


@pytest.mark.parametrize("seed", range(30))
def test_one_users_sums_from_one_block_without_the_others(seed: int) -> None:
    rng = random.Random(seed)
    values = {u: v for u, v in random_values(rng).items() if u != IDLE}
    for _ in range(rng.choice([0, 300])):  # more than one block
        values[f"bulk{rng.randint(0, 10**6):07d}"] = rng.randint(1, 10**12)
    packed = [(first, before, running, keys) for first, before, keys, running in pack(values)]
    assert len(packed) == -(-sum(1 for v in values.values() if v) // BLOCK)
    assert [first for first, *_ in packed] == sorted(first for first, *_ in packed)  # the table's order
    assert unpack([(keys, running) for _, _, running, keys in packed]) == {
        u: v for u, v in values.items() if v
    }
    last = packed[-1]
    assert total_of(last[1], last[2]) == sum(values.values())
    for u in [*rng.sample(sorted(values), 6), "absent", "user", "zzz", "", "bulk", *ODD_IDS]:
        before = sum(v for k, v in values.items() if json.dumps(k) < json.dumps(u))
        assert lookup(packed, u) == (before, values.get(u, 0)), u


def test_an_empty_service_has_no_block() -> None:
    assert pack({"a": 0}) == []
    assert unpack([]) == {}
