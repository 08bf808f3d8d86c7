"""The package against the real server binary: every call, refusals, timeouts, crashes, threads."""

from __future__ import annotations

import math
import socket
import sys
import threading
from typing import List

import pytest
from conftest import (
    MAIN_NAMES,
    MAX_CURRENT,
    MAX_VOLTAGE,
    NAMESPACE,
    NS_NAMES,
    PASSWORD,
    USERNAME,
    free_port,
    start_server,
    wait_until,
)

from pza_power_supply import Client, PowerSupply, PzaError, Rejected, Timeout

# The emulator's default load, through which measure() sees I = V / R.
LOAD_OHMS = 10.0


def test_list_names_every_power_supply(client: Client) -> None:
    assert client.list() == MAIN_NAMES


def test_a_handle_knows_the_retained_state_at_once(client: Client) -> None:
    psu = client.power_supply("limited")
    assert client.power_supply("limited") is psu
    assert isinstance(psu, PowerSupply)
    assert psu.name == "limited"
    assert psu.status == "Running"
    assert psu.restarts == 0
    assert psu.panic_message is None
    assert psu.output is False
    assert psu.voltage == 1.0  # the emulator's 0 V start, clamped into security_min_voltage 1
    assert psu.current == 1.0
    info = psu.info
    assert info is not None
    # Which description P/info carries (the runner's or the model's) is the server's business.
    assert isinstance(info.pop("description"), str)
    assert info == {
        "model": "emulator",
        "security_min_voltage": 1.0,
        "security_max_voltage": 12.0,
        "security_min_current": 0.0,
        "security_max_current": 2.0,
        "voltage_decimals": 2,
        "current_decimals": 3,
    }


def test_set_voltage_returns_the_value_read_back(client: Client) -> None:
    psu = client.power_supply("emulator")
    assert psu.set_voltage(5.0) == 5.0
    assert psu.voltage == 5.0
    assert psu.set_voltage(3.3) == 3.3
    assert psu.voltage == 3.3
    # An int is a number too; the device rounds to its 2 decimals.
    assert psu.set_voltage(12) == 12.0
    assert psu.set_voltage(1.234) == 1.23


def test_set_current_returns_the_value_read_back(client: Client) -> None:
    psu = client.power_supply("emulator")
    assert psu.set_current(0.5) == 0.5
    assert psu.current == 0.5
    assert psu.set_current(1.25) == 1.25
    assert psu.current == 1.25


def test_output_on_and_off(client: Client) -> None:
    psu = client.power_supply("emulator")
    assert psu.enable_output() is True
    assert psu.output is True
    assert psu.disable_output() is False
    assert psu.output is False


def test_measure_is_fresh_and_updates_the_measured_values(client: Client) -> None:
    psu = client.power_supply("emulator")
    psu.set_current(1.0)
    psu.set_voltage(5.0)
    psu.enable_output()
    try:
        voltage, current = psu.measure()
        assert (voltage, current) == (5.0, 5.0 / LOAD_OHMS)
        assert (psu.measured_voltage, psu.measured_current) == (voltage, current)
        # Current limited: constant current at the limit, the voltage the load allows.
        psu.set_current(0.2)
        assert psu.measure() == (0.2 * LOAD_OHMS, 0.2)
    finally:
        psu.disable_output()
    assert psu.measure() == (0.0, 0.0)
    assert (psu.measured_voltage, psu.measured_current) == (0.0, 0.0)


def test_a_voltage_over_the_limit_is_rejected_with_the_servers_message(client: Client) -> None:
    psu = client.power_supply("emulator")
    psu.set_voltage(4.0)
    with pytest.raises(Rejected) as refused:
        psu.set_voltage(MAX_VOLTAGE + 1)
    assert refused.value.message == f"voltage {MAX_VOLTAGE + 1} exceeds security_max_voltage {MAX_VOLTAGE}"
    assert str(refused.value) == refused.value.message
    assert refused.value.power_supply == "emulator"
    assert isinstance(refused.value, PzaError)
    assert psu.voltage == 4.0
    # The refusal leaves the runner serving.
    assert psu.set_voltage(4.5) == 4.5


