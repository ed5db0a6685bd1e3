"""Fixtures for every test, all from ``tests.support`` (this file only wires them in).

The general ones (a migrated home, settings, a clock, configs) come from
``tests.support.fixtures``; the real cluster's from ``tests.support.cluster``
(tests that use it carry ``@pytest.mark.cluster``); the proxy's stand-ins from
``tests.support.proxy_fakes``; the accounting tests' ``rows`` from ``tests.support.accounting``;
the tunnel tests' ``svc`` and ``backend`` from ``tests.support.tunnel``, the proxy's
``real_login`` from ``tests.support.tunnel_proxy``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.accounting import rows
from tests.support.cluster import cluster
from tests.support.fixtures import (
    clock,
    engine,
    home,
    import_services,
    settings,
    template_db,
    write_config,
)
from tests.support.proxy_fakes import fakes
from tests.support.tunnel import backend, svc
from tests.support.tunnel_proxy import real_login

__all__ = [
    "backend",
    "clock",
    "cluster",
    "engine",
    "fakes",
    "home",
    "import_services",
    "real_login",
    "rows",
    "settings",
    "svc",
    "template_db",
    "write_config",
]
