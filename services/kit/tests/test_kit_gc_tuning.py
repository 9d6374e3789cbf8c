"""Garbage-collector tuning at service start: on by default outside tests, and what it does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shuidian_shared.settings import ServiceSettings


@pytest.mark.parametrize(
    ("environment", "setting", "expected"),
    [("dev", None, True), ("prod", None, True), ("test", None, False), ("test", True, True), ("prod", False, False)],
)
def test_kit_gc_tuning_defaults_on_except_in_tests(environment: str, setting: bool | None, expected: bool) -> None:
    settings = ServiceSettings.model_validate({"environment": environment, "gc_tuning": setting})
    assert settings.tunes_gc is expected


def test_kit_tune_gc_freezes_the_started_heap_and_raises_the_young_threshold() -> None:
    # In a process of its own: freezing is process-wide and would pin this test session's objects.
    probe = (
        "import gc\n"
        "from shuidian_kit.service import tune_gc\n"
        "assert gc.get_freeze_count() == 0\n"
        "tune_gc(12_345)\n"
        "print(gc.get_freeze_count(), *gc.get_threshold())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    frozen, young, *older = map(int, out)
    assert frozen > 10_000  # the imported framework is out of the collector's reach
    assert young == 12_345
    assert older == [20, 100]