def test_a_current_over_the_limit_is_rejected(client: Client) -> None:
    psu = client.power_supply("emulator")
    with pytest.raises(Rejected, match=f"^current 6 exceeds security_max_current {MAX_CURRENT}$"):
        psu.set_current(6)


def test_a_value_under_the_limit_is_rejected_not_clamped(client: Client) -> None:
    psu = client.power_supply("limited")
    before = psu.voltage
    with pytest.raises(Rejected, match="security_min_voltage"):
        psu.set_voltage(0.5)
    assert psu.voltage == before


def test_a_huge_value_is_sent_as_a_plain_decimal(client: Client) -> None:
    # repr(1e20) is "1e+20", which the server would refuse as not a plain decimal; the refusal
    # must be the limit's.
    with pytest.raises(Rejected, match="exceeds security_max_voltage"):
        client.power_supply("emulator").set_voltage(1e20)


@pytest.mark.parametrize(
    "value, error, text",
    [
        ("5", TypeError, "voltage must be a number, not str"),
        (True, TypeError, "voltage must be a number, not bool"),
        (None, TypeError, "voltage must be a number, not NoneType"),
        (math.nan, ValueError, "voltage must be a finite number, not nan"),
        (math.inf, ValueError, "voltage must be a finite number, not inf"),
    ],
)
def test_a_value_that_is_not_a_number_is_refused_before_sending(
    client: Client, value: object, error: type, text: str
) -> None:
    psu = client.power_supply("emulator")
    with pytest.raises(error, match=f"^{text}$"):
        psu.set_voltage(value)  # type: ignore[arg-type]
    with pytest.raises(error, match=r"^current must"):
        psu.set_current(value)  # type: ignore[arg-type]


def test_an_unknown_power_supply_times_out(server) -> None:
    with Client("127.0.0.1", server.port, timeout=0.3) as client:
        psu = client.power_supply("nobody")
        assert psu.status is None and psu.voltage is None and psu.info is None
        with pytest.raises(Timeout, match=r"^power supply nobody: no answer to voltage/cmd within 0\.3 s"):
            psu.set_voltage(1.0)
        with pytest.raises(TimeoutError):
            psu.measure()
        with pytest.raises(PzaError):
            psu.enable_output(timeout=0.1)
        with pytest.raises(
            Timeout, match=r"status Running not reached within 0\.2 s \(last known status: None\)"
        ):
            psu.wait_for_status("Running", timeout=0.2)
        assert "nobody" not in client.list()


def test_bad_arguments_are_refused_with_their_name(client: Client) -> None:
    with pytest.raises(ValueError, match="power supply name 'a/b' is invalid"):
        client.power_supply("a/b")
    with pytest.raises(ValueError, match="power supply name '' is invalid"):
        client.power_supply("")
    psu = client.power_supply("emulator")
    with pytest.raises(ValueError, match="status 'running' is not one of Initializing, Running"):
        psu.wait_for_status("running")
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds above 0"):
        psu.set_voltage(1.0, timeout=0)
    with pytest.raises(ValueError, match="namespace 'a//b' is invalid"):
        Client("127.0.0.1", 1, namespace="a//b")
    with pytest.raises(ValueError, match="port must be an int between 1 and 65535"):
        Client("127.0.0.1", 70000)


def test_restart_and_wait_for_running(client: Client) -> None:
    psu = client.power_supply("psu-b")
    psu.wait_for_status("Running")
    before = psu.restarts
    assert before is not None
    psu.restart()
    psu.wait_for_status("Running", timeout=30.0)
    assert psu.restarts == before + 1
    assert psu.set_voltage(2.0) == 2.0


