"""gcp/reach.py: a call that got no answer says what could not be reached, and why, in one line.

The network errors are real: a closed port refuses, a ``.invalid`` name does not resolve (RFC 6761),
a server that resets its socket resets it. Only Google's wording is checked on a built value (this
machine cannot reach Google).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from deployer.errors import CloudError, TransientCloudError
from deployer.gcp import retry
from deployer.gcp.clients import Clients
from deployer.gcp.reach import NetworkFailure, describe, network_failure


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the block ends: nothing listens there


def error_of(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:
        return exc
    raise AssertionError("expected an exception")


class _Reset(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        # SO_LINGER 0: close() sends RST after the request was read (the call may have been applied).
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def resetting() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Reset)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def no_wait() -> retry.RetryPolicy:
    return retry.READ_POLICY.with_(sleep=lambda _s: None)


def test_a_closed_local_cloud_port_is_a_refusal_with_how_to_start_it() -> None:
    port = closed_port()
    services = Clients(endpoint=f"http://127.0.0.1:{port}", project="p").services()
    with pytest.raises(TransientCloudError) as info:
        retry.call(
            lambda: services.get_service(name="projects/p/locations/r/services/s"),
            method="run.services.get",
            policy=no_wait(),
        )
    err = info.value
    assert err.message == (
        f"cannot reach the local cloud at http://127.0.0.1:{port} (connection refused, 4 attempts) for run.services.get"
    )
    assert err.hint == (
        f"start it with: deployer localcloud up --api-port {port} --seed configs/local-world.yaml --lb-port 8080"
    )
    assert err.attempts == 4 and not err.outcome_unknown  # retried as the policy says; nothing was sent
    assert "HTTPConnectionPool" not in err.message and "Google" not in (err.hint or "")


def test_the_default_local_port_needs_no_api_port_flag() -> None:
    failure = NetworkFailure("http://127.0.0.1:8480", "127.0.0.1", 8480, "connection refused", connected=False)
    message, hint = describe(failure, method="run.services.get", attempts=1)
    assert message == "cannot reach the local cloud at http://127.0.0.1:8480 (connection refused) for run.services.get"
    assert hint == "start it with: deployer localcloud up --seed configs/local-world.yaml --lb-port 8080"


def test_an_endpoint_on_the_load_balancers_usual_port_is_not_told_to_share_it() -> None:
    """`--api-port 8080 --lb-port 8080` cannot both listen: the hint moves the load balancer aside."""
    failure = NetworkFailure("http://127.0.0.1:8080", "127.0.0.1", 8080, "connection refused", connected=False)
    _, hint = describe(failure, method="run.services.get", attempts=1)
    assert hint == (
        "start it with: deployer localcloud up --api-port 8080 --seed configs/local-world.yaml --lb-port 8081"
    )


@pytest.mark.parametrize(
    ("endpoint", "host", "port", "flags"),
    [
        ("http://[::1]:8480", "::1", 8480, " --host ::1"),
        ("http://127.0.0.2:9000", "127.0.0.2", 9000, " --api-port 9000 --host 127.0.0.2"),
        ("http://localhost:8480", "localhost", 8480, ""),  # localcloud up's 127.0.0.1 answers localhost
    ],
)
def test_a_loopback_address_other_than_127_0_0_1_is_named_with_host(
    endpoint: str, host: str, port: int, flags: str
) -> None:
    failure = NetworkFailure(endpoint, host, port, "connection refused", connected=False)
    _, hint = describe(failure, method="run.services.get", attempts=1)
    assert hint == f"start it with: deployer localcloud up{flags} --seed configs/local-world.yaml --lb-port 8080"


def test_a_name_that_does_not_resolve() -> None:
    exc = error_of(lambda: requests.get("http://no-such-host.invalid:8480/v2/x", timeout=5))
    failure = network_failure(exc)
    assert failure is not None
    assert (failure.endpoint, failure.reason, failure.connected) == (
        "http://no-such-host.invalid:8480",
        "cannot resolve no-such-host.invalid",
        False,
    )
    message, hint = describe(failure, method="compute.urlMaps.get", attempts=1)
    assert message.startswith("cannot reach the local cloud at http://no-such-host.invalid:8480 (cannot resolve")
    assert "no-such-host.invalid" in hint and "endpoint" in hint


def test_a_reset_after_the_request_was_sent_is_a_lost_connection(resetting: str) -> None:
    exc = error_of(lambda: requests.get(f"{resetting}/x", timeout=5))
    failure = network_failure(exc)
    assert failure is not None and failure.connected and failure.endpoint == resetting
    err = retry.to_cloud_error(exc, method="run.services.patch", attempts=5, outcome_unknown=True)
    assert isinstance(err, TransientCloudError)
    assert err.message.startswith(f"lost the connection to the local cloud at {resetting} (")
    assert err.message.endswith("5 attempts) during run.services.patch")
    assert err.hint is not None and "local cloud" in err.hint


def test_google_endpoints_get_a_network_hint_not_a_local_cloud_one() -> None:
    down = NetworkFailure("https://oauth2.googleapis.com", "oauth2.googleapis.com", None, "cannot resolve x", False)
    message, hint = describe(down, method="run.services.get", attempts=4)
    assert message == (
        "cannot reach Google's API at https://oauth2.googleapis.com (cannot resolve x, 4 attempts) for run.services.get"
    )
    assert "network" in hint and "HTTPS_PROXY" in hint and "localcloud" not in hint
    dropped = NetworkFailure("https://run.googleapis.com", "run.googleapis.com", None, "connection reset", True)
    message, hint = describe(dropped, method="run.services.patch", attempts=5)
    assert message.startswith("lost the connection to Google's API") and "again later" in hint


def test_an_http_answer_is_not_a_network_failure() -> None:
    import google.api_core.exceptions as gexc

    assert network_failure(gexc.from_http_status(503, "busy")) is None
    err = retry.to_cloud_error(gexc.from_http_status(503, "busy"), method="run.services.get", attempts=4)
    assert isinstance(err, TransientCloudError) and err.message.startswith("run.services.get still failing")


def test_a_dead_proxy_is_configuration_and_names_the_proxy_variables() -> None:
    proxy = f"http://127.0.0.1:{closed_port()}"
    session = requests.Session()
    exc = error_of(lambda: session.get("http://example.test/", proxies={"http": proxy}, timeout=5))
    assert network_failure(exc) is None  # a proxy problem is configuration, not "cannot reach the cloud"
    assert not retry.is_transient(exc)
    err = retry.to_cloud_error(exc, method="run.services.get")
    assert type(err) is CloudError and err.hint is not None and "NO_PROXY" in err.hint
