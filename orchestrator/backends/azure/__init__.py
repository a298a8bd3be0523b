"""The Azure ML backend, in one room: everything that knows about Azure lives in this package.

  settings   where the workspace comes from: flags > environment > profile file > config.json
  catalogue  the NC-series sizes, their aliases and retired-size substitutes (no Azure import)
  provision  workspace and compute: idempotent create, the cost/quota plan before a cluster
  job        the command job of a run (the job contract on Azure ML), dry-run text, YAML export
  sweep_job  the sweep job of a search (one trial per configuration), dry-run text, YAML export
  sweep_results  a running sweep's trial events; the best trial's model and search.json
  tailer     following a job's log by byte offset; Azure ML job status -> ours
  seam       every network call, every private-API use of azure-ai-ml, and its import
  backend    AzureBackend (the Backend interface, DESIGN.md 4.3) and the dry-run entry points

Every network call goes through `seam.AzureSeam`, so all the logic around it (job YAML, quota
arithmetic, status mapping, log offsets) runs and is tested without an Azure account. azure-ai-ml
costs about a second to import, so nothing here imports it at module level: `seam.load_sdk()`
does, inside the functions that need it; importing this package (the CLI does, for `settings`)
stays cheap.
"""
from .backend import AzureBackend

__all__ = ["AzureBackend"]
