"""The suite's own rules: a missing real part skips on a developer's machine and fails under CI."""

from __future__ import annotations

import unittest

import pytest

from test.support import find_tool, require_tool, unavailable


def test_a_missing_part_skips_without_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(unittest.SkipTest, match="no database here"):
        unavailable("no database here")


def test_a_missing_part_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(AssertionError, match="no database here; .ci/run must provide it"):
        unavailable("no database here")
    with pytest.raises(AssertionError, match="not-a-real-client-1f3a is not installed"):
        require_tool("not-a-real-client-1f3a")


def test_tools_are_found_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tool = tmp_path / "some-client"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_tool("some-client") == str(tool)
    assert require_tool("some-client") == str(tool)
