"""Run a device in a real device server inside this process: the harness for device tests.

:class:`DeviceHarness` starts a :class:`~pulsetrain.runtime.server.DeviceServer` in a background
thread, creates one device in it through the control plane (exactly as ``pulsetrain run``
does), connects an output channel of the harness to each of the device's inputs and an input
channel of the harness to each of its outputs, and then lets a test feed trains, read what the
device writes, and get, set and call through the control plane::

    from pulsetrain.testing import DeviceHarness

    with DeviceHarness(ImageMean, config={"scale": 2.0}) as dev:
        dev.send({"CAM": {"image.data": np.ones((4, 4))}}, train_id=1)
        data, meta = dev.receive()
        assert dev.get("processedTrains") == 1

A :class:`~pulsetrain.runtime.device.ProducerDevice` with ``autostart`` starts producing only once the
harness is connected to its outputs, so the test sees its first train.  The device class need
not be installed: the harness registers it in this process (see
:func:`pulsetrain.runtime.device.register_device_class`).  The project's own device tests use this
module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pulsetrain.errors import DeviceError
from pulsetrain.protocol import make_meta
from pulsetrain.runtime import control
from pulsetrain.runtime.channels import EndOfStream, InputChannel, OutputChannel
from pulsetrain.runtime.device import (
    Device,
    ProducerDevice,
    State,
    find_device_class,
    register_device_class,
)
from pulsetrain.runtime.server import DeviceServer

__all__ = ["DeviceHarness"]


class DeviceHarness:
    """One device in an in-process server, wired to the test.

    Parameters
    ----------
    device_class : Device subclass or str
        The class (registered in this process under a name of the harness's own), or the name
        of an installed or registered class (``'TrainMatcher'``, ``'mymod:MyDevice'``).
    config : mapping, optional
        The device's configuration, as in a topology's ``config`` table.
    device_id : str
        The device's ID.
    input_policy : mapping, optional
        Policy of the device's inputs, by input name (``{'input': {'on_slowness': 'wait'}}``;
        keys ``on_slowness``, ``data_distribution``, ``max_queue_length``).  By default every
        input waits, so no train the test sends is dropped.
    outputs : iterable of str, optional
        The outputs to connect to (default: all).  The harness reads up to
        :attr:`READ_AHEAD` trains ahead on each; past that, a device writing to an output the
        test does not read waits for it, so connect only the outputs the test reads.
    request_timeout : float
        Seconds a set or call may take on the device before failing.

    Attributes
    ----------
    server : DeviceServer
        The server hosting the device.
    client : pulsetrain.runtime.control.Client
        A control client of that server.
    device : Device
        The device object itself (for assertions; drive it through the methods below).
    endpoint, token : str
        The server's control endpoint and token (for ``pulsetrain ctl``).
    """

    #: Trains the harness accepts ahead of the test on each output.
    READ_AHEAD = 16

    def __init__(
        self,
        device_class: type[Device] | str,
        config: Mapping[str, Any] | None = None,
        *,
        device_id: str = "TEST/DEVICE/1",
        input_policy: Mapping[str, Mapping[str, Any]] | None = None,
        outputs: Iterable[str] | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        if isinstance(device_class, str):
            class_name = device_class
            cls = find_device_class(device_class)
        else:
            # a name of its own: never hides an installed class of the same name
            qualified = f"harness.{device_class.__module__}.{device_class.__qualname__}"
            class_name = register_device_class(device_class, qualified)
            cls = device_class
        self.device_id = device_id
        self.token = control.new_token()
        self.server = DeviceServer(
            f"harness-{device_id}", token=self.token, request_timeout=request_timeout
        ).start()
        self.endpoint = self.server.control_endpoint
        self.client = control.Client(self.endpoint, token=self.token, timeout=30.0)
        self._sources: dict[str, OutputChannel] = {}
        self._sinks: dict[str, InputChannel] = {}
        try:
            cfg = dict(config or {})
            inputs = dict(cfg.get("inputs") or {})
            for name in cls.inputs:
                policy = {"on_slowness": "wait", **(input_policy or {}).get(name, {})}
                inputs[name] = {**inputs.get(name, {}), **policy}
            cfg["inputs"] = inputs
            autostart = False
            if issubclass(cls, ProducerDevice):  # start once the outputs are wired
                autostart = bool(cfg.get("autostart", cls.properties()["autostart"].default))
                cfg["autostart"] = False
            self.client.instantiate(class_name, device_id, cfg)
            self.device: Device = self.server.devices[device_id]
            self._wire(self.device.outputs if outputs is None else tuple(outputs))
            if autostart and self.device.state in (State.ON.value, State.STOPPED.value):
                self.call("start_acquisition")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ wiring
    def _wire(self, outputs: tuple[str, ...]) -> None:
        for name in self.device.inputs:
            src = OutputChannel(f"harness:{name}", ["tcp://127.0.0.1:0"])
            self._sources[name] = src
            self.device.connect_input(name, src.endpoints[0])
        for name in outputs:
            if name not in self.device.outputs:
                raise DeviceError(f"{self.device_id} has no output {name!r}")
            sink = InputChannel(
                f"harness:{name}",
                on_slowness="wait",
                window=self.READ_AHEAD,
                shared_memory=False,  # received arrays stay valid after the next receive
            )
            tcp = next(
                e for e in self.device.output_channels[name].endpoints if e.startswith("tcp://")
            )
            sink.connect(tcp)
            self._sinks[name] = sink
        deadline = time.monotonic() + 20.0
        for name, src in self._sources.items():
            if not src.wait_for_inputs(1, max(0.0, deadline - time.monotonic())):
                raise DeviceError(f"{self.device_id}: input {name!r} did not connect")
        for name in self._sinks:
            out = self.device.output_channels[name]
            while not out.wait_for_inputs(1, 0.05):
                if time.monotonic() > deadline:
                    raise DeviceError(f"{self.device_id}: output {name!r} did not connect")

    # ------------------------------------------------------------ data
    def send(
        self,
        data: Mapping[str, Mapping[str, Any]],
        train_id: int | None = None,
        *,
        meta: Mapping[str, Mapping[str, Any]] | None = None,
        input: str = "input",
        timeout: float | None = 20.0,
    ) -> None:
        """Send one train to an input of the device.

        Give either ``train_id`` (metadata is made for every source, stamped now) or ``meta``.
        """
        if meta is None:
            if train_id is None:
                raise ValueError("send needs a train_id or meta")
            meta = {src: make_meta(src, train_id) for src in data}
        self._source(input).write(dict(data), dict(meta), timeout=timeout)

    def end_of_stream(self, input: str = "input") -> None:
        """Send end-of-stream to an input of the device."""
        self._source(input).signal_eos()

    def receive(self, output: str = "output", timeout: float = 20.0) -> tuple[dict, dict]:
        """The next train the device wrote on ``output``: ``(data, meta)``.

        Raises
        ------
        TimeoutError
            Nothing within ``timeout`` seconds.
        DeviceError
            The device sent end-of-stream instead.
        """
        item = self._sink(output).get(timeout=timeout)
        if isinstance(item, EndOfStream):
            raise DeviceError(f"{self.device_id}:{output} sent end-of-stream, not a train")
        return item.data, item.meta

    def receive_eos(self, output: str = "output", timeout: float = 20.0) -> int:
        """Read ``output`` until end-of-stream; returns how many trains came before it."""
        n = 0
        deadline = time.monotonic() + timeout
        while True:
            item = self._sink(output).get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(item, EndOfStream):
                return n
            n += 1

    def _source(self, name: str) -> OutputChannel:
        try:
            return self._sources[name]
        except KeyError:
            raise DeviceError(f"{self.device_id} has no wired input {name!r}") from None

    def _sink(self, name: str) -> InputChannel:
        try:
            return self._sinks[name]
        except KeyError:
            raise DeviceError(f"{self.device_id} has no wired output {name!r}") from None

    # ------------------------------------------------------------ control plane
    def get(self, key: str) -> Any:
        """A property of the device, through the control plane."""
        return self.client.get(self.device_id, key)

    def set(self, key: str, value: Any) -> Any:
        """Set a property through the control plane (validated, as for any client)."""
        return self.client.set(self.device_id, key, value)

    def call(self, slot: str, *args: Any) -> Any:
        """Call a slot through the control plane."""
        return self.client.call(self.device_id, slot, *args)

    def wait_for(
        self, key: str, expected: Any | Callable[[Any], bool], timeout: float = 20.0
    ) -> Any:
        """Wait until property ``key`` equals ``expected`` (or ``expected(value)`` is true)."""
        return self.client.wait_for(self.device_id, key, expected, timeout=timeout)

    # ------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Stop the device and the server; close the harness's channels."""
        for src in self._sources.values():
            src.close(linger=0.5)
        for sink in self._sinks.values():
            sink.close()
        self.client.close()
        self.server.close()

    def __enter__(self) -> DeviceHarness:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
