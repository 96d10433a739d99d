"""Fixtures of the multihost tests: test hosts made of Linux namespaces (see ``tests/hosts.py``).

``make_hosts(n)`` makes a :class:`hosts.HostNetwork` of ``n`` hosts (several calls make
several networks); ``hosts`` is a network of two.  Everything is removed at the end of the
test, pass or fail.  Where namespaces cannot be made the tests skip, saying why.
"""

from __future__ import annotations

import pytest

from hosts import HostNetwork, HostsUnavailable, check_available


@pytest.fixture
def make_hosts():
    """Factory ``make_hosts(n) -> HostNetwork``; every network made is closed afterwards."""
    try:
        check_available()
    except HostsUnavailable as e:
        pytest.skip(f"no test hosts: {e}")
    made: list[HostNetwork] = []

    def make(n: int) -> HostNetwork:
        net = HostNetwork(n)
        made.append(net)
        return net

    yield make
    for net in made:
        net.close()


@pytest.fixture
def hosts(make_hosts) -> HostNetwork:
    """Two test hosts on one bridge; the control host (this process) is at ``control_address``."""
    return make_hosts(2)
