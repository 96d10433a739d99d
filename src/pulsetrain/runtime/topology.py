"""Topology files: which servers run which devices, and how their channels connect.

A topology is a TOML file::

    [topology]
    name = "calibration-pipeline"

    [servers.det]                      # a local server: `pulsetrain run` starts it
    [servers.gpu1]                     # a remote server started with `pulsetrain server`
    endpoint = "tcp://10.0.0.5:7000"   # its control endpoint
    data_host = "10.0.0.5"             # address its outputs bind to
    port_base = 7100                   # first port of its outputs

    [devices."SPB_DET_AGIPD1M-1/DET/SIM"]
    class = "SimulatedDetector"
    server = "det"
    config = { frames = 16 }

    [[connections]]
    from = "SPB_DET_AGIPD1M-1/DET/SIM:module0"
    to = "SPB/CAL/CORR_00:input"
    data_distribution = "copy"   # or shared
    on_slowness = "drop"         # or queueDrop, wait
    max_queue_length = 2

Replicas: a device with ``replicas = R`` and ``servers = ["a", "b", ...]`` (one server per
replica) runs as R devices ``<ID>/1`` ... ``<ID>/R``, replica *k* on the *k*-th server.  A
connection naming the device stands for one connection per replica: into the replicas it must
be ``data_distribution = "shared"`` (each train goes to exactly one replica, the one ready
first), out of them it merges the replicas' streams (as one source: they write the same source
names).  A device that merges them and has a ``max_reorder`` property (the ``TrainMatcher``)
gets ``max_reorder = 4 * R`` unless its config sets one: replicas finish trains out of order.

:meth:`Topology.validate` checks the whole topology before anything starts and reports every
problem, one line each, naming the file, the table and the key.  :meth:`Topology.resolve` gives every output a fixed endpoint (a free port on the loopback
interface for local servers, ``port_base + n`` on ``data_host`` for remote ones) and turns the
connections into each device's input configuration.  Fixed endpoints are what lets a restarted
server come back on the same addresses, so its peers reconnect by themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pulsetrain.errors import ConfigurationError, PulsetrainError, TopologyError
from pulsetrain.runtime.channels import DISTRIBUTIONS, SLOWNESS_POLICIES, validate_policy
from pulsetrain.runtime.ports import check_port, free_port, port_problem, split_tcp_endpoint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Connection", "DeviceSpec", "ServerSpec", "Topology", "replica_id"]

_SERVER_KEYS = ("endpoint", "data_host", "port_base", "memory_limit_mb", "env")
_DEVICE_KEYS = ("class", "server", "servers", "replicas", "config")
MAX_REPLICAS = 64
#: ``max_reorder`` given to a device merging the streams of R replicas: R times this.
REORDER_PER_REPLICA = 4
_CONNECTION_KEYS = ("from", "to", "data_distribution", "on_slowness", "max_queue_length")


@dataclasses.dataclass
class ServerSpec:
    """A device server of the topology."""

    name: str
    endpoint: str | None = None  # control endpoint of a remote server; None = local
    data_host: str = "127.0.0.1"
    port_base: int | None = None
    memory_limit_mb: float | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def local(self) -> bool:
        """Whether `pulsetrain run` starts this server itself."""
        return self.endpoint is None


@dataclasses.dataclass
class DeviceSpec:
    """A device of the topology."""

    device_id: str
    class_name: str
    server: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    replica_of: str | None = None  # the device ID of the file, for a replica
    replica: int = 0  # 1..R for a replica, 0 otherwise

    @property
    def declared(self) -> str:
        """The device ID as the topology file declares it (a replica's device)."""
        return self.replica_of or self.device_id


@dataclasses.dataclass
class Connection:
    """One output → input connection with the input's policy."""

    output: str  # deviceId:channel
    input: str  # deviceId:channel
    data_distribution: str = "copy"
    on_slowness: str = "drop"
    max_queue_length: int = 2
    number: int = 0  # its place among the file's [[connections]] (1, 2, ...)


def replica_id(device_id: str, k: int) -> str:
    """The device ID of replica ``k`` (1, 2, ...) of ``device_id``: ``'<device_id>/<k>'``."""
    return f"{device_id}/{k}"


def _split_channel(ref: str, what: str) -> tuple[str, str]:
    device, sep, channel = ref.rpartition(":")
    if not sep or not device or not channel:
        raise ConfigurationError(f"{what} {ref!r} must look like 'DEVICE_ID:channel'")
    return device, channel


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` with the nearest of ``candidates``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def _table(kind: str, name: str) -> str:
    """How a message names a table: ``[servers.det]``, ``[devices."A/B/C"]``."""
    bare = kind != "devices" and re.fullmatch(r"[A-Za-z0-9_-]+", name) is not None
    return f"[{kind}.{name}]" if bare else f'[{kind}."{name}"]'


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


class _Report:
    """Problems of one topology, each a line ``FILE:LINE: [table] key: message``."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self._lines = text.splitlines() if text else []
        self.problems: list[str] = []

    def _locate(self, table: str) -> int | None:
        m = re.fullmatch(r"\[\[connections\]\] #(\d+)", table)
        if m:
            n = int(m.group(1))
            pattern = re.compile(r"^\s*\[\[\s*connections\s*\]\]")
            hits = [i for i, line in enumerate(self._lines, 1) if pattern.match(line)]
            return hits[n - 1] if n <= len(hits) else None
        m = re.fullmatch(r"\[(\w+)\.\"?(.*?)\"?\]", table)
        if m:
            kind, name = m.group(1), re.escape(m.group(2))
            pattern = re.compile(rf"""^\s*\[\s*{kind}\s*\.\s*(?:"{name}"|'{name}'|{name})\s*\]""")
        else:
            pattern = re.compile(rf"^\s*{re.escape(table)}")
        for i, line in enumerate(self._lines, 1):
            if pattern.match(line):
                return i
        return None

    def add(self, table: str, key: str | None, message: str) -> None:
        line = self._locate(table)
        where = f"{self.source}:{line}" if line else self.source
        problem = f"{where}: {table}{' ' + key if key else ''}: {message}"
        if problem not in self.problems:  # replicas of a device share its problems
            self.problems.append(problem)

    def unknown_keys(self, table: str, spec: dict, known: Sequence[str]) -> None:
        """One problem for each key of ``spec`` not in ``known`` (with the nearest)."""
        for key in spec:
            if key not in known:
                self.add(
                    table,
                    key,
                    "unknown key" + _did_you_mean(key, known) + f" (known: {', '.join(known)})",
                )

    def sorted(self) -> list[str]:
        """The problems in the order of the file (stable for lines without a number)."""
        prefix = re.compile(rf"{re.escape(self.source)}:(\d+):")

        def line_of(problem: str) -> int:
            m = prefix.match(problem)
            return int(m.group(1)) if m else 0

        return sorted(self.problems, key=line_of)


def _toml_problem(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """One line for a TOML syntax error: ``FILE:LINE: ...``."""
    text = str(exc)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)", text)
    where = f"{path}:{m.group(1)}" if m else str(path)
    text = text[: m.start()] + text[m.end() :] if m else text
    dup = re.fullmatch(r"Cannot declare \('devices', '(.*)'\) twice", text)
    if dup:
        return (
            f"{where}: {_table('devices', dup.group(1))} is declared twice: "
            "a device ID must be unique"
        )
    column = f" (column {m.group(2)})" if m else ""
    return f"{where}: not valid TOML: {text}{column}"


def _bind_endpoints(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, endpoint)`` of the addresses a device with these property values binds.

    A string property named ``endpoint`` (or ``..._endpoint``) is an address the device binds,
    unless its ``mode`` property is ``'connect'``.
    """
    if values.get("mode") == "connect":
        return []
    return [
        (key, value)
        for key, value in values.items()
        if (key == "endpoint" or key.endswith("_endpoint")) and isinstance(value, str) and value
    ]


class Topology:
    """A parsed topology; :meth:`validate` checks it whole before anything starts.

    Parameters
    ----------
    name : str
        Name of the topology.
    servers, devices : dict
        By name / device ID.
    connections : list of Connection
    extra : dict, optional
        Other top-level tables of the file.
    source : str
        How problem lines name the topology (its file).
    text : str, optional
        The file's text, to give problem lines their line numbers.
    problems : list of str, optional
        Problems found while reading the file (reported by :meth:`check`).
    """

    def __init__(
        self,
        name: str,
        servers: dict[str, ServerSpec],
        devices: dict[str, DeviceSpec],
        connections: list[Connection],
        extra: dict[str, Any] | None = None,
        *,
        source: str = "topology",
        text: str | None = None,
        problems: Iterable[str] = (),
    ):
        self.name = name
        self.servers = servers
        self.devices = devices
        self.connections = connections
        self.extra = extra or {}
        self.source = source
        self._text = text
        self._read_problems = list(problems)
        #: Directory of the topology file: ``module:Class`` device classes are looked up there
        #: first (see :func:`pulsetrain.runtime.device.find_device_class`).
        self.directory: Path | None = None

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path) -> Topology:
        """Read a topology TOML file.

        Only a file that cannot be read or parsed as TOML raises here (a :class:`TopologyError`
        of one line); every other problem is reported by :meth:`check` and :meth:`validate`.
        """
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise TopologyError([f"{path}: no such topology file"]) from None
        except IsADirectoryError:
            raise TopologyError([f"{path}: is a directory, not a topology file"]) from None
        except OSError as exc:
            raise TopologyError(
                [f"{path}: cannot read the topology file: {exc.strerror}"]
            ) from None
        except UnicodeDecodeError as exc:
            raise TopologyError(
                [f"{path}: not a text (UTF-8) file: byte {exc.start} cannot be decoded"]
            ) from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TopologyError([_toml_problem(path, exc)]) from None
        topology = cls.from_dict(doc, default_name=path.stem, source=str(path), text=text)
        topology.directory = path.resolve().parent
        return topology

    @classmethod
    def from_dict(
        cls,
        doc: Mapping[str, Any],
        default_name: str = "topology",
        *,
        source: str = "topology",
        text: str | None = None,
    ) -> Topology:
        """Build a topology from the parsed TOML document.

        What cannot be understood is left out and recorded as a problem for :meth:`check`.
        """
        report = _Report(source, text)
        doc = copy.deepcopy(dict(doc))
        head = doc.pop("topology", {})
        name = default_name
        if not isinstance(head, dict):
            report.add("[topology]", None, f"must be a table, not a {_type_name(head)}")
        else:
            name = head.get("name", default_name)
            if not isinstance(name, str) or not name or "/" in name or "\0" in name:
                report.add(
                    "[topology]",
                    "name",
                    f"{name!r} must be a non-empty string "
                    "without '/' (it names the run's state file)",
                )
                name = default_name
        servers = cls._read_servers(doc.pop("servers", {}), report)
        devices = cls._read_devices(doc.pop("devices", {}), report)
        connections = cls._read_connections(doc.pop("connections", []), report)
        connections = cls._expand_replicas(devices, connections, report)
        return cls(
            name,
            servers,
            devices,
            connections,
            extra=doc,
            source=source,
            text=text,
            problems=report.problems,
        )

    @staticmethod
    def _read_servers(table: Any, report: _Report) -> dict[str, ServerSpec]:
        servers: dict[str, ServerSpec] = {}
        if not isinstance(table, dict):
            report.add("[servers]", None, f"must be a table of servers, not a {_type_name(table)}")
            return servers
        for name, spec in table.items():
            where = _table("servers", name)
            if not isinstance(spec, dict):
                report.add(where, None, f"must be a table, not a {_type_name(spec)}")
                continue
            report.unknown_keys(where, spec, _SERVER_KEYS)
            server = ServerSpec(name=name)
            endpoint = spec.get("endpoint")
            if endpoint is not None:
                try:
                    split_tcp_endpoint(endpoint, allow_zero=False)
                    server.endpoint = endpoint
                except ConfigurationError as exc:
                    report.add(where, "endpoint", str(exc))
                    server.endpoint = str(endpoint)
            data_host = spec.get("data_host", server.data_host)
            if isinstance(data_host, str) and data_host:
                server.data_host = data_host
            else:
                report.add(where, "data_host", f"{data_host!r} must be a host name or address")
            if "port_base" in spec:
                try:
                    server.port_base = check_port(spec["port_base"], what="port_base")
                except ConfigurationError as exc:
                    report.add(where, "port_base", str(exc).removeprefix("port_base: "))
            if "memory_limit_mb" in spec:
                limit = spec["memory_limit_mb"]
                if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
                    report.add(where, "memory_limit_mb", f"{limit!r} must be a number of MB > 0")
                else:
                    server.memory_limit_mb = float(limit)
            env = spec.get("env", {})
            if isinstance(env, dict) and all(isinstance(v, str) for v in env.values()):
                server.env = dict(env)
            else:
                report.add(
                    where, "env", 'must be a table of strings, e.g. env = { OMP_NUM_THREADS = "1" }'
                )
            servers[name] = server
        return servers

    @staticmethod
    def _read_devices(table: Any, report: _Report) -> dict[str, DeviceSpec]:
        devices: dict[str, DeviceSpec] = {}
        if not isinstance(table, dict):
            report.add("[devices]", None, f"must be a table of devices, not a {_type_name(table)}")
            return devices
        for device_id, spec in table.items():
            where = _table("devices", device_id)
            if not isinstance(spec, dict):
                report.add(where, None, f"must be a table, not a {_type_name(spec)}")
                continue
            report.unknown_keys(where, spec, _DEVICE_KEYS)
            values = []
            for key in ("class", "server"):
                value = spec.get(key)
                if value is None:
                    if key == "class" or "servers" not in spec:
                        report.add(where, key, "missing")
                elif not isinstance(value, str) or not value:
                    report.add(where, key, f"must be a non-empty string, not {value!r}")
                    value = None
                values.append(value or "")
            config = spec.get("config", {})
            if not isinstance(config, dict):
                report.add(where, "config", f"must be a table, not a {_type_name(config)}")
                config = {}
            if "servers" not in spec and spec.get("replicas", 1) == 1:
                devices[device_id] = DeviceSpec(device_id, values[0], values[1], dict(config))
                continue
            hosts = Topology._read_replica_servers(where, spec, report)
            if not hosts:  # reported: still one device, so its connections are checked
                devices[device_id] = DeviceSpec(device_id, values[0], "", dict(config))
            for k, server in enumerate(hosts, 1):
                rid = replica_id(device_id, k)
                devices[rid] = DeviceSpec(rid, values[0], server, dict(config), device_id, k)
        for spec in [d for d in devices.values() if d.replica_of and d.replica == 1]:
            for rid in [d.device_id for d in devices.values() if d.replica_of == spec.replica_of]:
                if rid in table:
                    report.add(
                        _table("devices", spec.replica_of),
                        "replicas",
                        f"replica {rid!r} has the ID of a device declared in the file",
                    )
        return devices

    @staticmethod
    def _read_replica_servers(where: str, spec: dict, report: _Report) -> list[str]:
        """The server of each replica of a device with ``replicas`` / ``servers`` ([] if
        invalid; the problems are reported)."""
        replicas = spec.get("replicas")
        servers = spec.get("servers")
        if replicas is not None and (
            isinstance(replicas, bool)
            or not isinstance(replicas, int)
            or not 1 <= replicas <= MAX_REPLICAS
        ):
            report.add(where, "replicas", f"{replicas!r} must be an integer 1-{MAX_REPLICAS}")
            return []
        if "server" in spec and servers is not None:
            report.add(
                where,
                "servers",
                "give either server (one device) or servers (one per replica), not both",
            )
            return []
        if servers is None:
            report.add(
                where,
                "servers",
                f"missing: replicas = {replicas} run each on its own server, e.g. "
                f"servers = [{', '.join(repr(f'host{k}') for k in range(1, replicas + 1))}]"
                if replicas and replicas > 1
                else "missing: the servers of the replicas, e.g. servers = ['host1', 'host2']",
            )
            return []
        if (
            not isinstance(servers, list)
            or not servers
            or not all(isinstance(s, str) and s for s in servers)
        ):
            report.add(
                where, "servers", f"must be a non-empty array of server names, not {servers!r}"
            )
            return []
        if len(set(servers)) != len(servers):
            twice = sorted({s for s in servers if servers.count(s) > 1})
            report.add(
                where,
                "servers",
                f"{', '.join(map(repr, twice))} listed twice: each replica runs on its own server",
            )
            return []
        if replicas is not None and replicas != len(servers):
            report.add(
                where,
                "replicas",
                f"{replicas} replicas but {len(servers)} servers: give one server per replica",
            )
            return []
        return list(servers)

    @staticmethod
    def _expand_replicas(
        devices: dict[str, DeviceSpec], connections: list[Connection], report: _Report
    ) -> list[Connection]:
        """One connection per replica for each connection naming a replicated device."""
        groups: dict[str, list[str]] = {}
        for spec in devices.values():
            if spec.replica_of:
                groups.setdefault(spec.replica_of, []).append(spec.device_id)
        if not groups:
            return connections
        out = []
        for conn in connections:
            src, out_ch = _split_channel(conn.output, "from")
            dst, in_ch = _split_channel(conn.input, "to")
            if dst in groups and conn.data_distribution != "shared":
                report.add(
                    f"[[connections]] #{conn.number}",
                    "data_distribution",
                    f"{conn.data_distribution!r} would give every train to each of the "
                    f"{len(groups[dst])} replicas of {dst!r}: feed replicas with "
                    'data_distribution = "shared"',
                )
            for out_dev in groups.get(src, [src]):
                for in_dev in groups.get(dst, [dst]):
                    out.append(
                        dataclasses.replace(
                            conn, output=f"{out_dev}:{out_ch}", input=f"{in_dev}:{in_ch}"
                        )
                    )
        return out

    @staticmethod
    def _read_connections(items: Any, report: _Report) -> list[Connection]:
        connections: list[Connection] = []
        if not isinstance(items, list):
            report.add("[[connections]]", None, "must be an array of tables ([[connections]])")
            return connections
        for i, spec in enumerate(items, 1):
            where = f"[[connections]] #{i}"
            if not isinstance(spec, dict):
                report.add(where, None, f"must be a table, not a {_type_name(spec)}")
                continue
            report.unknown_keys(where, spec, _CONNECTION_KEYS)
            ends = []
            for key in ("from", "to"):
                value = spec.get(key)
                if value is None:
                    report.add(where, key, "missing")
                elif not isinstance(value, str):
                    report.add(where, key, f"must be a string 'DEVICE_ID:channel', not {value!r}")
                else:
                    try:
                        _split_channel(value, key)
                        ends.append(value)
                    except ConfigurationError as exc:
                        report.add(where, key, str(exc))
            conn = Connection("", "")
            for key in ("data_distribution", "on_slowness"):
                value = spec.get(key, getattr(conn, key))
                if isinstance(value, str):
                    setattr(conn, key, value)
                else:
                    report.add(where, key, f"must be a string, not {value!r}")
            mql = spec.get("max_queue_length", conn.max_queue_length)
            if isinstance(mql, int) and not isinstance(mql, bool):
                conn.max_queue_length = mql
            else:
                report.add(where, "max_queue_length", f"must be an integer >= 1, not {mql!r}")
            conn.number = i
            if len(ends) == 2:
                conn.output, conn.input = ends
                connections.append(conn)
        return connections

    # ------------------------------------------------------------ validation
    def check(self, *, ports: bool = True) -> list[str]:
        """Every problem of the topology, one line each (empty: none).

        Checks that servers are known, device classes importable, every configured property
        known, writable, of the right type and within its limits, every connection's channels
        exist on the classes and its policy is valid, the connections form no cycle, every fixed
        port is valid and used once and (with ``ports``) free on this machine.  Nothing is
        started.
        """
        report = _Report(self.source, self._text)
        report.problems.extend(self._read_problems)
        classes = self._check_devices(report)
        valid = self._check_connections(report, classes)
        self._check_cycles(report, valid)
        self._check_servers(report, classes)
        self._check_endpoints(report, classes, free=ports)
        return report.sorted()

    def validate(self, *, ports: bool = True) -> None:
        """Check the whole topology (see :meth:`check`).

        Raises
        ------
        TopologyError
            Listing every problem, one line each.
        """
        problems = self.check(ports=ports)
        if problems:
            raise TopologyError(problems)

    def check_classes(self) -> None:
        """Check classes, properties, channels and policies (:meth:`validate` without ports)."""
        self.validate(ports=False)

    def _check_devices(self, report: _Report) -> dict[str, type]:
        """Servers known, classes importable, properties valid; returns id → class."""
        from pulsetrain.runtime.device import Access, device_classes, find_device_class

        classes: dict[str, type] = {}
        for device in self.devices.values():
            where = _table("devices", device.declared)
            if device.server and device.server not in self.servers:
                report.add(
                    where,
                    "servers" if device.replica_of else "server",
                    f"{device.server!r} is not in [servers] (has: "
                    f"{', '.join(self.servers) or 'none'})"
                    + _did_you_mean(device.server, self.servers),
                )
            if not device.class_name:
                continue
            try:
                cls = find_device_class(device.class_name, self._module_path())
            except PulsetrainError as exc:
                hint = ""
                if ":" not in device.class_name:
                    hint = _did_you_mean(device.class_name, device_classes())
                report.add(where, "class", f"{exc}{hint}")
                continue
            except Exception as exc:  # noqa: BLE001 - importing a plugin may raise anything
                report.add(
                    where,
                    "class",
                    f"cannot import {device.class_name!r}: {type(exc).__name__}: {exc}",
                )
                continue
            classes[device.device_id] = cls
            props = cls.properties()
            for key, value in device.config.items():
                if key in ("inputs", "outputs"):
                    known = set(cls.inputs if key == "inputs" else cls.outputs)
                    if not isinstance(value, dict):
                        report.add(where, f"config.{key}", "must be a table of channels")
                        continue
                    for ch in value:
                        if ch not in known:
                            report.add(
                                where,
                                f"config.{key}.{ch}",
                                f"class {cls.__name__} "
                                f"has no {key[:-1]} {ch!r}" + _did_you_mean(ch, known),
                            )
                    continue
                prop = props.get(key)
                if prop is None:
                    report.add(
                        where,
                        f"config.{key}",
                        f"class {cls.__name__} has no property {key!r}" + _did_you_mean(key, props),
                    )
                    continue
                if prop.access is Access.READONLY:
                    report.add(where, f"config.{key}", "is read-only: the device sets it itself")
                    continue
                try:
                    prop.validate(value)
                except (PulsetrainError, TypeError, ValueError) as exc:
                    message = str(exc).strip().removeprefix(f"{key}: ")
                    report.add(where, f"config.{key}", message)
        return classes

    def _check_connections(self, report: _Report, classes: Mapping[str, type]) -> set[int]:
        """Channels and policies of the connections; returns the numbers of the valid ones."""
        valid: set[int] = set()
        policies: dict[str, tuple] = {}
        seen: dict[tuple[str, str], int] = {}
        for i, conn in enumerate(self.connections, 1):
            where = f"[[connections]] #{conn.number or i}"
            ends_ok = True
            for ref, key, kind in ((conn.output, "from", "outputs"), (conn.input, "to", "inputs")):
                dev, ch = _split_channel(ref, key)
                ends_ok = ends_ok and dev in classes
                if dev not in self.devices:
                    report.add(
                        where, key, f"{ref!r}: no device {dev!r}" + _did_you_mean(dev, self.devices)
                    )
                    continue
                cls = classes.get(dev)
                if cls is None:
                    continue  # its class is reported already
                known = list(getattr(cls, kind))
                if ch not in known:
                    ends_ok = False
                    report.add(
                        where,
                        key,
                        f"{ref!r}: class {cls.__name__} has no "
                        f"{kind[:-1]} {ch!r} (has: {', '.join(known) or 'none'})"
                        + _did_you_mean(ch, known),
                    )
            policy = (conn.data_distribution, conn.on_slowness, conn.max_queue_length)
            ok = True
            for key, args in (
                ("data_distribution", (conn.data_distribution, "drop", 1)),
                ("on_slowness", (DISTRIBUTIONS[0], conn.on_slowness, 1)),
                (
                    "max_queue_length",
                    (DISTRIBUTIONS[0], SLOWNESS_POLICIES[0], conn.max_queue_length),
                ),
            ):
                try:
                    validate_policy(*args)
                except ConfigurationError as exc:
                    report.add(where, key, str(exc).removeprefix(f"{key} "))
                    ok = False
            if ok:
                policy = validate_policy(*policy)
                first = policies.setdefault(conn.input, policy)
                if first != policy:
                    report.add(
                        where,
                        "to",
                        f"input {conn.input!r} is connected with two "
                        f"different policies {first} and {policy}: a policy belongs to "
                        "the input",
                    )
            pair = (conn.output, conn.input)
            if pair in seen:
                report.add(
                    where,
                    None,
                    f"{conn.output} -> {conn.input} is connected twice "
                    f"(also [[connections]] #{seen[pair]})",
                )
            seen.setdefault(pair, conn.number or i)
            if ends_ok:
                valid.add(i)
        return valid

    def _check_cycles(self, report: _Report, valid: set[int]) -> None:
        """One line per cycle of the device graph (valid connections): trains would go round
        for ever."""
        edges: dict[str, list[tuple[str, int]]] = {}
        for i, conn in enumerate(self.connections, 1):
            if i not in valid:
                continue
            src = conn.output.rpartition(":")[0]
            dst = conn.input.rpartition(":")[0]
            if src in self.devices and dst in self.devices:
                edges.setdefault(src, []).append((dst, conn.number or i))
        state: dict[str, int] = {}  # 1: on the path, 2: done
        path: list[str] = []
        reported: set[frozenset[str]] = set()

        def visit(node: str) -> None:
            state[node] = 1
            path.append(node)
            for nxt, i in edges.get(node, []):
                if state.get(nxt) == 1:
                    cycle = path[path.index(nxt) :] + [nxt]
                    if frozenset(cycle) not in reported:
                        reported.add(frozenset(cycle))
                        report.add(
                            f"[[connections]] #{i}",
                            None,
                            f"closes a cycle {' -> '.join(cycle)}: trains would go round for ever",
                        )
                elif nxt not in state:
                    visit(nxt)
            path.pop()
            state[node] = 2

        for node in self.devices:
            if node not in state:
                visit(node)

    def _check_servers(self, report: _Report, classes: Mapping[str, type]) -> None:
        for server in self.servers.values():
            if server.local:
                continue
            outputs = sum(
                len(classes[d.device_id].outputs)
                for d in self.devices_on(server.name)
                if d.device_id in classes
            )
            where = _table("servers", server.name)
            if outputs and server.port_base is None:
                report.add(
                    where,
                    "port_base",
                    f"missing: the remote server's devices have "
                    f"{outputs} outputs, bound from port_base on",
                )
            elif server.port_base is not None and server.port_base + outputs - 1 > 65535:
                report.add(
                    where,
                    "port_base",
                    f"{server.port_base} + {outputs} outputs runs past port 65535",
                )

    def _check_endpoints(self, report: _Report, classes: Mapping[str, type], *, free: bool) -> None:
        """Fixed bind endpoints of local devices: well-formed, distinct and (``free``) free."""
        taken: dict[tuple[str, int], str] = {}
        for device_id, cls in classes.items():
            device = self.devices[device_id]
            server = self.servers.get(device.server)
            if server is None or not server.local:
                continue
            values = {k: p.default for k, p in cls.properties().items()}
            values.update(device.config)
            where = _table("devices", device.declared)
            for key, endpoint in _bind_endpoints(values):
                shown = f"config.{key}" if key in device.config else f"{key} (default)"
                if "://" not in endpoint:
                    report.add(where, shown, f"{endpoint!r} must look like 'tcp://HOST:PORT'")
                    continue
                if not endpoint.startswith("tcp://"):
                    continue  # ipc://, inproc://: no port
                try:
                    host, port = split_tcp_endpoint(endpoint)
                except ConfigurationError as exc:
                    report.add(where, shown, str(exc))
                    continue
                if port == 0:
                    continue
                other = taken.setdefault((host, port), f"{device_id} {key}")
                if other != f"{device_id} {key}":
                    report.add(where, shown, f"port {port} on {host} is also bound by {other}")
                    continue
                problem = port_problem(host, port) if free else None
                if problem:
                    report.add(where, shown, f"{endpoint}: {problem}")

    # ------------------------------------------------------------ resolution
    def resolve(self) -> dict[str, dict[str, Any]]:
        """Give outputs fixed endpoints and build every device's full configuration.

        Returns
        -------
        dict
            Device ID → configuration including ``outputs`` (bind endpoints) and ``inputs``
            (endpoints to connect to, and policy).

        Raises
        ------
        TopologyError
            If the topology has problems (see :meth:`check`; fixed ports are not checked).
        """
        from pulsetrain.runtime.device import find_device_class

        self.validate(ports=False)

        endpoints: dict[str, str] = {}
        local: dict[str, tuple[str, str]] = {}
        counters: dict[str, int] = {}
        configs: dict[str, dict[str, Any]] = {}
        for device in self.devices.values():
            server = self.servers[device.server]
            cls = find_device_class(device.class_name, self._module_path())
            cfg = copy.deepcopy(device.config)
            if ":" in device.class_name and self.directory is not None:
                cfg["module_path"] = [str(self.directory)]  # the server imports from there too
            outputs = cfg.setdefault("outputs", {})
            for name in cls.outputs:
                if server.local:
                    port = free_port(server.data_host)
                else:
                    if server.port_base is None:
                        raise ConfigurationError(
                            f"remote server {server.name!r} needs port_base for its outputs"
                        )
                    port = server.port_base + counters.get(server.name, 0)
                    counters[server.name] = counters.get(server.name, 0) + 1
                ep = f"tcp://{server.data_host}:{port}"
                inproc = f"inproc://pt/{device.device_id}:{name}"
                # tcp for other hosts/processes; inproc (zero-copy) for inputs on the same server
                outputs.setdefault(name, {})["bind"] = [ep, inproc]
                endpoints[f"{device.device_id}:{name}"] = ep
                local[f"{device.device_id}:{name}"] = (device.server, inproc)
            configs[device.device_id] = cfg
        merged: dict[str, int] = {}  # device → most replicas of one device it merges
        for conn in self.connections:
            in_dev, in_ch = _split_channel(conn.input, "input")
            out_spec = self.devices[_split_channel(conn.output, "output")[0]]
            if out_spec.replica_of:
                merged[in_dev] = max(merged.get(in_dev, 0), len(self.replicas_of(out_spec)))
            inputs = configs[in_dev].setdefault("inputs", {})
            entry = inputs.setdefault(in_ch, {"connect": []})
            entry.update(
                data_distribution=conn.data_distribution,
                on_slowness=conn.on_slowness,
                max_queue_length=conn.max_queue_length,
            )
            out_server, inproc = local[conn.output]
            same = out_server == self.devices[in_dev].server
            entry["connect"].append(inproc if same else endpoints[conn.output])
        for conn in self.connections:  # a replica reads only once its consumers are there
            out_dev, out_ch = _split_channel(conn.output, "output")
            if self.devices[out_dev].replica_of:
                entry = configs[out_dev]["outputs"][out_ch]
                entry["expect_inputs"] = entry.get("expect_inputs", 0) + 1
        for device_id, n in merged.items():
            spec = self.devices[device_id]
            cls = find_device_class(spec.class_name, self._module_path())
            if "max_reorder" in cls.properties() and "max_reorder" not in spec.config:
                configs[device_id]["max_reorder"] = REORDER_PER_REPLICA * n
        return configs

    def replicas_of(self, device: DeviceSpec | str) -> list[str]:
        """The IDs of the replicas of a device (of the file's ID, or of one replica's)."""
        spec = device if isinstance(device, DeviceSpec) else self.devices.get(device)
        base = device if spec is None else spec.declared
        return [d.device_id for d in self.devices.values() if d.replica_of == base]

    def _module_path(self) -> list[Path]:
        return [self.directory] if self.directory is not None else []

    def devices_on(self, server: str) -> list[DeviceSpec]:
        """Devices hosted by ``server``."""
        return [d for d in self.devices.values() if d.server == server]
