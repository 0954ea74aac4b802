"""Tests for tasks.notify: events reach the sinks that listen to them, through Prefect's webhook
block to a real local HTTP server, and a broken sink never fails the run."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tasks.notify import notify


@pytest.fixture
def webhook():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_an_event_reaches_the_webhook_and_the_log_file(webhook, tmp_path):
    url, received = webhook
    cfg = {"events": ["promotion"], "webhook": url, "block": None, "log_file": "notes.jsonl"}
    reached = notify(cfg, "promotion", "tiny-int8 is the new champion", "latency_p50_ms: 1.1 vs 2.3", tmp_path)
    assert reached == ["webhook", "log_file"]
    assert received == [{"subject": "tiny-int8 is the new champion", "body": "latency_p50_ms: 1.1 vs 2.3", "event": "promotion"}]
    line = json.loads((tmp_path / "notes.jsonl").read_text())
    assert line["event"] == "promotion" and line["subject"] == "tiny-int8 is the new champion"


def test_events_not_listened_to_are_not_sent(webhook, tmp_path):
    url, received = webhook
    cfg = {"events": ["failure"], "webhook": url, "block": None, "log_file": "notes.jsonl"}
    assert notify(cfg, "completion", "done", "fine", tmp_path) == []
    assert received == [] and not (tmp_path / "notes.jsonl").exists()


def test_the_environment_can_name_the_webhook(webhook, tmp_path, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("TEXTCOMPRESS_NOTIFY_WEBHOOK", url)
    assert notify({"events": ["failure"]}, "failure", "run failed", "teach: out of memory", tmp_path) == ["webhook"]
    assert received[0]["event"] == "failure"


def test_a_broken_sink_is_reported_and_does_not_raise(tmp_path, capsys):
    cfg = {"events": ["failure"], "webhook": "http://127.0.0.1:9/nothing-listens", "block": None, "log_file": "n.jsonl"}
    assert notify(cfg, "failure", "x", "y", tmp_path) == ["log_file"]
    assert "notification via webhook failed" in capsys.readouterr().out
