"""Plan: what a dry run of an Azure ML job (train or score) would create and run.

Example:
    >>> plan = orchestrator.train("./EuroSAT", compute="gpu-nc12", dry_run=True)
    >>> print(plan.description)       # compute, price, quota, data, job
    >>> print(plan.yaml)              # the job for `az ml job create -f`
"""
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Plan:
    """A dry run's result: nothing was created and no cloud call was made.

    `run_id`: the id the run would have; `description`: the plan in words, one item per line (what
    `--dry-run` prints); `spec`: the job's plan (a JobSpec for train, a ScorePlan for score);
    `export`: the path the job's YAML was written to (export=PATH), else None; `yaml`: the job as
    Azure ML YAML (`az ml job create -f`).

    Example:
        >>> "Standard_NC12s_v3" in orchestrator.train("./EuroSAT", compute="gpu-nc12", dry_run=True).description
        True
    """
    run_id: str
    description: str
    spec: object
    export: Optional[Path] = None
    write_yaml: Callable[[Path], None] = field(default=None, repr=False)  # writes the job's YAML to a new file

    def __str__(self):
        return self.description

    @property
    def yaml(self) -> str:
        """The job as Azure ML YAML: the exported file's text, or written now to a temporary file
        (azure-ai-ml builds it, offline).

        Example:
            >>> print(orchestrator.train("./EuroSAT", compute="gpu-nc12", dry_run=True).yaml)
        """
        if self.export is not None:
            return self.export.read_text()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "job.yml"
            self.write_yaml(path)
            return path.read_text()
