"""Leases of a device server: a run's devices live only while its supervisor renews the lease."""

from __future__ import annotations

import time

import pytest

from pulsetrain.errors import AlreadyRunningError
from pulsetrain.runtime.control import Client
from pulsetrain.runtime.server import DeviceServer
from waiting import wait_until

TOKEN = "lease-token"
RUN = {"topology": "t", "pid": 1, "host": "h"}


@pytest.fixture
def server():
    srv = DeviceServer("leased", token=TOKEN).start()
    client = Client(srv.control_endpoint, token=TOKEN)
    yield srv, client
    client.close()
    srv.close()


def test_devices_of_a_run_stop_when_its_lease_is_not_renewed(server):
    srv, c = server
    status = c.lease("run-1", 1.5, RUN)
    assert status["owner"] == "run-1" and 0 < status["remaining"] <= 1.5
    c.instantiate("Passthrough", "RUN/A", {}, owner="run-1")
    c.instantiate("Passthrough", "BY/HAND", {})  # no owner: not the run's
    assert c.ping()["lease"]["owner"] == "run-1"
    with pytest.raises(AlreadyRunningError, match="held by another run .*topology 't'"):
        Client(srv.control_endpoint, token=TOKEN).lease("run-2", 5.0, {})
    with pytest.raises(AlreadyRunningError, match="only under its lease"):
        c.instantiate("Passthrough", "RUN2/A", {}, owner="run-2")
    wait_until(lambda: "RUN/A" not in c.ping()["devices"], timeout=10, what="lease expiry")
    assert c.ping()["devices"] == ["BY/HAND"]
    assert c.ping()["lease"]["owner"] is None and srv.leases_expired == 1
    assert c.lease("run-2", 5.0, {})["owner"] == "run-2"  # the next run gets the server


def test_renewed_lease_keeps_devices_and_release_stops_them_at_once(server):
    srv, c = server
    c.lease("run-1", 1.5, RUN)
    c.instantiate("Passthrough", "RUN/A", {}, owner="run-1")
    c.instantiate("Passthrough", "RUN/B", {}, owner="run-1")
    for _ in range(5):  # 2.5 s of renewals every 0.5 s: longer than the lease itself
        c.lease("run-1", 1.5, RUN)
        time.sleep(0.5)  # the supervisor's renewal interval (what is tested, not a wait)
    assert sorted(c.ping()["devices"]) == ["RUN/A", "RUN/B"]
    assert c.release("run-1") == 2
    assert c.ping()["devices"] == [] and c.ping()["lease"]["owner"] is None
    assert srv.leases_expired == 0


def test_a_lease_needs_an_owner_and_a_sane_time(server):
    from pulsetrain.errors import ConfigurationError

    _, c = server
    for owner, ttl in (("", 5.0), ("run", 0), ("run", 7200)):
        with pytest.raises(ConfigurationError):
            c.lease(owner, ttl)
