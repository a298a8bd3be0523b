"""The Azure ML job: real azure-ai-ml entities, validated and round-tripped offline (no account)."""
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.backends.azure.backend import describe_plan, export_job_yaml
from orchestrator.backends.azure.catalogue import resolve
from orchestrator.backends.azure.job import build_job, dataset_prefix, describe, plan_from_spec
from orchestrator.backends.azure.provision import compute_entity
from orchestrator.backends.azure.settings import load_settings
from orchestrator.backends.base import JobSpec
from orchestrator.errors import UsageError
from orchestrator.paths import remote_scripts_dir

# azure-ai-ml's schemas are full of marshmallow deprecation warnings: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ACCOUNT_KEY = "c2VjcmV0LWFjY291bnQta2V5LWRvLW5vdC1sZWFr"


def spec(tmp_path, **options):
    data = tmp_path / "EuroSAT"
    data.mkdir(exist_ok=True)
    return JobSpec(run_id="eurosat-20261123-142500-ab12", data=data, run_dir=tmp_path / "runs" / "r",
                   train_args=["--epochs", "3", "--lr", "0.001", "--arch", "resnet50"],
                   backend_options=options)


def load(path):
    from azure.ai.ml import load_job

    return load_job(str(path))


def test_single_node_job(tmp_path):
    job = build_job(plan_from_spec(spec(tmp_path, compute="gpu-a100", experiment="eurosat")))
    assert job.compute == "gpu-a100" and job.resources.instance_count == 1
    assert job.distribution is None  # one GPU, one process: no launcher needed
    assert job.command == ("python train.py --data ${{inputs.data}} --output ${{outputs.model}} "
                           "--checkpoint-dir ${{outputs.checkpoints}} --cache-dir image-cache --epochs 3 --lr 0.001 "
                           "--arch resnet50")
    assert job.name == "eurosat-20261123-142500-ab12" and job.experiment_name == "eurosat"
    assert job.display_name == "eurosat-20261123-142500-ab12"
    # azure-ai-ml does not check bindings offline: every one must name a real input or output
    for kind, name in re.findall(r"\$\{\{(inputs|outputs)\.(\w+)\}\}", job.command):
        assert name in getattr(job, kind)
    assert Path(job.code) == remote_scripts_dir()
    assert Path(job.environment.build.path).name == "docker"
    assert (Path(job.environment.build.path) / "Dockerfile").is_file()
    data = job.inputs["data"]
    assert (data.type, data.mode) == ("uri_folder", "download")  # packed shards (storage/packed_blob.py)
    assert data.path == f"azureml://datastores/workspaceblobstore/paths/{dataset_prefix(tmp_path / 'EuroSAT', True)}/"
    for name in ("model", "checkpoints"):
        out = job.outputs[name]
        assert out.mode == "rw_mount"
        assert out.path == ("azureml://datastores/workspaceblobstore/paths/orchestrate/runs/"
                            f"eurosat-20261123-142500-ab12/{name}/")


@pytest.mark.parametrize("compute,nodes,per_node", [("gpu-a100x4", 2, 4), ("gpu-t4", 3, 1), ("gpu-nc24", 1, 4)])
def test_multi_gpu_and_multi_node_jobs_use_the_pytorch_distribution(tmp_path, compute, nodes, per_node):
    job = build_job(plan_from_spec(spec(tmp_path, compute=compute, nodes=nodes)))
    assert job.resources.instance_count == nodes
    assert job.distribution.type == "pytorch"
    assert job.distribution.process_count_per_instance == per_node


def test_exported_yaml_is_accepted_by_load_job_and_keeps_everything(tmp_path):
    path = tmp_path / "job.yml"
    export_job_yaml(spec(tmp_path, compute="gpu-a100x2", nodes=2, experiment="exp"), path)
    job = load(path)
    assert job.compute == "gpu-a100x2"
    assert job.resources.instance_count == 2 and job.distribution.process_count_per_instance == 2
    assert job.experiment_name == "exp" and "--epochs 3" in job.command
    assert job.inputs["data"].path.endswith(f"/{dataset_prefix(tmp_path / 'EuroSAT', True)}/")
    assert set(job.outputs) == {"model", "checkpoints"}
    assert job.environment.build is not None
    assert job._validate().passed


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown compute"):
        plan_from_spec(spec(tmp_path, compute="nc12"))
    with pytest.raises(UsageError, match="--nodes"):
        plan_from_spec(spec(tmp_path, nodes=0))
    bad = spec(tmp_path)
    bad.train_args = ["--name", "${{inputs.secret}}"]
    with pytest.raises(UsageError, match="must not contain"):
        build_job(plan_from_spec(bad))


