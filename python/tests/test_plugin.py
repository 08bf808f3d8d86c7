"""The pytest plugin, run as a user runs it: pytest in a subprocess, with the options."""

from __future__ import annotations

import pytest
from conftest import NAMESPACE, PASSWORD, USERNAME, free_port

USER_TESTS = """
import pytest
from pza_power_supply import Client, Rejected

def test_the_fixture_is_a_connected_client(pza_client):
    assert isinstance(pza_client, Client)
    assert "emulator" in pza_client.list()

def test_commands_through_the_fixture(pza_client):
    psu = pza_client.power_supply("emulator")
    assert psu.set_voltage(6.0) == 6.0
    with pytest.raises(Rejected, match="exceeds security_max_voltage"):
        psu.set_voltage(31)

def test_one_connection_per_session(pza_client, request):
    assert request.getfixturevalue("pza_client") is pza_client
"""

NS_TESTS = """
def test_namespaced(pza_client):
    assert pza_client.namespace == "bench-3"
    assert pza_client.list() == ["ns-psu"]
    assert pza_client.power_supply("ns-psu").set_current(0.75) == 0.75
"""


def test_the_fixture_reaches_the_broker_given(pytester: pytest.Pytester, server) -> None:
    pytester.makepyfile(USER_TESTS)
    result = pytester.runpytest_subprocess(
        "--pza-broker", f"127.0.0.1:{server.port}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=3)


def test_namespace_and_login_options(
    pytester: pytest.Pytester, ns_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(NS_TESTS)
    monkeypatch.setenv("PZA_MQTT_PASSWORD", PASSWORD)
    result = pytester.runpytest_subprocess(
        "--pza-broker",
        f"127.0.0.1:{ns_server.port}",
        "--pza-namespace",
        NAMESPACE,
        "--pza-username",
        USERNAME,
    )
    result.assert_outcomes(passed=1)


def test_a_failing_user_test_fails_the_run(pytester: pytest.Pytester, server) -> None:
    pytester.makepyfile(
        """
        def test_wrong_expectation(pza_client):
            assert pza_client.power_supply("emulator").set_voltage(2.0) == 3.0
        """
    )
    result = pytester.runpytest_subprocess("--pza-broker", f"127.0.0.1:{server.port}")
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_an_unreachable_broker_errors_the_tests_using_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(pza_client):\n    pass\n")
    port = free_port()
    result = pytester.runpytest_subprocess("--pza-broker", f"127.0.0.1:{port}", "--pza-timeout", "2")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*cannot connect to the MQTT broker at 127.0.0.1:{port}*"])


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--pza-broker", "nowhere", "--pza-broker: expected HOST:PORT, not 'nowhere'"),
        ("--pza-namespace", "a//b", "--pza-namespace: namespace 'a//b' is invalid*"),
        ("--pza-timeout", "0", "--pza-timeout: must be above 0 seconds, not 0.0"),
    ],
)
def test_a_bad_option_is_a_usage_error(
    pytester: pytest.Pytester, option: str, value: str, message: str
) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
