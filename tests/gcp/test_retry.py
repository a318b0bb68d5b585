"""gcp/retry.py: what is retried, how long it waits, and what a final failure becomes.

Google errors are the library's own classes (``from_http_status`` / ``from_http_response`` over a
real HTTP response); network errors come from real sockets. Sleeping is injected: nothing waits.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import google.api_core.exceptions as gexc
import google.auth.exceptions as gauth
import pytest
import requests
import requests.exceptions as rexc
import urllib3.exceptions as uexc
from structlog.testing import capture_logs

from deployer.errors import CloudError, ConflictError, NotFoundError, TransientCloudError
from deployer.gcp import retry
from deployer.gcp.retry import RetryEvent, RetryPolicy, call, is_transient, outcome_unknown


class FakeTime:
    """An injected clock and sleep: sleeping advances the clock and records the delay."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def google(status: int, message: str = "boom") -> gexc.GoogleAPICallError:
    return gexc.from_http_status(status, message)


class Script:
    """A callable that raises the scripted exceptions in turn, then returns ``result``."""

    def __init__(self, *errors: BaseException, result: object = "ok") -> None:
        self.errors = list(errors)
        self.calls = 0
        self.result = result

    def __call__(self) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def policy(fake: FakeTime, **kw: object) -> RetryPolicy:
    base: dict[str, object] = {"attempts": 5, "initial": 1.0, "maximum": 8.0, "multiplier": 2.0, "jitter": 0.0}
    base.update(kw)
    return RetryPolicy(sleep=fake.sleep, clock=fake.clock, **base)  # type: ignore[arg-type]


