"""Karabo bridge client and server, usable without the rest of pulsetrain.

:class:`Client` is a drop-in for ``karabo_bridge.Client``; :class:`BridgeServer` serves trains to
any Karabo bridge client over REP, PUB or PUSH sockets.  The wire format lives in
:mod:`pulsetrain.protocol`; ``docs/protocol.md`` describes it and the patterns' semantics.
"""

from pulsetrain.bridge.client import SOCKET_TYPES, Client
from pulsetrain.bridge.server import PATTERNS, BridgeServer

__all__ = ["PATTERNS", "SOCKET_TYPES", "BridgeServer", "Client"]
