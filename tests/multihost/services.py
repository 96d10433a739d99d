"""What the multihost tests run on their test hosts: device servers "under systemd", and the
figure-2 topology spread over the hosts.

Plain Python (imported by the tests of this folder and usable from ``benchmarks/``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from hosts import Host, HostNetwork
from pulsetrain.runtime.control import Client

DET = "SPB_DET_AGIPD1M-1"
SIM = f"{DET}/DET/SIM"
MATCHER = f"{DET}/CAL/MATCHER"
BRIDGE = f"{DET}/CAL/BRIDGE"
CONTROL_PORT = 7000
BRIDGE_PORT = 4545


def corr_id(module: int) -> str:
    """Device ID of a module's correction (as in ``examples/calibration-pipeline.toml``)."""
    return f"{DET}/CAL/CORR_{module:02d}"


class Service:
    """``pulsetrain server`` on a test host, run the way a systemd unit runs it: started by
    someone else than the supervisor, with a token file, bound to the host's address; the test
    plays systemd's ``Restart=always`` with :meth:`restart`."""

    def __init__(
        self,
        host: Host,
        name: str,
        token_file: Path,
        port: int = CONTROL_PORT,
        env: dict[str, str] | None = None,
    ):
        self.host = host
        self.name = name
        self.port = port
        self.token_file = token_file
        self.token = token_file.read_text().strip()
        # as deploy/pulsetrain-server@.service sets them
        self.env = {
            **(os.environ if env is None else env),
            "NUMBA_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        self.log = host.tmp / f"server-{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """The control endpoint (what a topology's ``[servers.x] endpoint`` names)."""
        return f"tcp://{self.host.address}:{self.port}"

    def start(self) -> Service:
        """Start the server process."""
        with open(self.log, "ab") as log:
            self.proc = self.host.popen(
                [sys.executable, "-m", "pulsetrain", "server", "--name", self.name,
                 "--bind", self.endpoint, "--token-file", str(self.token_file)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server process and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        """What systemd does after the process died: start it again, same command."""
        self.kill()
        self.start()

    def warm(self, class_name: str, config: dict, timeout: float = 120.0) -> None:
        """Create and kill one device of ``class_name`` outside any run, so the server has
        imported what the class needs (a server under systemd has been up for a while; on a
        loaded 2-core test machine the first import of the catalogue takes seconds)."""
        from waiting import wait_until

        wait_until(lambda: self.ping() is not None, timeout=60, what=f"server {self.name} up")
        with self.client(timeout=timeout) as c:
            c.instantiate(class_name, f"WARMUP/{self.name}", config)
            c.kill(f"WARMUP/{self.name}")

    def client(self, timeout: float = 5.0) -> Client:
        """A control client (the caller closes it)."""
        return Client(self.endpoint, token=self.token, timeout=timeout)

    def ping(self, timeout: float = 2.0) -> dict | None:
        """The server's ``ping`` answer, or None when it does not answer."""
        with self.client() as c:
            try:
                return c.request("ping", timeout=timeout)
            except TimeoutError:
                return None

    def last_log(self, n: int = 30) -> str:
        """The end of the server's log (for failure messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def figure2_topology(
    name: str,
    net: HostNetwork,
    services: dict[str, Service],
    corr_servers: list[str],
    matcher_server: str,
    bridge_server: str,
    frames: int = 2,
) -> str:
    """Figure 2 of the design across hosts, as TOML.

    The simulated AGIPD-1M runs on a local server of the control host (its outputs bound on the
    bridge address); the 16 corrections are spread round-robin-in-blocks over
    ``corr_servers``; the matcher and the bridge run on their own servers.  Connections are the
    example's (``queueDrop``, 4 trains), the bridge a REP socket on the bridge server's host.
    """
    lines = [
        "[topology]",
        f'name = "{name}"',
        "[servers.detector]",
        f'data_host = "{net.control_address}"',
    ]
    for server, svc in services.items():
        lines += [
            f"[servers.{server}]",
            f'endpoint = "{svc.endpoint}"',
            f'data_host = "{svc.host.address}"',
            f"port_base = {svc.port + 100}",
        ]
    lines += [
        f'[devices."{SIM}"]',
        'class = "SimulatedDetector"',
        'server = "detector"',
        (
            f'config = {{ detector = "AGIPD", frames = {frames}, memory_cells = {frames}, '
            "rate = 10.0 }"
        ),
        f'[devices."{MATCHER}"]',
        'class = "TrainMatcher"',
        f'server = "{matcher_server}"',
        'config = { mode = "match", buffer_size = 20 }',
        f'[devices."{BRIDGE}"]',
        'class = "Bridge"',
        f'server = "{bridge_server}"',
        (
            f'config = {{ endpoint = "tcp://{services[bridge_server].host.address}:{BRIDGE_PORT}", '
            'pattern = "REP", max_queue = 2, keys = ["image.data", "image.trainId", '
            '"calibration.corrected"] }'
        ),
        "[[connections]]",
        f'from = "{MATCHER}:output"',
        f'to = "{BRIDGE}:input"',
    ]
    per = -(-16 // len(corr_servers))
    for m in range(16):
        lines += [
            f'[devices."{corr_id(m)}"]',
            'class = "AGIPDCorrection"',
            f'server = "{corr_servers[m // per]}"',
            (
                f"config = {{ module = {m}, memory_cells = {frames}, "
                'on_missing_constants = "passthrough" }'
            ),
            "[[connections]]",
            f'from = "{SIM}:module{m}"',
            f'to = "{corr_id(m)}:input"',
            'on_slowness = "queueDrop"',
            "max_queue_length = 4",
            "[[connections]]",
            f'from = "{corr_id(m)}:output"',
            f'to = "{MATCHER}:input"',
            'on_slowness = "queueDrop"',
            "max_queue_length = 4",
        ]
    return "\n".join(lines) + "\n"


def corr_modules(topology_text: str, server: str) -> list[int]:
    """Modules whose correction runs on ``server`` in a :func:`figure2_topology`."""
    out = []
    blocks = topology_text.split("[devices.")
    for block in blocks:
        if "/CAL/CORR_" in block.split("\n", 1)[0] and f'server = "{server}"' in block:
            out.append(int(block.split("CORR_", 1)[1][:2]))
    return out


def env_with(**extra: str) -> dict[str, str]:
    """Our environment plus ``extra``."""
    return {**os.environ, **extra}
