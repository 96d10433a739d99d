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

:meth:`Topology.resolve` gives every output a fixed endpoint (a free port on the loopback
interface for local servers, ``port_base + n`` on ``data_host`` for remote ones) and turns the
connections into each device's input configuration.  Fixed endpoints are what lets a restarted
server come back on the same addresses, so its peers reconnect by themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pulsetrain.channels import PORT_RANGE, free_port, validate_policy  # noqa: F401
from pulsetrain.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ServerSpec", "DeviceSpec", "Connection", "Topology"]


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


@dataclasses.dataclass
class Connection:
    """One output → input connection with the input's policy."""

    output: str  # deviceId:channel
    input: str  # deviceId:channel
    data_distribution: str = "copy"
    on_slowness: str = "drop"
    max_queue_length: int = 2


def _split_channel(ref: str, what: str) -> tuple[str, str]:
    device, sep, channel = ref.rpartition(":")
    if not sep or not device or not channel:
        raise ConfigurationError(f"{what} {ref!r} must look like 'DEVICE_ID:channel'")
    return device, channel


class Topology:
    """A parsed and validated topology.

    Parameters
    ----------
    name : str
        Name of the topology.
    servers, devices : dict
        By name / device ID.
    connections : list of Connection
    """

    def __init__(
        self,
        name: str,
        servers: dict[str, ServerSpec],
        devices: dict[str, DeviceSpec],
        connections: list[Connection],
        extra: dict[str, Any] | None = None,
    ):
        self.name = name
        self.servers = servers
        self.devices = devices
        self.connections = connections
        self.extra = extra or {}
        #: Directory of the topology file: ``module:Class`` device classes are looked up there
        #: first (see :func:`pulsetrain.device.find_device_class`).
        self.directory: Path | None = None
        self._validate()

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path) -> Topology:
        """Read a topology TOML file."""
        path = Path(path)
        try:
            with path.open("rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigurationError(f"topology file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"topology file {path} is not valid TOML: {exc}") from exc
        topology = cls.from_dict(doc, default_name=path.stem)
        topology.directory = path.resolve().parent
        return topology

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], default_name: str = "topology") -> Topology:
        """Build a topology from the parsed TOML document."""
        doc = copy.deepcopy(dict(doc))
        head = doc.pop("topology", {}) or {}
        servers = {}
        for name, spec in (doc.pop("servers", {}) or {}).items():
            spec = dict(spec or {})
            unknown = set(spec) - {"endpoint", "data_host", "port_base", "memory_limit_mb", "env"}
            if unknown:
                raise ConfigurationError(f"server {name!r}: unknown keys {sorted(unknown)}")
            servers[name] = ServerSpec(name=name, **spec)
        devices = {}
        for device_id, spec in (doc.pop("devices", {}) or {}).items():
            spec = dict(spec or {})
            try:
                class_name = spec.pop("class")
                server = spec.pop("server")
            except KeyError as exc:
                raise ConfigurationError(f"device {device_id!r}: missing {exc.args[0]!r}") from None
            config = spec.pop("config", {}) or {}
            if spec:
                raise ConfigurationError(f"device {device_id!r}: unknown keys {sorted(spec)}")
            devices[device_id] = DeviceSpec(device_id, class_name, server, dict(config))
        connections = []
        for i, spec in enumerate(doc.pop("connections", []) or []):
            spec = dict(spec)
            try:
                conn = Connection(
                    output=spec.pop("from"),
                    input=spec.pop("to"),
                    data_distribution=spec.pop("data_distribution", "copy"),
                    on_slowness=spec.pop("on_slowness", "drop"),
                    max_queue_length=int(spec.pop("max_queue_length", 2)),
                )
            except KeyError as exc:
                raise ConfigurationError(f"connection {i}: missing {exc.args[0]!r}") from None
            if spec:
                raise ConfigurationError(f"connection {i}: unknown keys {sorted(spec)}")
            connections.append(conn)
        return cls(head.get("name", default_name), servers, devices, connections, extra=doc)

    def _validate(self) -> None:
        for device in self.devices.values():
            if device.server not in self.servers:
                raise ConfigurationError(
                    f"device {device.device_id!r} names server {device.server!r}, which is not "
                    f"in [servers] ({', '.join(self.servers) or 'none'})"
                )
        policies: dict[str, tuple] = {}
        for conn in self.connections:
            out_dev, _ = _split_channel(conn.output, "output")
            in_dev, _ = _split_channel(conn.input, "input")
            for dev, ref in ((out_dev, conn.output), (in_dev, conn.input)):
                if dev not in self.devices:
                    raise ConfigurationError(f"connection {ref!r}: no device {dev!r}")
            policy = validate_policy(conn.data_distribution, conn.on_slowness,
                                     conn.max_queue_length)
            if policies.setdefault(conn.input, policy) != policy:
                raise ConfigurationError(
                    f"input {conn.input!r} is connected with two different policies "
                    f"{policies[conn.input]} and {policy}: a policy belongs to the input"
                )

    def check_classes(self) -> None:
        """Check that every device class exists and has the channels the connections use."""
        from pulsetrain.device import find_device_class

        for device in self.devices.values():
            cls = find_device_class(device.class_name, self._module_path())
            device.channels = (set(cls.outputs), set(cls.inputs))  # type: ignore[attr-defined]
        for conn in self.connections:
            for ref, kind in ((conn.output, 0), (conn.input, 1)):
                dev, ch = _split_channel(ref, "channel")
                known = self.devices[dev].channels[kind]  # type: ignore[attr-defined]
                if ch not in known:
                    raise ConfigurationError(
                        f"{ref!r}: class {self.devices[dev].class_name} has no "
                        f"{'output' if kind == 0 else 'input'} {ch!r} (has: {sorted(known)})"
                    )

    # ------------------------------------------------------------ resolution
    def resolve(self) -> dict[str, dict[str, Any]]:
        """Give outputs fixed endpoints and build every device's full configuration.

        Returns
        -------
        dict
            Device ID → configuration including ``outputs`` (bind endpoints) and ``inputs``
            (endpoints to connect to, and policy).
        """
        from pulsetrain.device import find_device_class

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
        for conn in self.connections:
            in_dev, in_ch = _split_channel(conn.input, "input")
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
        return configs

    def _module_path(self) -> list[Path]:
        return [self.directory] if self.directory is not None else []

    def devices_on(self, server: str) -> list[DeviceSpec]:
        """Devices hosted by ``server``."""
        return [d for d in self.devices.values() if d.server == server]