def test_a_crash_is_seen_through_wait_for_status_and_revived_by_restart(client: Client) -> None:
    psu = client.power_supply("failing")
    psu.wait_for_status("Running")
    with pytest.raises(Rejected, match="panic_on_voltage"):
        psu.set_voltage(13)
    # max_retries 0: the runner stays Failed until restarted.
    psu.wait_for_status("Failed", timeout=30.0)
    assert "panic_on_voltage 13" in (psu.panic_message or "")
    with pytest.raises(Timeout, match=r"last known status: Failed; panic_message: .*panic_on_voltage"):
        psu.wait_for_status("Running", timeout=0.2)
    psu.restart()
    psu.wait_for_status("Running", timeout=30.0)
    assert psu.restarts == 1
    assert psu.set_voltage(5.0) == 5.0


def test_a_crash_waiting_for_its_restart_delay(client: Client) -> None:
    psu = client.power_supply("slow-restart")
    psu.wait_for_status("Running")
    before = psu.restarts
    with pytest.raises(Rejected):
        psu.set_voltage(13)
    # The restart delay is 10 minutes: the runner stays Restarting until told to restart now.
    psu.wait_for_status("Restarting", timeout=30.0)
    assert "panic_on_voltage" in (psu.panic_message or "")
    with pytest.raises(Timeout):
        psu.set_voltage(1.0, timeout=0.2)
    psu.restart()
    psu.wait_for_status("Running", timeout=30.0)
    assert psu.restarts == before + 1
    assert psu.set_voltage(1.0) == 1.0


def test_two_threads_command_two_power_supplies_at_once(client: Client) -> None:
    rounds = 100
    errors: List[BaseException] = []
    start = threading.Barrier(2)

    def drive(name: str, base: float) -> None:
        try:
            psu = client.power_supply(name)
            start.wait()
            for i in range(rounds):
                wanted = round(base + i * 0.01, 2)
                assert psu.set_voltage(wanted) == wanted
                assert psu.voltage is not None
        except BaseException as err:  # any failure, reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=drive, args=(n, b)) for n, b in (("psu-a", 1.0), ("psu-b", 10.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert client.power_supply("psu-a").voltage == round(1.0 + (rounds - 1) * 0.01, 2)
    assert client.power_supply("psu-b").voltage == round(10.0 + (rounds - 1) * 0.01, 2)


def test_threads_sharing_one_power_supply_each_get_their_own_reply(client: Client) -> None:
    psu = client.power_supply("psu-a")
    workers, rounds = 4, 25
    errors: List[BaseException] = []
    start = threading.Barrier(workers)

    def drive(worker: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                # Distinct values per worker: a reply matched to the wrong caller shows.
                wanted = round(0.1 + worker + i * 0.001, 3)
                assert psu.set_current(wanted) == wanted
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=drive, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_tcp_nodelay_is_set_on_the_socket(server) -> None:
    with Client("127.0.0.1", server.port) as client:
        # The socket paho opened (private attribute, read only here to prove the option).
        sock = client._mqtt.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    with Client("127.0.0.1", server.port, tcp_nodelay=False) as client:
        sock = client._mqtt.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0


def test_an_unreachable_broker_is_an_error_naming_it() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(PzaError, match=f"cannot connect to the MQTT broker at 127.0.0.1:{port}"):
        Client("127.0.0.1", port, timeout=2.0)


def test_a_closed_client_refuses_commands(server) -> None:
    client = Client("127.0.0.1", server.port)
    psu = client.power_supply("emulator")
    client.close()
    client.close()
    with pytest.raises(PzaError, match="the client is closed"):
        psu.set_voltage(1.0)
    with pytest.raises(PzaError, match="the client is closed"):
        client.list()


def test_close_wakes_a_waiting_call(server) -> None:
    client = Client("127.0.0.1", server.port, timeout=60.0)
    psu = client.power_supply("nobody")
    outcome: List[BaseException] = []

    def command() -> None:
        try:
            psu.set_voltage(1.0)
        except BaseException as err:
            outcome.append(err)

    caller = threading.Thread(target=command)
    caller.start()
    # Close only once the command is registered and waiting for its reply.
    wait_until(lambda: len(client._pending) == 1, what="the command is pending")
    client.close()
    caller.join(timeout=10.0)
    assert not caller.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], PzaError), outcome
    assert not isinstance(outcome[0], Timeout)
    assert str(outcome[0]) == "the client is closed"


