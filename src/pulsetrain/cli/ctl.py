"""``pulsetrain ctl``: get, set, call and list devices through the control plane."""

from __future__ import annotations

import argparse
import json

from pulsetrain.cli._args import connect_endpoint, positive_float

EPILOG = """examples:
  export PULSETRAIN_TOKEN_FILE=/tmp/pulsetrain-run-x/token
  pulsetrain ctl tcp://127.0.0.1:7000 list
  pulsetrain ctl tcp://127.0.0.1:7000 get SPB/MOTOR/SAMPLE_X actualPosition
  pulsetrain ctl tcp://127.0.0.1:7000 set SPB/MOTOR/SAMPLE_X targetPosition 2.5
  pulsetrain ctl tcp://127.0.0.1:7000 call SPB/MOTOR/SAMPLE_X move
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ctl",
        help="get/set/call/list devices on a server",
        description="Talk to a device server's control endpoint. The token comes from "
        "--token, $PULSETRAIN_TOKEN or $PULSETRAIN_TOKEN_FILE.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "endpoint",
        type=connect_endpoint,
        help="control endpoint of the server, e.g. tcp://127.0.0.1:7000",
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


def _parse(value: str) -> object:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def run(args: argparse.Namespace) -> int:
    from pulsetrain.control import Client
    from pulsetrain.errors import ConfigurationError

    if args.op in ("get", "set", "call", "schema") and not args.device:
        raise ConfigurationError(f"{args.op} needs a device ID")
    if args.op == "set" and (args.key is None or args.value is None):
        raise ConfigurationError("set needs a property and a value")
    if args.op == "call" and args.key is None:
        raise ConfigurationError("call needs a slot name")
    client = Client(args.endpoint, token=args.token, timeout=args.timeout)
    try:
        if args.op == "list":
            result = client.list()
        elif args.op == "ping":
            result = client.ping()
        elif args.op == "schema":
            result = client.schema(args.device)
        elif args.op == "get":
            result = client.get(args.device, args.key)
        elif args.op == "set":
            result = client.set(args.device, args.key, _parse(args.value))
        else:
            result = client.call(args.device, args.key)
    finally:
        client.close()
    print(json.dumps(result, indent=2, default=lambda o: getattr(o, "tolist", lambda: str(o))()))
    return 0
