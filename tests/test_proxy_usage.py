"""`saia-ctl proxy` passes GET /v1/usage to the login node without a model (the
request path answers it for the caller; docs/wire-protocol.md, section 7)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from saia_ctl.proxy.config import ProxyConfig
from saia_ctl.proxy.server import USAGE_SERVICE, running_in_thread
from tests.support.proxy_fakes import Fakes

pytestmark = pytest.mark.timeout(120)


def test_usage_needs_no_model_and_reaches_the_login_node(fakes: Fakes) -> None:
    cfg = ProxyConfig(
        ssh_host="login.example",
        port=0,
        ssh_binary=str(fakes.ssh),
        ssh_user="saia",
        ssh_port=2222,
        ssh_key="/keys/id_ed25519",
        control_dir=str(fakes.root / "cm"),
        pool_size=2,
        keepalive_interval=60,
        timeout=20,
    )
    with running_in_thread(cfg) as (_p, base):
        req = urllib.request.Request(base + "/v1/usage", headers={"X-Consumer-Custom-ID": "alice@uni.de"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
            json.loads(r.read())
        # a POST without a model is still refused here, as before
        post = urllib.request.Request(base + "/v1/usage", data=b"{}", method="POST",
                                      headers={"X-Consumer-Custom-ID": "alice@uni.de",
                                               "content-type": "application/json"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(post, timeout=30)
        assert e.value.code == 400
    [record] = [r for r in fakes.all_records() if r["path"] == "/v1/usage"]
    assert (
        record["method"] == "GET" and record["service"] == USAGE_SERVICE and record["user"] == "alice@uni.de"
    )
