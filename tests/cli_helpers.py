"""Checks shared by the command-line tests."""

from __future__ import annotations

import subprocess


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The command failed with exit code 1 and one `tandem: error: ...` line naming every fragment."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tandem: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
