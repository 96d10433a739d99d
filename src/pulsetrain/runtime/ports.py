"""TCP ports and endpoints: choosing a free port, checking a port number, and whether it is free.

The one place that knows what a valid port is (1-65535; 0 where "any free port" is meant),
how a ``tcp://host:port`` endpoint splits, and how to tell that a port is already taken.
:func:`port_arg` and :func:`port_or_zero_arg` are ``argparse`` types built on the same checks.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import socket

from pulsetrain.errors import ChannelError, ConfigurationError

__all__ = [
    "MAX_PORT",
    "PORT_RANGE",
    "check_port",
    "free_port",
    "port_arg",
    "port_or_zero_arg",
    "port_problem",
    "split_tcp_endpoint",
]

#: The highest TCP port number.
MAX_PORT = 65535

#: Ports for outputs and servers are taken below Linux's ephemeral range (32768-60999), so an
#: outgoing connection of any process cannot take a port between allocation and bind.
PORT_RANGE = tuple(
    int(p) for p in os.environ.get("PULSETRAIN_PORT_RANGE", "20000-32000").split("-")
)
_given: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now, from :data:`PORT_RANGE`, never given twice
    by this process.

    Raises
    ------
    ChannelError
        If no port of the range could be bound.
    """
    lo, hi = PORT_RANGE
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(lo, hi)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise ChannelError(f"no free TCP port in {lo}-{hi} on {host}")


def check_port(value: object, *, allow_zero: bool = False, what: str = "port") -> int:
    """``value`` as a TCP port number, or :class:`ConfigurationError` naming it.

    Parameters
    ----------
    value : int or str
        The port (a string must hold a decimal integer).
    allow_zero : bool
        Accept 0, which means "any free port" where a socket binds.
    what : str
        How the message names the value (``'--port'``, ``'port_base'``).
    """
    lowest = 0 if allow_zero else 1
    if isinstance(value, bool):
        port = None
    elif isinstance(value, int):
        port = value
    else:
        try:
            port = int(str(value).strip(), 10)
        except ValueError:
            port = None
    if port is None:
        raise ConfigurationError(f"{what}: {value!r} is not a port number")
    if not lowest <= port <= MAX_PORT:
        extra = " (0: any free port)" if allow_zero else ""
        raise ConfigurationError(
            f"{what}: {port} is not a TCP port; ports are {lowest}-{MAX_PORT}{extra}"
        )
    return port


def _argparse_type(allow_zero: bool):
    def convert(text: str) -> int:
        try:
            return check_port(text, allow_zero=allow_zero, what="port")
        except ConfigurationError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("port: ")) from None

    convert.__name__ = "port"
    return convert


#: ``argparse`` type of a TCP port 1-65535.
port_arg = _argparse_type(allow_zero=False)
#: ``argparse`` type of a TCP port 0-65535 (0: any free port).
port_or_zero_arg = _argparse_type(allow_zero=True)


def split_tcp_endpoint(endpoint: str, *, allow_zero: bool = True) -> tuple[str, int]:
    """``'tcp://host:port'`` → ``(host, port)``; :class:`ConfigurationError` if malformed.

    ``host`` may be ``*`` (all interfaces) or a bracketed IPv6 address; ``port`` is checked
    with :func:`check_port`.
    """
    if not isinstance(endpoint, str) or not endpoint.startswith("tcp://"):
        raise ConfigurationError(
            f"endpoint {endpoint!r} must look like 'tcp://HOST:PORT', e.g. 'tcp://127.0.0.1:4545'"
        )
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not host or not port:
        raise ConfigurationError(
            f"endpoint {endpoint!r} must look like 'tcp://HOST:PORT', e.g. 'tcp://127.0.0.1:4545'"
        )
    try:
        number = check_port(port, allow_zero=allow_zero)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"endpoint {endpoint!r}: {str(exc).removeprefix('port: ')}"
        ) from None
    return host.strip("[]"), number


def port_problem(host: str, port: int) -> str | None:
    """Why ``port`` cannot be bound on ``host`` now, or None if it can (or cannot be told).

    The test binds with ``SO_REUSEADDR``, as ZeroMQ does, so a port whose last connections
    are still in TIME_WAIT counts as free.  Port 0 is always free.
    """
    if port == 0:
        return None
    bind_host = "" if host in ("*", "0.0.0.0") else host
    try:
        infos = socket.getaddrinfo(
            bind_host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        if host.replace(".", "").isdigit() or ":" in host:
            return f"{host} is not a valid address"
        return None  # an interface name ZeroMQ may know (eth0): cannot tell
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use by another program"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine"
            if exc.errno == errno.EACCES:
                return f"port {port} on {host} needs privileges to bind (ports below 1024)"
            return f"cannot bind port {port} on {host}: {exc.strerror}"
    return None