# ---- real network errors --------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/reset":
            # SO_LINGER with a zero timeout: close() sends RST, the client sees a connection reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if self.path == "/slow":
            self.server.release.wait(5)  # type: ignore[attr-defined]
            return
        if self.path.startswith("/foreign-404"):  # a server that is not a Google API: empty body or a web page
            page = b"<!DOCTYPE html><html><body>Not Found</body></html>" if self.path.endswith("html") else b""
            self.send_response(404)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if self.path == "/gcs-404":  # a GCS media download's 404 is short text, not JSON
            text = b"No such object: bucket/deployer/lock.json"
            self.send_response(404)
            self.send_header("Content-Type", "text/html; charset=UTF-8")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        status = int(self.path.strip("/"))
        body = (
            b'{"error":{"code":%d,"message":"Supplied fingerprint does not match","errors":'
            b'[{"message":"x","domain":"global","reason":"conditionNotMet"}]}}' % status
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.release.set()  # type: ignore[attr-defined]
    srv.shutdown()
    srv.server_close()


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def real_error(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:
        return exc
    raise AssertionError("expected an exception")


def test_google_error_from_a_real_response_keeps_status_and_reason(server: str) -> None:
    resp = _session().get(f"{server}/412", timeout=5)
    exc = gexc.from_http_response(resp)
    assert isinstance(exc, gexc.PreconditionFailed)
    assert not is_transient(exc)
    err = retry.to_cloud_error(exc, method="compute.backendServices.patch")
    assert isinstance(err, ConflictError)
    assert (err.status, err.reason, err.method) == (412, "conditionNotMet", "compute.backendServices.patch")


@pytest.mark.parametrize("path", ["/foreign-404", "/foreign-404-html"])
def test_a_404_no_google_api_sent_is_not_read_as_not_found(server: str, path: str) -> None:
    exc = gexc.from_http_response(_session().get(f"{server}{path}", timeout=5))
    assert isinstance(exc, gexc.NotFound)
    err = retry.to_cloud_error(exc, method="run.services.get")
    assert err is not None and not isinstance(err, NotFoundError)
    assert "no Google API answered" in err.message and err.hint is not None and "endpoint" in err.hint


@pytest.mark.parametrize("path", ["/404", "/gcs-404"])
def test_a_404_from_a_google_api_is_not_found(server: str, path: str) -> None:
    exc = gexc.from_http_response(_session().get(f"{server}{path}", timeout=5))
    assert isinstance(retry.to_cloud_error(exc, method="storage.objects.get"), NotFoundError)


def test_connection_reset_is_transient_and_outcome_unknown(server: str) -> None:
    exc = real_error(lambda: _session().get(f"{server}/reset", timeout=5))
    assert isinstance(exc, rexc.ConnectionError)
    assert is_transient(exc)
    assert outcome_unknown(exc)  # the request was sent: it may have been applied


def test_connection_refused_is_transient_and_definitely_not_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    exc = real_error(lambda: _session().get(f"http://127.0.0.1:{port}/", timeout=5))
    assert isinstance(exc, rexc.ConnectionError)
    assert is_transient(exc)
    assert not outcome_unknown(exc)


def test_read_timeout_is_transient_and_outcome_unknown(server: str) -> None:
    exc = real_error(lambda: _session().get(f"{server}/slow", timeout=0.05))
    assert isinstance(exc, rexc.ReadTimeout)
    assert is_transient(exc)
    assert outcome_unknown(exc)


def test_tls_against_a_plain_http_endpoint_is_not_retried(server: str) -> None:
    # The clientlibs.md §1 trap: an endpoint without http:// gets https:// and fails with SSLError.
    exc = real_error(lambda: _session().get(server.replace("http://", "https://"), timeout=5))
    assert isinstance(exc, rexc.SSLError)
    assert not is_transient(exc)
    err = retry.to_cloud_error(exc, method="run.GetService")
    assert type(err) is CloudError
    assert err.hint is not None and "http://" in err.hint


# ---- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_statuses(status: int) -> None:
    assert is_transient(google(status))


@pytest.mark.parametrize("status", [400, 403, 404, 409, 412, 501])
def test_permanent_statuses(status: int) -> None:
    assert not is_transient(google(status))


def test_gateway_timeout_and_deadline_exceeded_are_distinct_and_both_transient() -> None:
    gw = google(504)
    assert type(gw) is gexc.GatewayTimeout and not isinstance(gw, gexc.DeadlineExceeded)
    assert is_transient(gw)
    assert is_transient(gexc.DeadlineExceeded("poll deadline"))


def test_grpc_coded_lro_failures_map_by_their_http_code() -> None:
    # A failed Cloud Run operation raises the gRPC classes (clientlibs.md §2a): 14 → ServiceUnavailable.
    assert is_transient(gexc.from_grpc_status(14, "unavailable"))
    assert is_transient(gexc.from_grpc_status(8, "quota"))
    assert not is_transient(gexc.from_grpc_status(9, "failed precondition"))
    assert not is_transient(gexc.from_grpc_status(10, "aborted"))


def test_library_retry_error_is_judged_by_its_cause() -> None:
    assert is_transient(gexc.RetryError("deadline", cause=google(503)))
    assert not is_transient(gexc.RetryError("deadline", cause=google(400)))
    assert not is_transient(gexc.RetryError("deadline", cause=None))


def test_socket_level_and_urllib3_errors() -> None:
    assert is_transient(ConnectionResetError(104, "Connection reset by peer"))
    assert is_transient(BrokenPipeError())
    assert is_transient(TimeoutError("timed out"))
    assert is_transient(uexc.ProtocolError("Connection aborted.", ConnectionResetError()))
    assert is_transient(rexc.ChunkedEncodingError("Connection broken"))
    assert not is_transient(uexc.SSLError("bad handshake"))
    assert not is_transient(rexc.ProxyError("proxy said no"))


def test_auth_errors() -> None:
    assert is_transient(gauth.TransportError("token endpoint unreachable"))
    assert not is_transient(gauth.DefaultCredentialsError("no ADC"))
    err = retry.to_cloud_error(gauth.DefaultCredentialsError("no ADC"), method="run.GetService")
    assert type(err) is CloudError and err.hint is not None and "application-default" in err.hint


def test_bugs_are_not_cloud_errors() -> None:
    assert not is_transient(ValueError("bug"))
    assert not is_transient(KeyError("bug"))
    assert retry.to_cloud_error(ValueError("bug"), method="x") is None


def test_deployer_errors_are_never_retried() -> None:
    assert not is_transient(TransientCloudError("gave up already", status=503))


@pytest.mark.parametrize(
    ("status", "cls"),
    [(404, NotFoundError), (409, ConflictError), (412, ConflictError), (400, CloudError), (403, CloudError)],
)
def test_permanent_failures_convert_with_method_and_status(status: int, cls: type, fake: FakeTime) -> None:
    fn = Script(google(status, "nope"))
    with pytest.raises(CloudError) as info:
        call(fn, method="run.UpdateService", policy=policy(fake))
    err = info.value
    assert type(err) is cls
    assert (err.method, err.status, err.attempts, err.outcome_unknown) == ("run.UpdateService", status, 1, False)
    assert isinstance(err.__cause__, gexc.GoogleAPICallError) and err.__cause__.code == status
    assert fn.calls == 1 and fake.sleeps == []
    assert "\n" not in err.message and "run.UpdateService" in err.message


# ---- the policy and call() ----------------------------------------------------------------------


def test_two_503s_then_success_sleeps_exponentially(fake: FakeTime) -> None:
    fn = Script(google(503), google(503), result={"etag": "e2"})
    assert call(fn, method="run.GetService", policy=policy(fake)) == {"etag": "e2"}
    assert fn.calls == 3
    assert fake.sleeps == [1.0, 2.0]


def test_delays_are_capped_at_maximum(fake: FakeTime) -> None:
    p = policy(fake, attempts=6, initial=1.0, maximum=3.0)
    fn = Script(*(google(500) for _ in range(5)))
    assert call(fn, method="m", policy=p) == "ok"
    assert fake.sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert p.nominal_delays() == fake.sleeps


def test_jitter_stays_within_bounds(fake: FakeTime) -> None:
    p = policy(fake, attempts=4, initial=1.0, maximum=100.0, jitter=0.5)
    fn = Script(google(503), google(503), google(503))
    call(fn, method="m", policy=p)
    for got, nominal in zip(fake.sleeps, [1.0, 2.0, 4.0], strict=True):
        assert nominal <= got <= nominal + 0.5


def test_gives_up_after_attempts_as_transient_cloud_error(fake: FakeTime) -> None:
    fn = Script(*(google(503, f"try {i}") for i in range(10)))
    with pytest.raises(TransientCloudError) as info:
        call(fn, method="compute.backendServices.get", policy=policy(fake, attempts=3))
    err = info.value
    assert fn.calls == 3 and fake.sleeps == [1.0, 2.0]
    assert (err.status, err.attempts, err.outcome_unknown) == (503, 3, True)
    assert "after 3 attempts" in err.message and "try 2" in err.message
    assert isinstance(err.__cause__, gexc.ServiceUnavailable)


def test_deadline_stops_before_a_sleep_that_would_overrun_it(fake: FakeTime) -> None:
    # Sleeps 1, 2, 4 would end at t+7 > 5: the third retry is never slept for.
    fn = Script(*(google(429) for _ in range(10)))
    with pytest.raises(TransientCloudError) as info:
        call(fn, method="m", policy=policy(fake, attempts=10, deadline=5.0))
    assert fake.sleeps == [1.0, 2.0]
    assert fn.calls == 3 and info.value.attempts == 3
    assert info.value.outcome_unknown is False  # 429s are definite refusals


def test_deadline_counts_time_spent_in_the_calls(fake: FakeTime) -> None:
    def slow_failure() -> None:
        fake.now += 4.0  # each attempt takes 4 s of (injected) time
        raise google(503)

    with pytest.raises(TransientCloudError) as info:
        call(slow_failure, method="m", policy=policy(fake, attempts=10, deadline=10.0))
    # t=4 fail, sleep 1 → t=5; t=9 fail, sleep 2 would end at 11 > 10: stop.
    assert fake.sleeps == [1.0]
    assert info.value.attempts == 2


def test_only_transient_errors_are_retried(fake: FakeTime) -> None:
    fn = Script(google(503), google(400))
    with pytest.raises(CloudError) as info:
        call(fn, method="m", policy=policy(fake))
    assert type(info.value) is CloudError and info.value.status == 400
    assert fn.calls == 2 and fake.sleeps == [1.0]


def test_conflict_after_an_ambiguous_attempt_says_outcome_unknown(fake: FakeTime) -> None:
    # A reset after sending the update, then 409 on the retry: the first attempt may have landed.
    reset = rexc.ConnectionError(uexc.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))
    fn = Script(reset, google(409, "etag mismatch"))
    with pytest.raises(ConflictError) as info:
        call(fn, method="run.UpdateService", policy=policy(fake))
    assert info.value.outcome_unknown is True
    assert info.value.attempts == 2


def test_bugs_propagate_unchanged_without_retry(fake: FakeTime) -> None:
    fn = Script(KeyError("template"))
    with pytest.raises(KeyError):
        call(fn, method="m", policy=policy(fake))
    assert fn.calls == 1 and fake.sleeps == []


def test_a_nested_give_up_is_not_retried_again(fake: FakeTime) -> None:
    inner = TransientCloudError("inner gave up", method="inner", status=503, attempts=5)
    fn = Script(inner)
    with pytest.raises(TransientCloudError) as info:
        call(fn, method="outer", policy=policy(fake))
    assert info.value is inner and fn.calls == 1


def test_each_retry_logs_one_gcp_retry_event(fake: FakeTime) -> None:
    fn = Script(google(503), gexc.GatewayTimeout("gw"))
    with capture_logs() as logs:
        call(fn, method="run.UpdateService", policy=policy(fake))
    assert logs == [
        {
            "event": "gcp.retry",
            "log_level": "info",
            "method": "run.UpdateService",
            "attempt": 1,
            "status": 503,
            "error": "ServiceUnavailable",
            "delay": 1.0,
            "outcome_unknown": True,
        },
        {
            "event": "gcp.retry",
            "log_level": "info",
            "method": "run.UpdateService",
            "attempt": 2,
            "status": 504,
            "error": "GatewayTimeout",
            "delay": 2.0,
            "outcome_unknown": True,
        },
    ]


def test_on_retry_hook_replaces_the_log(fake: FakeTime) -> None:
    seen: list[RetryEvent] = []
    with capture_logs() as logs:
        call(Script(google(429)), method="m", policy=policy(fake), on_retry=seen.append)
    assert logs == []
    assert seen == [
        RetryEvent(method="m", attempt=1, status=429, error="TooManyRequests", delay=1.0, outcome_unknown=False)
    ]


def test_an_aborting_sleep_stops_the_retries(fake: FakeTime) -> None:
    # The orchestrator injects a sleep that raises when the deploy is cancelled (Ctrl-C, preemption).
    class Cancelled(Exception):
        pass

    def sleep(_seconds: float) -> None:
        raise Cancelled

    fn = Script(google(503), google(503))
    with pytest.raises(Cancelled):
        call(fn, method="m", policy=policy(fake).with_(sleep=sleep))
    assert fn.calls == 1


@pytest.mark.parametrize(
    "kw",
    [{"attempts": 0}, {"initial": -1.0}, {"multiplier": 0.5}, {"deadline": 0.0}, {"jitter": -0.1}],
)
def test_policy_rejects_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kw)  # type: ignore[arg-type]


