"""The examples run as documented."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_chat_presence_three_processes() -> None:
    """``python examples/chat_presence.py --processes 3``: every node ends with the
    users of all nodes (and none who logged out), and the output shows users of one
    node appearing on the others."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "chat_presence.py"), "--processes", "3", "--deadline", "30"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    finals = [json.loads(line[len("FINAL "):]) for line in out.splitlines() if line.startswith("FINAL ")]
    assert sorted(f["node"] for f in finals) == ["node-0", "node-1", "node-2"], out

    everyone = {user: f["node"] for f in finals for user in f["mine"]}
    assert len(everyone) == 6  # three users each, one logged out again
    for f in finals:
        assert len(f["mine"]) == 2, f
        assert f["table"] == everyone, f"{f['node']}'s table is not the room's:\n{out}"
        for gone in f["logged_out"]:
            assert all(gone not in g["table"] for g in finals), f"{gone} still listed:\n{out}"

    # each user shows up in another node's output, by broadcast or by a sync on join
    for user, owner in everyone.items():
        seen_on = set()
        for line in out.splitlines():
            m = re.match(r"\[(node-\d)\] (?:\+ (\S+) \(on (node-\d)\)|sync from (node-\d): (.*))$", line)
            if not m:
                continue
            by_broadcast = m[2] == user and m[3] == owner
            by_sync = m[4] == owner and user in m[5].split(", ")
            if by_broadcast or by_sync:
                seen_on.add(m[1])
        assert seen_on == {"node-0", "node-1", "node-2"} - {owner}, f"{user}@{owner}: {seen_on}\n{out}"
