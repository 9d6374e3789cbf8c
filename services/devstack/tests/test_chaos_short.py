"""`make chaos` in CI: the short run against the real stack (its own PostgreSQL, broker, simulator and
services as processes) must come out exact: no drift, no lost reading, no household wrongly cut or supplied."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _run_chaos(timeout: float) -> tuple[int, str, str]:
    """The short run in a process group of its own: if it outlives `timeout`, the whole group (its services, broker
    and PostgreSQL) is stopped, not only the suite's own process, so nothing is left running."""
    with subprocess.Popen(
        [sys.executable, "-m", "shuidian_devstack.chaos", "short"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                out, err = child.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                out, err = child.communicate()
        return child.returncode, out, err


@pytest.mark.timeout(240)
def test_short_chaos_run_leaves_every_balance_reading_and_relay_exact() -> None:
    returncode, stdout, stderr = _run_chaos(timeout=215)
    lines = stdout.strip().splitlines()
    assert lines, f"no summary; exit {returncode}; stderr: {stderr[-3000:]}"
    summary = json.loads(lines[-1])
    # What failed first (CI keeps only the head of a long report), then the rest.
    details = summary.get("details", {})
    evidence = {k: details.get(k) for k in ("drift", "lost", "false_readings", "ledger_mismatches", "unbilled_batches")}
    head = {"failures": summary.get("failures"), **evidence, "wrongly_cut": details.get("wrongly_cut")}
    rest = {k: v for k, v in summary.items() if k not in ("details", "failures")}
    report = json.dumps({**head, "summary": rest}, ensure_ascii=False, indent=1)
    assert summary["failures"] == [], report
    assert summary["ok"], report
    assert returncode == 0, report
    assert summary["faults_injected"] >= 5, report
    assert summary["drift_fen"] == "0", report
    assert summary["lost_readings"] == 0, report
    assert summary["wrongly_cut"] == 0, report
    assert summary["wrongly_supplied"] == 0, report
    # The run must have exercised both sides of the relay check, or it proved nothing about relays.
    assert summary["details"]["cut"] >= 1, report
    assert summary["details"]["supplied"] >= 1, report
