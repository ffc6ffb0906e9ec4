"""Resource names are URNs: renaming or re-parenting one replaces it (new keys, restarted services).
Every URN of the dev stack is snapshotted, so a rename is always a deliberate, reviewed diff —
with `aliases` where the resource must not be replaced.

    KH_UPDATE_URNS=1 venv/bin/python -m pytest tests/unit/test_urns.py   # after a deliberate rename
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from engine.mocks import RecordingMocks
from engine.runtime import run_program, stack_config

SNAPSHOT = Path(__file__).with_name("dev-stack-urns.txt")


def test_dev_stack_urns_match_the_reviewed_snapshot() -> None:
    mocks = RecordingMocks(preview=True)
    run_program(stack_config("dev"), mocks, preview=True, stack="dev")
    urns = sorted(r.urn for r in mocks.registrations)
    assert len(urns) == len(set(urns)), "two resources share a URN"
    text = "".join(f"{u}\n" for u in urns)
    if os.environ.get("KH_UPDATE_URNS"):
        SNAPSHOT.write_text(text)
    expected = SNAPSHOT.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "reviewed", "now"))
    assert text == expected, (
        "resource URNs changed — each changed URN is a replacement on every deployed stack:\n" + diff +
        "\nIf deliberate: add `aliases` where a resource must survive, then KH_UPDATE_URNS=1 to update the snapshot.")
