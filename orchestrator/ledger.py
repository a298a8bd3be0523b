"""Run history in SQLite (DESIGN.md 4.4): one row per run, whatever the backend.

The ledger is what lets `orchestrate logs RUN`, `status`, `cancel` and `predict RUN` find a run
again from any directory, after the client that started it has gone.
"""
import json
import os
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import UsageError
from .paths import private_state_dir, state_dir
from .run_folder import RunFolder

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    remote_id TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    dataset TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    run_dir TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    exit_code INTEGER,
    metrics TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 1,
    search_id TEXT NOT NULL DEFAULT ''
)
"""
# Columns added after the first release, with their definitions: added to older ledgers on open.
ADDED_COLUMNS = {"attempts": "INTEGER NOT NULL DEFAULT 1", "search_id": "TEXT NOT NULL DEFAULT ''"}


@dataclass
class RunRecord:
    run_id: str
    name: str
    backend: str
    status: str
    dataset: str
    run_dir: str
    params: dict = field(default_factory=dict)
    remote_id: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    exit_code: int = None
    metrics: dict = field(default_factory=dict)
    attempts: int = 1  # 1 + how many times `orchestrate train --resume` started the run again
    search_id: str = ""  # a trial of `train --search`: the search's run id

    @property
    def output_dir(self):
        return RunFolder(self.run_dir).outputs

    def to_json(self):
        return asdict(self)


_JSON_COLUMNS = ("params", "metrics")


class Ledger:
    def __init__(self, path=None):
        """The ledger at `path`, by default ledger.db in the private state folder.

        The file is the owner's alone (0600), as is that folder (0700): it names the user's data,
        parameters and remote jobs. SQLite gives its journal the database file's mode.
        """
        try:
            if path:
                self.path = Path(path)
                self.path.parent.mkdir(parents=True, exist_ok=True)
            else:
                self.path = private_state_dir() / "ledger.db"
        except OSError as exc:
            folder = Path(path).parent if path else state_dir()
            raise UsageError(f"cannot create the state folder {folder}: {exc.strerror or exc}") from None
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            if self.path.stat().st_mode & 0o777 != 0o600:
                self.path.chmod(0o600)  # a ledger an earlier version created with the umask's mode
        except OSError as exc:
            raise UsageError(f"run ledger {self.path} is unusable: {exc.strerror or exc}") from None
        with self._connect() as db:
            db.execute(SCHEMA)
            present = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
            for name, definition in ADDED_COLUMNS.items():
                if name not in present:
                    try:
                        db.execute(f"ALTER TABLE runs ADD COLUMN {name} {definition}")
                    except sqlite3.OperationalError as exc:  # another client added it meanwhile
                        if "duplicate column" not in str(exc):
                            raise

    @contextmanager
    def _connect(self):
        """A connection that commits on success and is always closed; SQLite errors become one line."""
        try:
            with closing(sqlite3.connect(self.path, timeout=10)) as db:
                db.row_factory = sqlite3.Row
                with db:
                    yield db
        except sqlite3.Error as exc:
            raise UsageError(f"run ledger {self.path} is unusable: {exc}") from None

    def add(self, record):
        row = record.to_json()
        for key in _JSON_COLUMNS:
            row[key] = json.dumps(row[key])
        names = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._connect() as db:
            db.execute(f"INSERT INTO runs ({names}) VALUES ({marks})", row)

    def update(self, run_id, **changes):
        allowed = {f.name for f in fields(RunRecord)} - {"run_id"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown ledger fields: {sorted(unknown)}")
        changes["updated_at"] = time.time()
        for key in _JSON_COLUMNS:
            if key in changes:
                changes[key] = json.dumps(changes[key])
        assignments = ", ".join(f"{k} = :{k}" for k in changes)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {assignments} WHERE run_id = :run_id", {**changes, "run_id": run_id})

    def get(self, run_id):
        """The run with this id, or the only run whose id starts with it; UsageError otherwise.

        A search's trials have ids that start with the search's, so a prefix is matched against
        runs and searches first, and against trials only when none of those matches: the prefix
        of a search's id names the search."""
        if not run_id:
            raise UsageError("a run id is needed (see 'orchestrate runs list')")
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchall()
            pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            for trials in ("search_id = ''", "search_id != ''"):
                if not rows:
                    rows = db.execute(f"SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\' AND {trials} LIMIT 6",
                                      (pattern,)).fetchall()
        if not rows:
            raise UsageError(f"unknown run {run_id!r} (see 'orchestrate runs list')")
        if len(rows) > 1:
            names = ", ".join(r["run_id"] for r in rows[:5])
            raise UsageError(f"run id {run_id!r} is ambiguous: {names}")
        return self._record(rows[0])

    def children(self, search_id):
        """The trials of the search `search_id`, in trial order."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE search_id = ? ORDER BY run_id", (search_id,)).fetchall()
        return [self._record(r) for r in rows]

    def list(self, limit=50):
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [self._record(r) for r in rows]

    @staticmethod
    def _record(row):
        data = dict(row)
        for key in _JSON_COLUMNS:
            data[key] = json.loads(data[key])
        return RunRecord(**data)
