"""``BridgeInput``: the data-stream input adapter — trains from external tools into the pipeline.

An analysis tool outside the control system sends trains in the Karabo bridge protocol; this
device checks who sent them and what they are, and re-publishes them on its output channel, so
the DAQ records them and the GUI shows them like any other source.

Because what arrives here can feed back into control and into the recorded data, nothing is
accepted without authentication: ZeroMQ CURVE (elliptic-curve encryption and authentication of
every connection).  The device has a key pair; a tool must know the device's public key and own
a key pair whose public key is on the device's allow-list.  Connections without CURVE, or with a
key not on the list, are refused during the handshake, before any message is read, and counted.

Modes
    ``bind`` (default): the device binds a PULL socket as CURVE server; the tool connects a PUSH
    socket as CURVE client and sends the frames of ``karabo_bridge.serialize(data, meta)``
    (a script needs only the ``karabo-bridge`` package and pyzmq, which it depends on).
    ``connect``: the device connects (REQ, SUB or PULL) to a tool's bridge server, as a CURVE
    client; the tool's server must run CURVE with the key pair whose public key is
    ``tool_public_key``, and allow the device's public key.

Robustness: a message that is not the bridge protocol (or has no train ID, or a source outside
``allowed_sources``) is counted, described in ``lastError`` and dropped; the next good train
passes.  Flooding is bounded: a message larger than ``max_message_bytes`` is dropped before it
is decoded and counted in ``oversized`` (``lastError`` gives its size and sender); ZeroMQ itself
refuses any single frame over twice that size before storing it, by cutting the connection
(libzmq reports no more than a disconnect, counted in ``disconnects``); at most ``max_rate``
trains per second are accepted (the excess is dropped and counted before it is even decoded),
and at most ``max_queue`` trains wait for the output; more are dropped and counted.  See
``docs/devices/bridge-input.md`` for the threat model.
"""

from __future__ import annotations

import fnmatch
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from pulsetrain.errors import AuthenticationError, ConfigurationError, ProtocolError
from pulsetrain.protocol import deserialize, train_id_of
from pulsetrain.runtime.device import Device, Property, State, slot

__all__ = ["ZAP_DOMAIN", "BridgeInput", "parse_authorized_key"]

#: ZAP domain of the device's CURVE socket (the authenticator answers only for it).
ZAP_DOMAIN = "pulsetrain-bridge-input"
_Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
#: ZeroMQ cuts a connection whose frame is larger than this many times ``max_message_bytes``:
#: the hard memory bound; messages between the two limits reach the device and are counted.
HARD_LIMIT_FACTOR = 2
_HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


#: The counters of the device (``reset_counters`` zeroes them).
_COUNTERS = ("received", "refused", "malformed", "rejected", "dropped", "oversized", "disconnects")


def parse_authorized_key(entry: str, default_name: str = "") -> tuple[str, str]:
    """Split an allow-list entry ``'name:KEY'`` or ``'KEY'`` into ``(name, z85 key)``.

    Raises
    ------
    ConfigurationError
        The key is not a 40-character Z85 CURVE public key.
    """
    entry = entry.strip()
    name, key = default_name, entry
    if len(entry) > 40 and entry[-41] == ":":
        name, key = entry[:-41], entry[-40:]
    if not _Z85_KEY.match(key):
        raise ConfigurationError(
            f"authorized key {entry[:60]!r} is not a 40-character Z85 CURVE public key"
        )
    return (name or key[:8]), key


class _Authenticator(ThreadAuthenticator):
    """ZAP handler: allow the keys of the current allow-list; name the client by its entry."""

    def __init__(self, context: zmq.Context, owner: BridgeInput) -> None:
        super().__init__(context, log=owner.log.logger)
        self.owner = owner

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = zmq.utils.z85.encode(client_public_key).decode("ascii")
        return self.owner._allowed.get(key, key[:8])


