"""Notifications: a failed run, or a run that moved the champion, tells someone.

Sinks, from `params.yaml` `notify` (or the environment):
- `webhook` (or TEXTCOMPRESS_NOTIFY_WEBHOOK): Prefect's CustomWebhookNotificationBlock posts
  {"subject", "body", "event"} as JSON;
- `block`: the name of a saved Prefect notification block (Slack, Teams, email, ...);
- `log_file`: one JSON line per event appended to a file (the sink used here and in tests).
A sink that fails is reported and never fails the run: the run's result matters more.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

EVENTS = ("failure", "promotion", "completion")


def notify(cfg: dict, event: str, subject: str, body: str, project_dir: Path | None = None) -> list[str]:
    """Send one event to every configured sink that listens to it. Returns the sinks reached."""
    if event not in (cfg.get("events") or []):
        return []
    reached = []
    webhook = cfg.get("webhook") or os.environ.get("TEXTCOMPRESS_NOTIFY_WEBHOOK")
    sinks = []
    if webhook:
        sinks.append(("webhook", lambda: _webhook_block(webhook, event).notify(body=body, subject=subject)))
    if cfg.get("block"):
        sinks.append(("block", lambda: _saved_block(cfg["block"]).notify(body=body, subject=subject)))
    if cfg.get("log_file"):
        path = Path(cfg["log_file"])
        if project_dir is not None and not path.is_absolute():
            path = project_dir / path
        sinks.append(("log_file", lambda: _append_line(path, {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                              "event": event, "subject": subject, "body": body})))
    for name, send in sinks:
        try:
            send()
            reached.append(name)
        except Exception as err:  # noqa: BLE001 - a notification must never fail the run
            print(f"notification via {name} failed ({err.__class__.__name__}: {err})")
    return reached


def _webhook_block(url: str, event: str):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(name="textcompress", url=url,
                                          json_data={"subject": "{{subject}}", "body": "{{body}}", "event": event})


def _saved_block(name: str):
    from prefect.blocks.core import Block

    return Block.load(name)


def _append_line(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