def test_namespace_and_login(ns_server) -> None:
    with Client(
        "127.0.0.1", ns_server.port, namespace=NAMESPACE, username=USERNAME, password=PASSWORD
    ) as client:
        assert client.list() == NS_NAMES
        psu = client.power_supply("ns-psu")
        assert psu.status == "Running"
        assert psu.set_voltage(7.5) == 7.5
    # Without the namespace, nothing is there.
    with Client("127.0.0.1", ns_server.port, username=USERNAME, password=PASSWORD, timeout=0.3) as client:
        assert client.list() == []
        with pytest.raises(Timeout):
            client.power_supply("ns-psu").set_voltage(1.0)


def test_a_wrong_password_is_refused(ns_server) -> None:
    with pytest.raises(
        PzaError, match=f"the MQTT broker at 127.0.0.1:{ns_server.port} refused the connection"
    ):
        Client("127.0.0.1", ns_server.port, namespace=NAMESPACE, username=USERNAME, password="wrong")


def test_the_client_comes_back_after_a_broker_outage(tmp_path) -> None:
    # A server of its own: its embedded broker goes away and comes back on the same port.
    first = start_server(tmp_path / "first", '"solo": { model: "emulator" },', ["solo"])
    try:
        client = Client("127.0.0.1", first.port, timeout=5.0)
        psu = client.power_supply("solo")
        assert psu.set_voltage(3.0) == 3.0
    finally:
        assert first.stop() == 0 or sys.platform == "win32"
    with client:
        # The server's last word before its broker stopped.
        psu.wait_for_status("Stopped")
        with pytest.raises(Timeout):
            psu.set_voltage(4.0, timeout=0.2)
        second = start_server(
            tmp_path / "second", '"solo": { model: "emulator" },', ["solo"], port=first.port
        )
        try:
            # Reconnected and subscribed again: the new server's statuses arrive.
            psu.wait_for_status("Running", timeout=30.0)
            assert psu.set_voltage(4.0) == 4.0
            assert "solo" in client.list()
        finally:
            assert second.stop() == 0 or sys.platform == "win32"


def test_first_calls_from_several_threads_at_once(client: Client) -> None:
    # The first list() subscribes and the first power_supply(name) creates the handle: callers
    # racing on them must all see the complete answer and the one handle.
    workers = 4
    start = threading.Barrier(workers)
    lists: List[List[str]] = []
    handles: List[PowerSupply] = []

    def first_calls() -> None:
        start.wait()
        lists.append(client.list())
        handles.append(client.power_supply("psu-a"))

    threads = [threading.Thread(target=first_calls) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lists == [MAIN_NAMES] * workers
    assert len(handles) == workers and all(h is handles[0] for h in handles)
    assert handles[0].status == "Running"


def test_two_clients_on_one_power_supply_never_take_each_others_replies(server) -> None:
    # Both clients receive every reply on the supply's topics; each must keep only its own ids.
    rounds = 50
    errors: List[BaseException] = []
    start = threading.Barrier(2)

    def drive(offset: float) -> None:
        try:
            with Client("127.0.0.1", server.port) as own:
                psu = own.power_supply("psu-b")
                start.wait()
                for i in range(rounds):
                    wanted = round(offset + i * 0.001, 3)
                    assert psu.set_current(wanted) == wanted
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=drive, args=(o,)) for o in (0.5, 2.5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