class _KeyCheck:
    """Credentials provider for :class:`_Authenticator`."""

    def __init__(self, owner: BridgeInput) -> None:
        self.owner = owner

    def callback(self, domain: str, key: bytes) -> bool:
        key_s = key.decode("ascii") if isinstance(key, bytes) else str(key)
        ok = key_s in self.owner._allowed
        if not ok:
            self.owner._refuse(f"unknown CURVE client key {key_s[:8]}…")
        return ok


class BridgeInput(Device):
    """Receive trains from external tools (Karabo bridge protocol, CURVE-authenticated) and
    re-publish them on ``output``."""

    outputs = ("output",)

    mode = Property(
        str,
        "bind",
        options=("bind", "connect"),
        access="init",
        description="bind: tools PUSH to us; connect: we read a tool's server",
    )
    endpoint = Property(
        str,
        "tcp://127.0.0.1:0",
        access="init",
        description="address to bind (port 0: any free port) or connect to",
    )
    pattern = Property(
        str,
        "PULL",
        options=("PULL", "REQ", "SUB"),
        access="init",
        description="connect mode: socket type used against the tool's server",
    )
    server_key_file = Property(
        str,
        "",
        access="init",
        description="this device's secret key (pyzmq .key_secret file); "
        "empty: a new key pair per start",
    )
    authorized_keys = Property(list, [], description="allowed client public keys, 'name:KEY'")
    authorized_keys_dir = Property(
        str, "", access="init", description="directory of allowed public keys (*.key files)"
    )
    tool_public_key = Property(
        str, "", access="init", description="connect mode: the tool server's CURVE public key"
    )
    allowed_sources = Property(list, [], description="source-name globs accepted (empty: all)")
    require_train_id = Property(bool, True, description="refuse trains without timestamp.tid")
    max_message_bytes = Property(
        int,
        2**30,
        minimum=1024,
        access="init",
        description="larger messages are dropped and counted in oversized "
        "(a frame over twice this: ZeroMQ cuts the connection)",
    )
    max_rate = Property(
        float, 50.0, minimum=0.0, unit="Hz", description="trains accepted per second (0: no limit)"
    )
    max_queue = Property(
        int,
        4,
        minimum=1,
        maximum=1000,
        access="init",
        description="trains waiting for the output before dropping",
    )
    reply_timeout = Property(
        float,
        2.0,
        minimum=0.05,
        unit="s",
        access="init",
        description="connect mode with REQ: wait for a reply",
    )

    serverPublicKey = Property(
        str, "", access="readonly", description="give this to tools (CURVE server key)"
    )
    boundEndpoint = Property(str, "", access="readonly")
    received = Property(int, 0, access="readonly", description="trains accepted and published")
    refused = Property(
        int, 0, access="readonly", description="connections refused (no CURVE, unknown key)"
    )
    malformed = Property(
        int, 0, access="readonly", description="messages that are not the bridge protocol"
    )
    rejected = Property(
        int,
        0,
        access="readonly",
        description="well-formed trains refused (no train ID, source not allowed)",
    )
    dropped = Property(
        int, 0, access="readonly", description="trains dropped by the rate limit or a full queue"
    )
    oversized = Property(
        int, 0, access="readonly", description="messages over max_message_bytes, dropped"
    )
    disconnects = Property(
        int,
        0,
        access="readonly",
        description="connections closed (by the tool, or cut by ZeroMQ for an oversized frame)",
    )
    lastError = Property(str, "", access="readonly")
    lastTrainId = Property(int, 0, access="readonly")
    clients = Property(dict, {}, access="readonly", description="trains accepted per client")
    sources = Property(list, [], access="readonly", description="sources seen")

    # ------------------------------------------------------------ lifecycle
    def initialize(self) -> None:
        self._allowed: dict[str, str] = {}
        self._load_keys()
        public, secret = self._server_keys()
        self._public, self._secret = public, secret
        self._ctx = zmq.Context()
        self._trains: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._bucket = (float(self.max_queue), time.monotonic())
        self._seen_sources: set[str] = set()
        self._client_counts: dict[str, int] = {}
        self._halt = threading.Event()
        self._auth = None
        self._sock = None
        try:
            if self.mode == "bind":
                self._auth = _Authenticator(self._ctx, self)
                self._auth.start()
                self._auth.configure_curve_callback(ZAP_DOMAIN, _KeyCheck(self))
            self._sock = self._make_socket()
        except Exception:  # nothing half-made stays behind (threads, context, ports)
            self._release()
            raise
        self.update(serverPublicKey=public.decode("ascii"))
        self._receiver = threading.Thread(
            target=self._receive_loop, daemon=True, name=f"bridge-in:{self.device_id}"
        )
        self._publisher = threading.Thread(
            target=self._publish_loop, daemon=True, name=f"bridge-pub:{self.device_id}"
        )
        self._receiver.start()
        self._publisher.start()
        where = self.boundEndpoint or self.endpoint
        self.set_state(State.MONITORING, f"{self.mode} {where}, {len(self._allowed)} client keys")

    def _server_keys(self) -> tuple[bytes, bytes]:
        if not self.server_key_file:
            return zmq.curve_keypair()
        try:
            public, secret = zmq.auth.load_certificate(self.server_key_file)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot read the server key file {self.server_key_file}: {exc}"
            ) from exc
        if secret is None:
            raise ConfigurationError(
                f"{self.server_key_file} holds no secret key (use the .key_secret file)"
            )
        return public, secret

    def _load_keys(self) -> None:
        allowed: dict[str, str] = {}
        if self.authorized_keys_dir:
            folder = Path(self.authorized_keys_dir)
            if not folder.is_dir():
                raise ConfigurationError(f"authorized_keys_dir {folder} is not a directory")
            for path in sorted(folder.glob("*.key")):
                public, _ = zmq.auth.load_certificate(path)
                allowed[public.decode("ascii")] = path.stem
        for entry in self.authorized_keys:
            name, key = parse_authorized_key(str(entry))
            allowed[key] = name
        self._allowed = allowed

    def on_set(self, key: str, value: Any) -> None:
        if key == "authorized_keys":
            try:
                self._load_keys()
            except ConfigurationError as exc:
                raise ConfigurationError(f"authorized_keys: {exc}") from exc
            self.log.info("allow-list now has %d keys", len(self._allowed))

    @slot(description="Re-read authorized_keys_dir and authorized_keys")
    def reload_keys(self) -> None:
        """Re-read the allow-list (after adding or removing files in ``authorized_keys_dir``)."""
        self._load_keys()
        self.log.info("allow-list reloaded: %d keys", len(self._allowed))

    @slot(description="Leave state ERROR: start again if the start had failed, then back to work")
    def reset(self) -> None:
        """Leave state ERROR; if the device never started listening (e.g. its address could not
        be bound), try again."""
        if self.state != State.ERROR.value:
            return
        if getattr(self, "_sock", None) is None:
            self.initialize()
        else:
            self.set_state(State.MONITORING, "reset")

    def _count(self, key: str) -> None:
        """Bump a counter (from the receiving or publishing thread: queued to the device's)."""
        self.count(key)

    @slot(description="Zero the counters")
    def reset_counters(self) -> None:
        """Zero the counters and forget the last error."""
        self._client_counts.clear()
        self.update(**dict.fromkeys(_COUNTERS, 0), lastError="", clients={})

    def shutdown(self) -> None:
        halt = getattr(self, "_halt", None)
        if halt is not None:
            halt.set()
        for t in (getattr(self, "_receiver", None), getattr(self, "_publisher", None)):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=3)
        self._release()

    def _release(self) -> None:
        """Stop the authenticator and close every socket (what a failed start leaves too)."""
        auth, self._auth = getattr(self, "_auth", None), None
        if auth is not None:
            auth.stop()
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            ctx.destroy(linger=0)

    # ------------------------------------------------------------ sockets
    def _make_socket(self) -> zmq.Socket:
        ctx = self._ctx
        if self.mode == "bind":
            sock = ctx.socket(zmq.PULL)
            sock.curve_server = True
            sock.curve_publickey = self._public
            sock.curve_secretkey = self._secret
            sock.zap_domain = ZAP_DOMAIN.encode()
        else:
            if not self.tool_public_key:
                raise ConfigurationError(
                    "connect mode needs tool_public_key: the tool's server must use CURVE"
                )
            _, tool_key = parse_authorized_key(self.tool_public_key)
            sock = ctx.socket({"PULL": zmq.PULL, "REQ": zmq.REQ, "SUB": zmq.SUB}[self.pattern])
            if self.pattern == "SUB":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.curve_serverkey = tool_key.encode()
            sock.curve_publickey = self._public
            sock.curve_secretkey = self._secret
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 2)
        sock.setsockopt(zmq.MAXMSGSIZE, min(HARD_LIMIT_FACTOR * self.max_message_bytes, 2**63 - 1))
        self._monitor = sock.get_monitor_socket(
            _HANDSHAKE_FAILURES | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        try:
            if self.mode == "bind":
                sock.bind(self.endpoint)
                self.update(boundEndpoint=sock.getsockopt_string(zmq.LAST_ENDPOINT))
            else:
                sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self._monitor.close(0)
            sock.close(0)
            raise ConfigurationError(
                f"cannot {self.mode} {self.endpoint}: {zmq.strerror(exc.errno)}"
            ) from exc
        return sock

    # ------------------------------------------------------------ receiving (own thread)
    def _refuse(self, why: str) -> None:
        self._count("refused")
        self.record(lastError=f"refused: {why}")
        self.log.warning("refused a connection: %s", why)

    def _receive_loop(self) -> None:
        sock, monitor = self._sock, self._monitor
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        asked_at = None
        while not self._halt.is_set():
            try:
                if self.mode == "connect" and self.pattern == "REQ":
                    if asked_at is None:
                        sock.send(b"next")
                        asked_at = time.monotonic()
                    elif time.monotonic() - asked_at > self.reply_timeout:
                        sock = self._reset_req(poller, sock)
                        asked_at = None
                        continue
                events = dict(poller.poll(200))
                if monitor in events:
                    self._read_monitor(monitor)
                if sock in events:
                    frames = sock.recv_multipart(copy=False)
                    asked_at = None
                    self._accept(frames)
            except zmq.ZMQError as exc:
                if self._halt.is_set() or exc.errno == zmq.ETERM:
                    return
                self.log.error("receive failed: %s", exc)
                self.record(lastError=f"receive failed: {exc}")
                time.sleep(0.1)
        for s in (sock, monitor):
            s.close(0)

    def _reset_req(self, poller: zmq.Poller, sock: zmq.Socket) -> zmq.Socket:
        """A REQ socket without a reply is stuck: replace it (same keys, same endpoint)."""
        poller.unregister(sock)
        poller.unregister(self._monitor)
        sock.disable_monitor()
        self._monitor.close(0)
        sock.close(0)
        sock = self._make_socket()
        self._sock = sock
        poller.register(sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        return sock

    def _read_monitor(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            ev = event["event"]
            if ev == zmq.EVENT_DISCONNECTED:
                self._count("disconnects")
                self.log.info(
                    "a connection to %s closed", event["endpoint"].decode(errors="replace")
                )
            elif ev & _HANDSHAKE_FAILURES:
                if ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self.mode == "bind":
                    continue  # already counted by the key check (with the key)
                kind = {
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol (no CURVE?)",
                    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication",
                }.get(ev, "handshake")
                self._refuse(f"{kind} failure on {event['endpoint'].decode(errors='replace')}")

    def _rate_ok(self) -> bool:
        if self.max_rate <= 0:
            return True
        tokens, last = self._bucket
        now = time.monotonic()
        tokens = min(float(self.max_queue), tokens + (now - last) * self.max_rate)
        if tokens < 1.0:
            self._bucket = (tokens, now)
            return False
        self._bucket = (tokens - 1.0, now)
        return True

    def _accept(self, frames: list) -> None:
        size = sum(len(f) for f in frames)
        if size > self.max_message_bytes:  # before anything else: never decoded or queued
            self._count("oversized")
            self._error(
                f"oversized message from {self._sender(frames) or '?'} dropped: {size} bytes > "
                f"max_message_bytes {self.max_message_bytes}"
            )
            return
        if not self._rate_ok():
            self._count("dropped")
            return
        client = self._sender(frames)
        if self.mode == "bind" and client not in self._allowed.values():
            # The key was removed from the allow-list after this connection was made.
            self._count("rejected")
            self._error(f"rejected a train from {client or '?'}: its key is no longer allowed")
            return
        try:
            data, meta = deserialize(frames)
            self._check(data, meta)
        except ProtocolError as exc:
            self._count("malformed")
            self._error(f"malformed message from {client or '?'}: {exc}")
            return
        except AuthenticationError as exc:
            self._count("rejected")
            self._error(f"rejected train from {client or '?'}: {exc}")
            return
        try:
            self._trains.put_nowait((data, meta, client))
        except queue.Full:
            self._count("dropped")

    def _sender(self, frames: list) -> str:
        """The allow-list name of the client that sent ``frames`` ('' if unknown)."""
        if self.mode != "bind":
            return "tool"
        try:
            return frames[0].get("User-Id") or ""
        except zmq.ZMQError:
            return ""

    def _check(self, data: dict, meta: dict) -> None:
        if not data:
            raise ProtocolError("the train holds no source")
        for src, props in data.items():
            if not isinstance(src, str):
                raise ProtocolError(f"source name {src!r} is not a string")
            if not isinstance(props, dict):
                raise ProtocolError(f"source {src!r} is not a map of keys")
            if not all(isinstance(k, str) for k in props):
                raise ProtocolError(f"source {src!r} has keys that are not strings")
        if self.require_train_id:
            for src in data:
                m = meta.get(src)
                tid = m.get("timestamp.tid") if isinstance(m, dict) else None
                if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
                    raise AuthenticationError(f"source {src!r} has no valid train ID")
        if self.allowed_sources:
            for src in data:
                if not any(fnmatch.fnmatchcase(src, pat) for pat in self.allowed_sources):
                    raise AuthenticationError(f"source {src!r} is not in allowed_sources")

    def _error(self, message: str) -> None:
        self.record(lastError=message)
        self.log.warning("%s", message)

    # ------------------------------------------------------------ publishing (own thread)
    def _publish_loop(self) -> None:
        while not self._halt.is_set():
            try:
                data, meta, client = self._trains.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.write("output", data, meta)
            except ProtocolError as exc:
                self._count("malformed")
                self._error(f"cannot re-publish a train from {client or '?'}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - counted and shown, never fatal
                if self._halt.is_set():
                    return
                self._count("malformed")
                self._error(f"publishing failed: {type(exc).__name__}: {exc}")
                continue
            self._count("received")
            tid = train_id_of(meta)
            if tid is not None:
                self.record(lastTrainId=tid)
            self._client_counts[client or "?"] = self._client_counts.get(client or "?", 0) + 1
            self.record(clients=dict(self._client_counts))
            if not self._seen_sources.issuperset(data):
                self._seen_sources.update(data)
                self.record(sources=sorted(self._seen_sources))


def write_key_pair(directory: str | os.PathLike, name: str) -> tuple[str, str]:
    """Create a CURVE key pair as pyzmq certificate files ``name.key`` and ``name.key_secret``.

    Returns
    -------
    (str, str)
        Paths of the public and the secret certificate.
    """
    os.makedirs(directory, exist_ok=True)
    public, secret = zmq.auth.create_certificates(os.fspath(directory), name)
    os.chmod(secret, 0o600)
    return public, secret


__all__.append("write_key_pair")
