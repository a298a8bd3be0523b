"""The SQLite run ledger: add, find by id or prefix, update, list."""
import pytest

from orchestrator.errors import UsageError
from orchestrator.ledger import Ledger, RunRecord


def record(run_id, **kw):
    return RunRecord(run_id=run_id, name="digits", backend="local", status="queued", dataset="/d",
                     run_dir=f"/runs/{run_id}", **kw)


def test_add_get_update_and_list(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.add(record("digits-1", params={"train_args": ["--epochs", "2"]}, created_at=1.0))
    ledger.add(record("digits-2", created_at=2.0))
    ledger.update("digits-1", status="completed", exit_code=0, metrics={"accuracy": 0.9})
    got = ledger.get("digits-1")
    assert got.status == "completed" and got.exit_code == 0
    assert got.metrics == {"accuracy": 0.9} and got.params == {"train_args": ["--epochs", "2"]}
    assert [r.run_id for r in ledger.list()] == ["digits-2", "digits-1"]


def test_unique_prefix_finds_a_run_and_ambiguous_or_unknown_ones_are_user_errors(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.add(record("flowers-a1"))
    ledger.add(record("flowers-a2"))
    ledger.add(record("digits_x"))
    assert ledger.get("digits").run_id == "digits_x"
    with pytest.raises(UsageError, match="ambiguous"):
        ledger.get("flowers-a")
    with pytest.raises(UsageError, match="unknown run"):
        ledger.get("nothing")
    with pytest.raises(UsageError, match="unknown run"):
        ledger.get("digits%")  # LIKE wildcards in a user's id match literally


def test_ledger_lives_in_the_state_directory(isolated_home):
    assert Ledger().path == isolated_home / "state" / "orchestrate" / "ledger.db"