def test_policies_are_comparable_values() -> None:
    assert RetryPolicy() == retry.DEFAULT_POLICY
    assert RetryPolicy().with_(attempts=2) != RetryPolicy()
    assert RetryPolicy().with_(sleep=lambda s: None) == RetryPolicy()  # sleep/clock are not part of the value


def test_retry_module_does_not_import_compute() -> None:
    import subprocess
    import sys

    code = "import sys, deployer.gcp.retry; print(any(m.startswith('google.cloud') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---- the real Cloud Run client against the local cloud ---------------------------------------------------


@pytest.fixture
def run_service(localcloud: object, clients: object) -> tuple[object, object, str]:
    from tests.localcloud.run_helpers import PARENT, new_service

    svcs = clients.services()  # type: ignore[attr-defined]
    svc = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat").result()
    return localcloud, svcs, svc.name


def test_two_injected_503s_on_a_real_call_are_retried_and_complete(run_service: tuple, fake: FakeTime) -> None:
    from deployer.localcloud.world import FaultRule

    cloud, svcs, name = run_service
    cloud.world.faults.add(FaultRule(method="run.services.get", status=503, count=2))
    with capture_logs() as logs:
        # retry=None: the library's own retry (clientlibs.md §3) must not hide the errors from ours
        svc = call(lambda: svcs.get_service(name=name, retry=None), method="run.GetService", policy=policy(fake))
    assert svc.name == name
    assert [(e["event"], e["attempt"], e["status"]) for e in logs] == [("gcp.retry", 1, 503), ("gcp.retry", 2, 503)]
    assert fake.sleeps == [1.0, 2.0]


def test_a_real_stale_etag_update_is_a_conflict_and_is_not_retried(run_service: tuple, fake: FakeTime) -> None:
    _cloud, svcs, name = run_service
    stale = svcs.get_service(name=name)
    fresh = svcs.get_service(name=name)
    fresh.labels["touched"] = "by-someone-else"
    svcs.update_service(service=fresh).result()
    stale.labels["mine"] = "x"
    with pytest.raises(ConflictError) as info:
        call(lambda: svcs.update_service(service=stale).result(), method="run.UpdateService", policy=policy(fake))
    assert (info.value.status, info.value.attempts, info.value.outcome_unknown) == (409, 1, False)
    assert fake.sleeps == []


def test_a_real_404_is_not_found(run_service: tuple, fake: FakeTime) -> None:
    _cloud, svcs, name = run_service
    with pytest.raises(NotFoundError) as info:
        call(lambda: svcs.get_service(name=name + "-gone", retry=None), method="run.GetService", policy=policy(fake))
    assert info.value.status == 404 and info.value.method == "run.GetService"
