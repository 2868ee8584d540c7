"""The console entry point: ordinary bad input is one `error:` line and exit code 2, SIGTERM exits through
``finally`` (so what a command started is stopped)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streams.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "routing", "--config", "/nonexistent/catalog.toml"],  # FileNotFoundError
        ["simulate", "routing", "--tier", "bogus"],  # a pydantic ValidationError
        ["scale", "lag-exporter", "--port", "99999"],  # OverflowError from bind()
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["aifleet", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "scale", "--workers", "a,b"],
        ["bench", "scale", "--workers", ","],
        ["analytics", "seed", "--days", "-1"],
        ["analytics", "migrate", "--ttl-days", "-5", "--print"],
    ],
)
def test_option_values_that_mean_nothing_are_refused_before_anything_starts(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["aifleet", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2  # click's usage error, not a traceback (exit 1)


def test_sigterm_runs_the_finally_blocks(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    script = textwrap.dedent(
        f"""
        import sys, time
        import streams.cli as cli

        def forever() -> None:
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                open({str(marker)!r}, "w").write("children stopped")

        cli.app = forever
        cli.main()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert marker.read_text() == "children stopped"
