"""Shared test setup: every test gets its own ledger and config directories.

Real services (dockerd, Azurite) are started by the fixtures in tests/services/.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Fixtures of the real services, available to every test module without importing them.
pytest_plugins = ["services.azurite", "services.docker_engine", "services.moto_s3"]

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATE = Path(sys.executable).with_name("orchestrate")
# The browser of the page tests (report, serve): Debian's chromium, driven by playwright, which
# never downloads one of its own.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Keep the user's real ledger and profiles out of reach of the tests."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the decoded-image cache
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME", "AZURE_LOCATION",
                 "AZURE_STORAGE_CONNECTION_STRING", "ORCHESTRATE_PROFILE", "ORCHESTRATE_STORAGE_URI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def default_sigint():
    """preexec_fn of a child that a test sends Ctrl-C (SIGINT): the default disposition there,
    whatever this process has. A shell or launcher that ignores SIGINT (`trap "" INT`, nohup)
    passes SIG_IGN on through fork and exec, subprocess does not reset it, and a Python started
    with SIGINT ignored never installs its KeyboardInterrupt handler: the Ctrl-C would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, what, timeout=120):
    """Poll `predicate` until it returns something true, and return that: tests wait on a condition
    they can observe, never a fixed sleep, which a loaded machine outlasts. AssertionError naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return found


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run the installed `orchestrate` command in a real subprocess."""
    return subprocess.run([str(ORCHESTRATE), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def run(monkeypatch, capsys):
    """Run `orchestrate ARGS` in this process, so that a test can shorten retries or count calls:
    (exit code, stdout, stderr)."""
    from orchestrator.cli.main import main as orchestrate_main

    def invoke(args, env):
        monkeypatch.setattr(sys, "argv", ["orchestrate", *map(str, args)])
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as stop:
            orchestrate_main()
        out = capsys.readouterr()
        return stop.value.code, out.out, out.err
    return invoke