def test_loose_data_with_no_pack_stays_mounted_under_its_own_prefix(tmp_path):
    data = build_job(plan_from_spec(spec(tmp_path, no_pack=True))).inputs["data"]
    assert (data.type, data.mode) == ("uri_folder", "ro_mount")
    assert data.path.endswith(f"/{dataset_prefix(tmp_path / 'EuroSAT')}/")
    assert dataset_prefix(tmp_path / "EuroSAT", True).startswith("orchestrate/packed/EuroSAT-")


def test_folders_with_the_same_name_get_their_own_dataset_prefix(tmp_path):
    a, b = tmp_path / "a" / "train", tmp_path / "b" / "train"
    assert dataset_prefix(a).startswith("orchestrate/datasets/train-")
    assert dataset_prefix(a) != dataset_prefix(b) and dataset_prefix(a) == dataset_prefix(tmp_path / "a" / "." / "train")


def test_train_args_are_shell_quoted(tmp_path):
    s = spec(tmp_path)
    s.train_args = ["--classes", "a b; rm -rf /"]
    assert build_job(plan_from_spec(s)).command.endswith("--classes 'a b; rm -rf /'")


def test_dry_run_plan_names_what_would_be_created(tmp_path, monkeypatch):
    monkeypatch.setenv("AZUREML_WORKSPACE_NAME", "ws1")
    monkeypatch.setenv("AZURE_RESOURCE_GROUP", "rg1")
    text = describe_plan(spec(tmp_path, compute="gpu-nc24", nodes=2, low_priority=True))
    first, *rest = text.splitlines()
    assert first.startswith("notice: Standard_NC24 ") and "Standard_NC64as_T4_v3" in first
    body = "\n".join(rest)
    for expected in ("ws1 (resource group rg1)", "gpu-t4x4 = Standard_NC64as_T4_v3 (4x T4",
                     "low-priority", "2 x 4 process(es) (PyTorch distribution)", "infra/docker",
                     "orchestrate/packed/EuroSAT-", "(packed shards, downloaded", "--checkpoint-dir ${{outputs.checkpoints}}"):
        assert expected in body


def test_the_storage_secret_the_settings_read_stays_out_of_plan_and_yaml(tmp_path, monkeypatch):
    """AZURE_STORAGE_CONNECTION_STRING is the one secret the Azure settings take from the
    environment (settings.py): the plan is described from settings that hold it, and shows it
    nowhere; the exported job passes on no variable of this machine's environment."""
    from orchestrator.backends.azure import job as job_module

    connection = (f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={ACCOUNT_KEY};"
                  "EndpointSuffix=core.windows.net")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    described_with = []
    real_describe = job_module.describe

    def describe(plan, settings=None, replace=None):
        described_with.append(settings)
        return real_describe(plan, settings, replace)
    monkeypatch.setattr(job_module, "describe", describe)
    s = spec(tmp_path, compute="gpu-t4")
    text = describe_plan(s)
    assert [settings.storage_connection_string for settings in described_with] == [connection]  # it had it
    path = tmp_path / "job.yml"
    export_job_yaml(s, path)
    exported = path.read_text()
    assert yaml.safe_load(exported)["environment_variables"] == {"PYTHONUNBUFFERED": "1"}
    for shown in (exported, text):
        assert ACCOUNT_KEY not in shown and "AccountKey" not in shown


def test_describe_without_a_workspace_still_works(tmp_path):
    text = describe(plan_from_spec(spec(tmp_path)), load_settings(env={}, cwd=tmp_path))
    assert "(not configured)" in text and "gpu-t4 = Standard_NC4as_T4_v3" in text


@pytest.mark.parametrize("low_priority,tier,vm_priority", [(True, "low_priority", "LowPriority"),
                                                          (False, "dedicated", "Dedicated")])
def test_compute_entity_spells_the_tier_the_way_the_service_wants(tmp_path, low_priority, tier, vm_priority):
    entity = compute_entity(resolve("gpu-nc12"), max_nodes=3, idle_minutes=15, low_priority=low_priority)
    assert (entity.name, entity.size, entity.tier) == ("nc16as-t4-v3", "Standard_NC16as_T4_v3", tier)
    props = entity._to_rest_object().as_dict()["properties"]["properties"]
    assert props["vmPriority"] == vm_priority  # "LowPriority" would have gone out as "Lowpriority"
    assert props["scaleSettings"] == {"minNodeCount": 0, "maxNodeCount": 3,
                                      "nodeIdleTimeBeforeScaleDown": "PT15M"}
    # the YAML schema validates tier (the constructor does not): it must accept ours
    from azure.ai.ml import load_compute

    path = tmp_path / "compute.yml"
    entity.dump(str(path))
    assert load_compute(str(path)).tier == tier


@pytest.mark.parametrize("kwargs,match", [({"max_nodes": 0}, "--max-nodes"),
                                          ({"max_nodes": 1, "min_nodes": 2}, "--min-nodes"),
                                          ({"idle_minutes": 0}, "--idle-minutes")])
