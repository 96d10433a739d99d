"""Built-in devices use only the public Device API, and that API behaves as documented."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

import pulsetrain.devices
from pulsetrain.errors import ConfigurationError, PropertyError
from pulsetrain.runtime import device as device_module
from pulsetrain.runtime.device import Device, ProducerDevice, Property, State, slot
from pulsetrain.testing import DeviceHarness
from waiting import wait_until

DEVICES_DIR = Path(pulsetrain.devices.__file__).parent


def base_private_names() -> set[str]:
    """``_name`` attributes of the base classes: class attributes and ``self._x`` they set."""
    tree = ast.parse(Path(device_module.__file__).read_text())
    names: set[str] = set()
    for cls in (Device, ProducerDevice):
        names.update(n for n in vars(cls) if n.startswith("_") and not n.startswith("__"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in ("Device", "ProducerDevice"):
            for sub in ast.walk(node):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                    and sub.attr.startswith("_")
                    and not sub.attr.startswith("__")
                ):
                    names.add(sub.attr)
    return names


def test_the_base_private_names_are_found():
    names = base_private_names()
    assert {"_values", "_stopping", "_props", "_queue", "_hosting_server", "_producing"} <= names


def test_built_in_devices_use_only_the_public_api():
    private = base_private_names()
    offences = []
    files = sorted(DEVICES_DIR.glob("*.py"))
    assert len(files) > 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr in private
            ):
                offences.append(f"{path.name}:{node.lineno}: self.{node.attr}")
    assert not offences, "private Device state used by built-in devices:\n" + "\n".join(offences)


def test_the_walk_catches_an_offence(tmp_path):
    """The check above is not vacuous: the same walk finds a ``self._values`` use."""
    bad = "class D:\n    def f(self):\n        self._values['x'] += 1\n"
    private = base_private_names()
    found = [
        n.attr
        for n in ast.walk(ast.parse(bad))
        if isinstance(n, ast.Attribute) and n.attr in private
    ]
    assert found == ["_values"]


# ---------------------------------------------------------------- count, record, listeners
class Counter(Device):
    inputs = ("input",)
    outputs = ("output",)

    seen = Property(int, 0, access="readonly")
    last = Property(int, 0, access="readonly")
    factor = Property(float, 1.0)
    helper_counts = Property(int, 0, access="readonly")

    def on_data(self, data, meta, channel):
        self.count("seen")
        self.record(last=int(data["S"]["v"]))
        self.write("output", data, meta)

    def count_from_a_helper_thread(self, n: int) -> None:
        def work():
            for _ in range(n):
                self.count("helper_counts")

        t = threading.Thread(target=work)
        t.start()
        t.join()


def test_count_and_record_are_visible_at_once_and_published_in_batches():
    with DeviceHarness(Counter) as dev:
        events = []
        dev.device.add_listener(lambda d, k, v: events.append((k, v)))
        for i in range(30):
            dev.send({"S": {"v": i}}, train_id=i + 1)
            dev.receive()
        assert dev.get("seen") == 30 and dev.get("last") == 29
        assert dev.get("trainsIn") == 30 and dev.get("trainsOut") == 30
        wait_until(lambda: ("seen", 30) in events, timeout=10, what="the last count published")
        published = [v for k, v in events if k == "seen"]
        assert len(published) < 30  # not one event per call
        assert published == sorted(published)


def test_count_from_another_thread_is_handed_to_the_device_thread():
    with DeviceHarness(Counter) as dev:
        dev.device.run_in_device(lambda: None)  # worker running
        dev.device.count_from_a_helper_thread(5000)
        assert wait_until(lambda: dev.get("helper_counts") == 5000, what="5000 counts")


def test_count_and_record_refuse_unknown_and_settable_keys():
    d = Counter("X")
    with pytest.raises(PropertyError, match="unknown"):
        d.count("nope")
    with pytest.raises(PropertyError, match="read-only values only"):
        d.record(factor=2.0)
    with pytest.raises(PropertyError, match="expected a value of type int"):
        d.record(last="x")


def test_a_property_may_not_shadow_the_api():
    with pytest.raises(TypeError, match="may not reuse the name of Device.count"):

        class Bad(Device):
            count = Property(int, 0, access="readonly")


def test_server_attribute_and_stopping():
    d = Counter("X")
    assert d.server is None and d.stopping is False
    with pytest.raises(AttributeError):
        d.server = object()
    with DeviceHarness(Counter) as dev:
        assert dev.device.server is dev.server
        device = dev.device
    assert device.stopping is True
    assert device.wait_stop(0) is True


# ---------------------------------------------------------------- end-of-stream by default
class TwoInputs(Device):
    inputs = ("a", "b")
    outputs = ("out1", "out2")


def test_end_of_stream_is_forwarded_once_every_input_ended():
    with DeviceHarness(TwoInputs) as dev:
        dev.end_of_stream("a")
        wait_until(lambda: "a" in dev.device._ended_inputs, what="end-of-stream on a")
        dev.device.run_in_device(lambda: None)  # on_eos("a") has returned
        with pytest.raises(TimeoutError):
            dev.receive("out1", timeout=0.5)  # input b has not ended: nothing forwarded
        dev.end_of_stream("b")
        assert dev.receive_eos("out1") == 0
        assert dev.receive_eos("out2") == 0


# ---------------------------------------------------------------- ProducerDevice
class Counting(ProducerDevice):
    outputs = ("output",)
    rate = Property(float, 0.0, minimum=0.0, unit="Hz")
    trainId = Property(int, 100, access="readonly")
    threads = Property(list, [], access="readonly")

    def produce(self):
        tid = self.trainId
        self.write("output", {"S": {"v": tid}}, {"S": {"source": "S", "timestamp.tid": tid}})
        self.record(trainId=tid + 1)
        ident = threading.get_ident()
        if ident not in self.threads:
            self.record(threads=[*self.threads, ident])
        return True


def test_producer_sends_n_trains_then_end_of_stream_on_the_device_thread():
    with DeviceHarness(Counting, {"n_trains": 7}) as dev:
        tids = [dev.receive()[0]["S"]["v"] for _ in range(7)]
        assert tids == list(range(100, 107))
        assert dev.receive_eos() == 0
        dev.wait_for("state", "STOPPED")
        assert dev.get("status") == "all trains sent"
        assert dev.get("sentTrains") == 7
        worker = dev.device.run_in_device(threading.get_ident)
        assert dev.get("threads") == [worker]


def test_producer_start_stop_slots_and_rate():
    with DeviceHarness(Counting, {"autostart": False, "rate": 20.0}) as dev:
        assert dev.get("state") == State.ON.value
        with pytest.raises(TimeoutError):
            dev.receive(timeout=0.5)
        assert dev.get("sentTrains") == 0
        dev.call("start_acquisition")
        assert dev.get("state") == "ACQUIRING"
        for _ in range(5):
            dev.receive()
        dev.call("stop_acquisition")
        sent = dev.get("sentTrains")
        assert dev.get("state") == "STOPPED"
        wait_until(lambda: dev.get("actualRate") > 0, what="a measured rate")
        assert dev.get("actualRate") < 40  # paced, not as fast as possible
        assert dev.get("sentTrains") == sent  # no train after the stop slot returned


class Failing(Counting):
    def produce(self):
        if self.sentTrains == 2:
            raise RuntimeError("broken source")
        return super().produce()


def test_an_exception_in_produce_is_an_error_and_pauses_production():
    with DeviceHarness(Failing) as dev:
        dev.wait_for("state", "ERROR")
        assert "broken source" in dev.get("status")
        assert dev.get("sentTrains") == 2 and dev.get("errorCount") == 1
        dev.call("reset")
        dev.call("start_acquisition")
        dev.wait_for("state", "ERROR")
        assert dev.get("errorCount") == 2


# ---------------------------------------------------------------- registration
def test_register_device_class_and_find_it():
    name = device_module.register_device_class(Counter, "CounterForTest")
    assert device_module.find_device_class(name) is Counter
    with pytest.raises(ConfigurationError, match="not a Device class"):
        device_module.register_device_class(int)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown device class"):
        device_module.find_device_class("NoSuchDeviceClass")


def test_module_class_from_a_search_path(tmp_path):
    (tmp_path / "pt_searched_devs.py").write_text(
        "from pulsetrain.runtime.device import Device\n\nclass Here(Device):\n    pass\n"
    )
    with pytest.raises(ConfigurationError, match="cannot import"):
        device_module.find_device_class("pt_searched_devs_missing:Here", [tmp_path])
    cls = device_module.find_device_class("pt_searched_devs:Here", [tmp_path])
    assert cls.__name__ == "Here" and issubclass(cls, Device)


def test_a_slot_may_not_replace_a_device_method_but_may_take_its_name():
    with pytest.raises(TypeError, match="may not replace Device.stop"):

        class Bad(Device):
            @slot
            def stop(self):
                pass

    class Good(Device):
        halted = Property(bool, False, access="readonly")

        @slot(name="stop", description="Halt")
        def halt(self):
            self.update(halted=True)

    assert "stop" in Good.slots() and "halt" not in Good.slots()
    with DeviceHarness(Good) as dev:
        dev.call("stop")
        assert dev.get("halted") is True
        device = dev.device
    assert device.stopping  # closing the harness ran the lifecycle stop, not the slot


def test_the_device_api_is_importable_from_the_package():
    import pulsetrain
    from pulsetrain import Device, ProducerDevice, Property, State, register_device_class, slot
    from pulsetrain.runtime import device as device_module

    assert (Device, ProducerDevice, Property, State, slot, register_device_class) == (
        device_module.Device,
        device_module.ProducerDevice,
        device_module.Property,
        device_module.State,
        device_module.slot,
        device_module.register_device_class,
    )
    with pytest.raises(AttributeError, match="no attribute 'Devise'"):
        pulsetrain.Devise  # noqa: B018


def test_a_start_whose_output_cannot_bind_leaves_no_thread_or_port():
    import socket
    import threading

    from pulsetrain.runtime.device import Device
    from pulsetrain.runtime.ports import free_port

    class TwoOutputs(Device):
        outputs = ("first", "second")

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    first = free_port()
    device = TwoOutputs(
        "TEST/TWO/OUTPUTS",
        {
            "outputs": {
                "first": {"bind": [f"tcp://127.0.0.1:{first}"]},
                "second": {"bind": [f"tcp://127.0.0.1:{taken.getsockname()[1]}"]},
            }
        },
    )
    try:
        with pytest.raises(Exception, match="second"):
            device.start()
    finally:
        taken.close()
    assert not [t for t in threading.enumerate() if t.name == "dev:TEST/TWO/OUTPUTS"]
    # The first output's port was released: no socket listens on it when start() has returned.
    # SO_REUSEADDR (as every server sets it) so that a connection some other test's input made
    # to this port number, now in TIME_WAIT, does not count as the port being held.
    again = socket.socket()
    again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        again.bind(("127.0.0.1", first))
    finally:
        again.close()
