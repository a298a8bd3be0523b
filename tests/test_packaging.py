"""Packaging: what a user gets from `pip install orchestrator` (a built wheel, not this checkout).

The training image definition (infra/docker) ships as the package data of
`orchestrator.infra_docker`, so an installed wheel finds the Docker build context, computes the same
image tag as the checkout and builds the same Azure ML job. And the azure-ai-ml range of
pyproject.toml is only as good as the private API the seam relies on: each use is checked here, so
an SDK release that moves one fails loudly in this file instead of on a user's first job.
"""
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the sources (the checkout's build/ and egg-info untouched)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("orchestrator", "remote_scripts", "infra"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("orchestrator-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel installed non-editable into a folder of its own (its dependencies: this venv's)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def run_installed(target, code, cwd):
    """`code` in a fresh interpreter that imports orchestrator from `target`, never from the checkout."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_wheel_carries_every_package_and_the_image_definition(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "infra" / "docker").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert f"orchestrator/infra_docker/{path.relative_to(REPO / 'infra' / 'docker').as_posix()}" in names
    assert not any(n.startswith("infra/") for n in names)  # one copy, inside the package
    # the package list of pyproject.toml is explicit (a mapped package): every package is in it
    for init in [*(REPO / "orchestrator").rglob("__init__.py"), REPO / "remote_scripts" / "__init__.py"]:
        assert init.relative_to(REPO).as_posix() in names, f"{init.parent} is missing from pyproject's packages"
    assert "remote_scripts/train.py" in names


def test_an_installed_wheel_finds_the_docker_context_and_builds_the_same_jobs(installed, tmp_path):
    from orchestrator.images import image_tag
    from orchestrator.paths import docker_context_dir

    data = tmp_path / "colors"
    for label in ("red", "blue"):
        (data / label).mkdir(parents=True)
    code = f"""
import json, orchestrator
from pathlib import Path
from orchestrator.paths import docker_context_dir, remote_scripts_dir
from orchestrator.images import image_tag
from orchestrator.backends.base import JobSpec
from orchestrator.backends.azure.job import build_job, plan_from_spec
context = docker_context_dir()
spec = JobSpec(run_id="r1", data=Path({str(data)!r}), run_dir=Path("runs/r1"), train_args=["--epochs", "1"],
               backend_options={{"compute": "gpu-t4"}})
job = build_job(plan_from_spec(spec))
print(json.dumps({{"package": orchestrator.__file__, "context": str(context),
                  "files": sorted(p.name for p in context.iterdir() if p.is_file()),
                  "tag": image_tag("debian:bookworm", context), "scripts": str(remote_scripts_dir()),
                  "build": job.environment.build.path, "code": job.code}}))
"""
    got = run_installed(installed, code, cwd=tmp_path)
    assert got["package"].startswith(str(installed))  # not the checkout
    assert got["context"] == str(installed / "orchestrator" / "infra_docker")
    assert "Dockerfile" in got["files"]
    assert got["tag"] == image_tag("debian:bookworm", docker_context_dir())  # the same image
    assert got["scripts"] == str(installed / "remote_scripts")
    assert got["build"] == got["context"] and got["code"] == got["scripts"]


def test_azure_ai_ml_is_pinned_to_the_tested_range():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "azure-ai-ml>=1.35.1,<2" in dependencies


def test_the_private_azure_ai_ml_api_the_seam_uses_is_still_there():
    """Each private name orchestrator/backends/azure/seam.py reaches for, on a real MLClient."""
    import importlib

    from azure.ai.ml import MLClient, command
    from azure.ai.ml.entities import Compute
    from azure.ai.ml.operations import JobOperations
    from azure_transport import SUB, ManagementPlane, StaticToken

    assert isinstance(getattr(JobOperations, "_runs_operations", None), property), \
        "azure-ai-ml moved JobOperations._runs_operations: fix orchestrator/backends/azure/seam.py"
    # run history's client needs the workspace's discovery document: the test plane serves it
    ml = MLClient(StaticToken(), SUB, "rg", "ws", transport=ManagementPlane())
    uses = {
        "MLClient.jobs._runs_operations.get_run_details": ml.jobs._runs_operations.get_run_details,
        "MLClient.compute._operation.get": ml.compute._operation.get,
        "MLClient.compute._operation.list": ml.compute._operation.list,
        "Compute._from_rest_object": Compute._from_rest_object,
        "azure.ai.ml._utils.utils.dump_yaml_to_file":
            importlib.import_module("azure.ai.ml._utils.utils").dump_yaml_to_file,
    }
    for name, value in uses.items():
        assert callable(value), f"azure-ai-ml moved {name}: fix orchestrator/backends/azure/seam.py"
    assert ml.compute._operation_scope.resource_group_name == "rg"
    assert ml.compute._workspace_name == "ws"
    constants = importlib.import_module("azure.ai.ml.operations._run_history_constants")
    assert {"Completed", "Failed", "Canceled"} <= {getattr(s, "value", s)
                                                   for s in constants.RunHistoryConstants.TERMINAL_STATUSES}
    job = command(command="python train.py", environment="azureml:env@latest", compute="gpu")
    for name in ("_validate", "_to_job"):
        assert callable(getattr(job, name, None)), f"azure-ai-ml moved Command.{name}: fix seam.py"
    assert callable(getattr(job._to_job(), "_to_dict", None)), "azure-ai-ml moved CommandJob._to_dict"
    assert hasattr(job._validate(), "passed") and hasattr(job._validate(), "error_messages")
