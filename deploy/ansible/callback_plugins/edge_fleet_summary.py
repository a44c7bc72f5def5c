"""The fleet summary: one line per inventory device at the end of deploy.yml or rollback.yml, printed as a
table and written as JSON (atomically) to `edge_fleet_summary` (default build/fleet/summary.json).

The role reports each device's outcome with `set_stats` (per host, key `edge_fleet_device`); what the
role cannot report is filled in here from what Ansible saw: a device that could not be reached is
`unreachable` (with the step it was at), a device that failed outside the role's rescue is `failed`,
and a device the rollout never reached (an earlier batch stopped it) is `not_attempted`. Every host of
the play appears exactly once, in inventory order.

It sits in callback_plugins/ beside the playbooks, where ansible-playbook finds it without any
configuration, and needs no enabling (CALLBACK_NEEDS_ENABLED is false).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: edge_fleet_summary
    type: aggregate
    short_description: per-device summary of an edge model rollout, printed and written as JSON
    description:
      - Prints one row per device and writes the summary JSON to the play variable or extra variable
        edge_fleet_summary (default build/fleet/summary.json, relative to the working directory).
"""

DEFAULT_SUMMARY_PATH = "build/fleet/summary.json"
DEVICE_KEY = "edge_fleet_device"
MODEL_KEY = "edge_fleet_model"
STEP_FACT = "edge_model_step"
SUMMARY_VARIABLE = "edge_fleet_summary"
STATUSES = ("updated", "unchanged", "rolled_back", "failed", "unreachable", "not_attempted")
PROBLEM_STATUSES = ("rolled_back", "failed", "unreachable", "not_attempted")
SHORT_SHA = 12
# How Ansible introduces ssh's own message in an unreachable result.
SSH_WRAPPERS = ("over ssh: ", "via ssh: ")


def one_line(text: Any) -> str:
    """Whitespace squeezed, so a reason is one line of the table and of the JSON."""
    return " ".join(str(text).split())


def unreachable_reason(result: dict[str, Any]) -> str:
    """What ssh itself said (refused, timed out, host key, permission), without Ansible's wrapping
    ("Data could not be sent to remote host ... over ssh: ", "Failed to connect to the host via ssh: ")."""
    message = one_line(result.get("msg", "") or "unreachable")
    for wrapper in SSH_WRAPPERS:
        if wrapper in message:
            message = message.rsplit(wrapper, 1)[1]
    return message


def write_json_atomically(path: str, document: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".summary-", suffix=".json", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class CallbackModule(CallbackBase):
    """Collects each device's outcome and writes the summary when the playbook ends."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "edge_fleet_summary"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self) -> None:
        super().__init__()
        self._hosts: list[str] = []
        self._summary_path = DEFAULT_SUMMARY_PATH
        self._steps: dict[str, str] = {}
        self._unreachable: dict[str, dict[str, Any]] = {}
        self._failed: dict[str, dict[str, Any]] = {}
        self._seen: set[str] = set()

    # --- what the play is about ------------------------------------------------------------------
    def v2_playbook_on_play_start(self, play: Any) -> None:
        # Called once per batch with serial: the host list is the play's whole list (limits kept,
        # the batch's restriction ignored), so it is the same every time.
        manager = play.get_variable_manager()
        if manager is None:
            return
        pattern = play.hosts if isinstance(play.hosts, str) and "{{" not in play.hosts else "all"
        hosts = manager._inventory.get_hosts(pattern, ignore_restrictions=True)
        for host in hosts:
            if host.name not in self._hosts:
                self._hosts.append(host.name)
        path = manager.extra_vars.get(SUMMARY_VARIABLE) or play.vars.get(SUMMARY_VARIABLE)
        if isinstance(path, str) and path and "{{" not in path:
            self._summary_path = path

    # --- what happened to each device ------------------------------------------------------------
    def _note(self, result: Any) -> str:
        host = result._host.get_name()
        self._seen.add(host)
        facts = result._result.get("ansible_facts") or {}
        if STEP_FACT in facts:
            self._steps[host] = str(facts[STEP_FACT])
        return host

    def v2_runner_on_ok(self, result: Any) -> None:
        self._note(result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._note(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        host = self._note(result)
        if not ignore_errors:
            self._failed[host] = {"step": self._steps.get(host), "reason": one_line(result._result.get("msg", "failed")),
                                  "task": result._task.get_name()}

    def v2_runner_on_unreachable(self, result: Any) -> None:
        host = self._note(result)
        self._unreachable[host] = {"step": self._steps.get(host), "reason": unreachable_reason(result._result)}

    # --- the summary -------------------------------------------------------------------------------
    def _device(self, host: str, reported: dict[str, Any]) -> dict[str, Any]:
        if host in self._unreachable:
            known = reported or {}
            return {"host": host, "status": "unreachable",
                    "active_sha256": known.get("active_sha256") if known.get("status") != "updated" else None,
                    "previous_sha256": known.get("previous_sha256"),
                    "step": self._unreachable[host]["step"], "reason": self._unreachable[host]["reason"]}
        if reported and reported.get("status") in STATUSES:
            return {"host": host, "status": reported["status"],
                    "active_sha256": reported.get("active_sha256") or None,
                    "previous_sha256": reported.get("previous_sha256") or None,
                    "step": reported.get("step") or None,
                    "reason": one_line(reported["reason"]) if reported.get("reason") else None}
        if host in self._failed:
            failure = self._failed[host]
            return {"host": host, "status": "failed", "active_sha256": None, "previous_sha256": None,
                    "step": failure["step"] or failure["task"], "reason": failure["reason"]}
        return {"host": host, "status": "not_attempted", "active_sha256": None, "previous_sha256": None,
                "step": None, "reason": "the rollout stopped before this device's batch"
                if self._failed or self._unreachable else "the play never reached this device"}

    def v2_playbook_on_stats(self, stats: Any) -> None:
        custom = getattr(stats, "custom", {}) or {}
        run = custom.get("_run", {}) or {}
        model = run.get(MODEL_KEY)
        devices = [self._device(host, (custom.get(host) or {}).get(DEVICE_KEY) or {}) for host in self._hosts]
        counts = Counter(device["status"] for device in devices)
        summary = {"model": model if isinstance(model, dict) else None, "devices": devices,
                   "counts": {status: counts[status] for status in STATUSES if counts[status]}}
        try:
            write_json_atomically(self._summary_path, summary)
            written = f"summary written to {self._summary_path}"
        except OSError as error:
            written = f"could not write the summary to {self._summary_path}: {error.strerror or error}"
        self._print(summary, written)

    def _print(self, summary: dict[str, Any], written: str) -> None:
        display = self._display
        model = summary["model"]
        title = (f"FLEET SUMMARY: {model.get('file')} sha256 {str(model.get('sha256'))[:SHORT_SHA]}"
                 if model else "FLEET SUMMARY")
        display.banner(title)
        rows = [("HOST", "STATUS", "ACTIVE", "PREVIOUS", "STEP: REASON")]
        for device in summary["devices"]:
            detail = ": ".join(part for part in (device["step"], device["reason"]) if part)
            rows.append((device["host"], device["status"], (device["active_sha256"] or "-")[:SHORT_SHA],
                         (device["previous_sha256"] or "-")[:SHORT_SHA], detail or "-"))
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        for row in rows:
            display.display("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
        counts = summary["counts"]
        display.display(", ".join(f"{status} {count}" for status, count in counts.items()) or "no devices")
        if summary["devices"] and counts.get("unchanged") == len(summary["devices"]):
            display.display("No device changed: every device already runs this model.")
        display.display(written)