def test_bad_cluster_sizes_are_user_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        compute_entity(resolve("gpu-t4"), **kwargs)


def test_export_to_a_missing_folder_is_a_user_error_before_anything_else(tmp_path):
    """The path is checked first: even a spec whose compute is unknown reports the path."""
    with pytest.raises(UsageError) as exc:
        export_job_yaml(spec(tmp_path, compute="gpu-k80"), Path("/nonexistent/dir/job.yml"))
    assert str(exc.value) == "cannot write /nonexistent/dir/job.yml: no such folder"
    with pytest.raises(UsageError, match="it is a folder"):
        export_job_yaml(spec(tmp_path), tmp_path)


def test_sdk_validation_exceptions_become_one_line_user_errors():
    from azure.ai.ml import command

    from orchestrator.backends.azure.job import sdk_validation_errors

    with pytest.raises(UsageError) as exc, sdk_validation_errors():
        command(command="echo", environment="img:1", compute="c", environment_variables=3)
    assert str(exc.value).startswith("invalid Azure ML job: Expecting <class 'dict'> for environment_variables")
    assert "\n" not in str(exc.value)


# weights the node cannot fetch: a --weights file of this machine, or --weights-upload ----------
def with_weights(s, *args):
    s.train_args = [*s.train_args, *args]
    return s


def assert_weights_input(job, path):
    weights = job.inputs["weights"]
    assert (weights.type, weights.mode, weights.path) == ("uri_file", "download", str(path))
    assert job.command.count("--weights") == 1 and "--weights ${{inputs.weights}}" in job.command
    for kind, name in re.findall(r"\$\{\{(inputs|outputs)\.(\w+)\}\}", job.command):
        assert name in getattr(job, kind)


def test_a_weights_file_of_this_machine_is_sent_as_a_job_input(tmp_path, monkeypatch):
    (tmp_path / "w.pt").write_bytes(b"state")
    monkeypatch.chdir(tmp_path)
    job = build_job(plan_from_spec(with_weights(spec(tmp_path), "--weights", "w.pt", "--seed", "1")))
    assert_weights_input(job, tmp_path / "w.pt")
    assert job.command.endswith("--weights ${{inputs.weights}} --epochs 3 --lr 0.001 --arch resnet50 --seed 1")


def test_weights_upload_sends_the_imagenet_file_of_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    s = with_weights(spec(tmp_path, weights_upload=True), "--weights", "imagenet", "--arch", "resnet18")
    assert_weights_input(build_job(plan_from_spec(s)), tmp_path / "torch/hub/checkpoints/resnet18-f37072fd.pth")
    default = spec(tmp_path, weights_upload=True)  # --weights imagenet is the default
    assert_weights_input(build_job(plan_from_spec(default)),
                         tmp_path / "torch/hub/checkpoints/resnet50-0676ba61.pth")
    text = describe_plan(default)
    assert f"weights:     {tmp_path}/torch/hub/checkpoints/resnet50-0676ba61.pth (downloaded there first)" in text


def test_without_weights_upload_the_node_fetches_imagenet_itself(tmp_path):
    job = build_job(plan_from_spec(with_weights(spec(tmp_path), "--weights", "imagenet")))
    assert set(job.inputs) == {"data"} and job.command.endswith("--arch resnet50 --weights imagenet")


def test_exported_yaml_names_the_local_weights_file_for_az_ml_to_upload(tmp_path):
    """azure-ai-ml would dump the local path as `azureml:/...`, an asset reference (notes, gotcha 2)."""
    (tmp_path / "w.pt").write_bytes(b"state")
    path = tmp_path / "job.yml"
    export_job_yaml(with_weights(spec(tmp_path, compute="gpu-t4"), "--weights", str(tmp_path / "w.pt")), path)
    assert yaml.safe_load(path.read_text())["inputs"]["weights"]["path"] == str(tmp_path / "w.pt")
    job = load(path)
    assert (job.inputs["weights"].type, job.inputs["weights"].path) == ("uri_file", str(tmp_path / "w.pt"))
    assert job.inputs["data"].path.startswith("azureml://datastores/workspaceblobstore/paths/orchestrate/packed/")
    assert "--weights ${{inputs.weights}}" in job.command and job._validate().passed


@pytest.mark.parametrize("args,options,match", [
    (["--weights", "none"], {"weights_upload": True}, "nothing to send with --weights none"),
    (["--weights", "missing.pt"], {}, "--weights missing.pt: no such file"),
])
def test_weights_that_cannot_be_sent_are_user_errors(tmp_path, monkeypatch, args, options, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=match):
        plan_from_spec(with_weights(spec(tmp_path, **options), *args))
