"""``pulsetrain gui``: serve the live web GUI of a running topology."""

from __future__ import annotations

import argparse
import logging
import os
import time

from pulsetrain.cli._args import existing_file
from pulsetrain.errors import ConfigurationError
from pulsetrain.runtime.lifetime import stop_signals
from pulsetrain.runtime.ports import port_or_zero_arg, port_problem

EPILOG = """examples:
  pulsetrain run examples/scenes/gui-topology.toml &        # start a topology first
  pulsetrain gui --topology examples/scenes/gui-topology.toml \\
      --scene examples/scenes/detector.toml --scene examples/scenes/operator.yaml
  pulsetrain gui --topology gui-demo --read-only --port 5006  # a display anyone may watch
  pulsetrain gui --topology gui-demo --preview-output "SPB_DET_AGIPD1M-1/PROC/PREVIEW:output"

security:
  The GUI binds 127.0.0.1 unless --bind says otherwise.  It reads the topology's control token
  from its token file; a page user must enter that token before any change to a device, and the
  device servers check it.  With --read-only every editor is disabled and changes are refused.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``gui`` sub-command."""
    p = subparsers.add_parser(
        "gui",
        help="serve the live web GUI (detector image, plots, device control) of a topology",
        description="Connect to a running topology, tap its preview and analysis outputs "
        "(latest train wins, never slowing the pipeline), poll its devices, and serve the "
        "scenes (pages described by TOML/YAML files) with an embedded Bokeh server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--topology",
        required=True,
        metavar="FILE_OR_NAME",
        help="the running topology: its TOML file or its name",
    )
    p.add_argument(
        "--scene",
        action="append",
        type=existing_file,
        default=[],
        metavar="FILE",
        help="a scene file (.toml/.yaml); repeat for several pages "
        "(default: an automatic overview)",
    )
    p.add_argument(
        "--port", type=port_or_zero_arg, default=5006, help="TCP port (default 5006; 0: any)"
    )
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="extra browser origin allowed to connect (when binding elsewhere)",
    )
    p.add_argument(
        "--read-only", action="store_true", help="disable and refuse every change to devices"
    )
    p.add_argument(
        "--preview-output",
        default="",
        metavar="DEVICE:output",
        help="output shown by image panels that name none (default: the first PreviewAssembler)",
    )
    p.add_argument(
        "--token-file",
        type=existing_file,
        default=None,
        help="read the control token from this file (default: the topology's)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT (Ctrl-C), SIGTERM or SIGHUP; returns the exit code."""
    from pulsetrain.gui import GuiServer

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # a browser tab closing while an image is on its way is normal, not a warning
        logging.getLogger("bokeh.server.views.ws").setLevel(logging.ERROR)

    if args.topology.endswith((".toml", ".TOML")) and not os.path.exists(args.topology):
        raise ConfigurationError(f"topology file {args.topology!r} does not exist")
    problem = port_problem(args.bind, args.port)
    if problem:
        raise ConfigurationError(f"cannot serve the GUI on {args.bind}:{args.port}: {problem}")
    token = None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    gui = GuiServer(
        args.topology,
        args.scene,
        port=args.port,
        address=args.bind,
        read_only=args.read_only,
        preview_output=args.preview_output,
        allow_origin=args.allow_origin,
        token=token,
    )
    gui.start()
    mode = "read-only" if args.read_only else "changes need the control token"
    print(f"GUI of topology {gui.backend.topology.state.get('topology')!r} ({mode}):", flush=True)
    for scene in gui.scenes:
        print(f"  {scene.title}: {gui.scene_url(scene.name)}", flush=True)
    print("Ctrl-C to stop.", flush=True)
    with stop_signals():  # SIGINT, SIGTERM and SIGHUP all stop the GUI the same way
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            gui.stop()
    return 0
