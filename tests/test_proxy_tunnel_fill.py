"""Which tunnel session a request takes: the oldest live one until it carries
``FILL`` streams (one login-node process groups the rows of all of them, and two
sessions' processes do not contend for the database's write lock); the others
stand by for the overflow."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from saia_ctl.proxy import tunnel as ptunnel
from tests.support.backend import FakeBackend
from tests.support.proxy_fakes import Fakes
from tests.support.wire import rows
from tests.test_proxy_tunnel import client, proxy, real_login  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(180)


def _ask(base: str, n: int, threads: int) -> None:
    c = client(base)

    def one(i: int) -> None:
        c.chat.completions.create(model="svc", messages=[{"role": "user", "content": f"n{i}"}], max_tokens=2)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))


def test_the_oldest_session_takes_the_requests_until_it_is_crowded(
    fakes: Fakes,
    home: Path,
    real_login: FakeBackend,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with proxy(fakes, tunnel_sessions=2) as (p, base):
        _ask(base, 24, 8)
        assert p.tunnels is not None
        first, second = p.tunnels.conns
        assert first.opened_streams == 24 and second.opened_streams == 0  # both open, one used
        monkeypatch.setattr(ptunnel, "FILL", 2)  # crowded at 2: the rest overflow to the second
        _ask(base, 24, 8)
        assert second.opened_streams > 0
    assert len(rows(home / "saia.db")) == 48
