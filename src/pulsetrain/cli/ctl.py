"""``pulsetrain ctl``: get, set, call and list devices through the control plane."""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from pulsetrain.cli._args import connect_endpoint, positive_float
from pulsetrain.errors import ConfigurationError

EPILOG = """examples:
  # a topology started with `pulsetrain run` on this host, by name or file (token found)
  pulsetrain ctl calibration-pipeline list
  pulsetrain ctl examples/calibration-pipeline.toml get SPB/MOTOR/SAMPLE_X actualPosition

  # one server, by its control endpoint
  export PULSETRAIN_TOKEN_FILE=/tmp/pulsetrain-run-x/token
  pulsetrain ctl tcp://127.0.0.1:7000 list
  pulsetrain ctl tcp://127.0.0.1:7000 set SPB/MOTOR/SAMPLE_X targetPosition 2.5
  pulsetrain ctl tcp://127.0.0.1:7000 call SPB/MOTOR/SAMPLE_X move

`list` shows, per server, its pid, how often the supervisor restarted it and why the last time
(an exit code, a signal, "memory limit", or "no answer"), and its devices with state and status.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ctl",
        help="get/set/call/list devices of a running topology or one server",
        description="Talk to the device servers of a running topology (its name or file: the "
        "token is read from its token file) or to one server's control endpoint (the token "
        "comes from --token, $PULSETRAIN_TOKEN or $PULSETRAIN_TOKEN_FILE).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        type=_target,
        help="a running topology (name or TOML file) or a control endpoint, e.g. "
        "tcp://127.0.0.1:7000",
    )
    p.add_argument("op", choices=["list", "get", "set", "call", "schema", "ping"])
    p.add_argument("device", nargs="?")
    p.add_argument("key", nargs="?", help="property (get/set) or slot (call)")
    p.add_argument("value", nargs="?", help="value to set, parsed as JSON when possible")
    p.add_argument("--token", help="control token")
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        help="seconds to wait for a reply (default 10)",
    )
    p.set_defaults(func=run)


def _target(text: str) -> str:
    """A topology name or file, or a control endpoint (``HOST:PORT`` without a scheme is
    refused: it is neither)."""
    if "://" in text:
        return connect_endpoint(text)
    if re.fullmatch(r"[\w.-]*:\d+", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an endpoint: write it with its scheme, e.g. tcp://{text}"
        )
    return text


def _parse(value: str) -> object:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _restart_info(server: dict[str, Any]) -> dict[str, Any]:
    last = server.get("last_restart")
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.get("time", 0)))
        last = {"time": when, "cause": last.get("cause")}
    info = {"pid": server.get("pid"), "restarts": server.get("restarts", 0), "last_restart": last}
    if server.get("remote"):  # started by its host: reachable or not, as the supervisor sees it
        since = server.get("unreachable_since")
        info.update(
            remote_pid=server.get("remote_pid"),
            reachable=server.get("reachable", True),
            unreachable_since=(
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else None
            ),
        )
    return info


def _list(clients: dict[str, Any], servers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Server name → pid, restarts, last restart, control endpoint and devices."""
    out = {}
    for name, client in clients.items():
        info = _restart_info(servers.get(name, {}))
        try:
            devices = client.list()
        except TimeoutError as exc:
            devices = {"error": str(exc)}
        out[name] = {**info, "control": client.endpoint, "devices": devices}
    return out


def run(args: argparse.Namespace) -> int:
    from pulsetrain.errors import PulsetrainError
    from pulsetrain.runtime import runstate
    from pulsetrain.runtime.control import Client, TopologyClient

    if args.op in ("get", "set", "call", "schema") and not args.device:
        raise ConfigurationError(f"{args.op} needs a device ID")
    if args.op == "set" and (args.key is None or args.value is None):
        raise ConfigurationError("set needs a property and a value")
    if args.op == "call" and args.key is None:
        raise ConfigurationError("call needs a slot name")
    topology: TopologyClient | None = None
    client: Client | None = None
    try:
        if "://" in args.target:
            found = runstate.find_server(args.target)
            token = args.token
            if token is None and found is not None:
                with open(found[0]["token_file"]) as f:
                    token = f.read().strip()
            client = Client(args.target, token=token, timeout=args.timeout)
            name = found[1] if found else client.ping()["server"]
            servers = {name: found[0]["servers"][name]} if found else {}
            clients = {name: client}
        else:
            try:
                topology = TopologyClient.for_topology(args.target, token=args.token)
            except PulsetrainError as exc:
                raise ConfigurationError(
                    f"{exc} ({args.target!r} is neither a running topology nor a control "
                    "endpoint such as tcp://HOST:PORT)"
                ) from None
            for c in topology.clients.values():
                c.timeout = args.timeout
            servers = topology.state.get("servers", {})
            clients = topology.clients
        if args.op == "list":
            result: Any = _list(clients, servers)
        elif args.op == "ping":
            result = client.ping() if client else {n: c.ping() for n, c in clients.items()}
        else:
            target = client or topology.client(args.device)  # type: ignore[union-attr]
            if args.op == "schema":
                result = target.schema(args.device)
            elif args.op == "get":
                result = target.get(args.device, args.key)
            elif args.op == "set":
                result = target.set(args.device, args.key, _parse(args.value))
            else:
                result = target.call(args.device, args.key)
    finally:
        for c in topology.clients.values() if topology else [client] if client else []:
            c.close()
    print(json.dumps(result, indent=2, default=lambda o: getattr(o, "tolist", lambda: str(o))()))
    return 0
