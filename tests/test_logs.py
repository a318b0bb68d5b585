"""logs: the Cloud Logging shape, and silence() — no event after a command's last line, from any thread."""

from __future__ import annotations

import io
import json
import threading

import structlog

from deployer import logs


def test_events_are_cloud_logging_json_lines_with_credentials_masked() -> None:
    out = io.StringIO()
    logs.configure(json=True, stream=out)
    try:
        logs.get_logger(deploy_id="d-1").warning("deploy.refused", api_token="abc", phase="preflight")
    finally:
        structlog.reset_defaults()
    event = json.loads(out.getvalue())
    assert (event["severity"], event["message"], event["deploy_id"]) == ("WARNING", "deploy.refused", "d-1")
    assert event["api_token"] == "***" and event["phase"] == "preflight"


def test_silence_drops_events_from_every_thread_until_unsilenced() -> None:
    out = io.StringIO()
    logs.configure(json=True, stream=out)
    try:
        log = structlog.get_logger("worker")  # bound before silence, as a retrying thread's logger is
        logs.silence()
        worker = threading.Thread(target=lambda: log.error("gcp.retry", attempt=2))
        worker.start()
        worker.join()
        log.critical("after the last line")
        assert out.getvalue() == ""
        logs.silence()  # twice is still one silence: unsilence restores the real configuration
        logs.unsilence()
        log.info("next command")
        assert json.loads(out.getvalue())["message"] == "next command"
    finally:
        structlog.reset_defaults()


def test_unsilence_leaves_a_configuration_made_since_alone() -> None:
    logs.configure(json=True, stream=io.StringIO())
    logs.silence()
    fresh = io.StringIO()
    logs.configure(json=True, stream=fresh)  # e.g. the next command configured its own logging
    try:
        logs.unsilence()
        structlog.get_logger().info("kept")
        assert json.loads(fresh.getvalue())["message"] == "kept"
    finally:
        structlog.reset_defaults()


def test_a_line_rendered_before_silence_is_not_written_after_it(capsys) -> None:
    """A worker thread that rendered its event just before ``silence`` writes it to the stream after: muted."""
    logs.configure(json=True)  # the default stream: stderr at each write
    stream = structlog.get_config()["logger_factory"]._file
    try:
        logs.silence()
        stream.write('{"message": "gcp.retry"}\n')  # what PrintLogger does with an event rendered earlier
        assert capsys.readouterr().err == ""
        logs.unsilence()
        stream.write("after unsilence\n")
        assert capsys.readouterr().err == "after unsilence\n"
    finally:
        logs.unsilence()
        structlog.reset_defaults()


def test_a_line_is_written_whole_or_not_at_all(capsys) -> None:
    """PrintLogger writes an event, then "\\n": muted in between, neither half reaches stderr."""
    stream = logs.STDERR
    try:
        stream.write('{"message": "first half"}')
        logs.silence()
        stream.write("\n")
        stream.write("a whole line\n")
        assert capsys.readouterr().err == ""
        logs.unsilence()
        stream.write('{"message": "next"}')
        stream.write("\n")
        assert capsys.readouterr().err == '{"message": "next"}\n'
    finally:
        logs.unsilence()
        structlog.reset_defaults()
