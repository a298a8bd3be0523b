"""The docker backend against a real dockerd, real containers and the real remote_scripts/train.py.

The image is the training image (infra/docker/Dockerfile) on the offline Debian base, so these tests
run the job exactly as the backend runs it for users: same mounts, no network, the invoking uid.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import wait_for
from imagegen import make_dataset
from orchestrator.backends import docker as docker_backend
from orchestrator.backends.base import CANCELED, COMPLETED, FAILED, RUNNING, JobSpec, RunRef
from orchestrator.backends.docker import (RUN_DIR_LABEL, RUN_LABEL, DockerBackend, engine_available,
                                          explain_engine_error, docker_settings)
from orchestrator.run_folder import RunFolder
from orchestrator.errors import ServiceError, UsageError
from orchestrator.events import parse_line
from orchestrator.images import build_offline_base, ensure_training_image, host_debian_mirror, image_tag
from orchestrator.paths import image_cache_dir

pytestmark = pytest.mark.slow

FAST_JOB = ["--epochs", "1", "--image-size", "32", "--arch", "resnet18", "--weights", "none",
            "--mode", "linear"]
ANY_MIRROR = "http://mirror.invalid/debian"  # a reserved name: never contacted by these tests


@pytest.fixture(scope="module", autouse=True)
def isolated_image_cache(tmp_path_factory):
    """The backend mounts the user's image cache folder: keep the real ~/.cache out of these tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def make_spec(root, data, train_args, base_image):
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    return JobSpec(run_id=run_id, data=data, run_dir=root / "runs" / run_id, train_args=train_args,
                   backend_options={"base_image": base_image, "gpus": "none"})


def containers_of(client, run_id):
    # ignore_removed: a container finalized between the list and its inspection is not an error
    return client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}, ignore_removed=True)


def submit_and_wait(tmp_path, docker_client, offline_base, train_args):
    """A submitted run whose container has exited but was not finalized: nobody followed it."""
    spec = make_spec(tmp_path, tmp_path, train_args, offline_base)
    run = DockerBackend().submit(spec)
    docker_client.containers.get(run.remote_id).wait(timeout=60)
    return spec, run


def events(lines):
    return [event for event in (parse_line(line.text) for line in lines) if event]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, docker_client, offline_base, training_image):
    """One 1-epoch job on a dataset with corrupt files, followed with a detach and a resume midway.

    Returns (spec, run, lines seen before the detach, lines seen after it, status).
    """
    root = tmp_path_factory.mktemp("docker-e2e")
    data = make_dataset(root / "data", per_class=12, size=32, corrupt=2)
    spec = make_spec(root, data, FAST_JOB, offline_base)
    backend = DockerBackend()
    backend.prepare(spec)
    run = backend.submit(spec)

    follower = backend.log_lines(run, cursor=0)
    before = [next(follower) for _ in range(3)]
    follower.close()  # the client stops mid-stream (what Ctrl-C does) ...
    after = list(DockerBackend().log_lines(run, cursor=before[-1].cursor))  # ... and a new one re-attaches
    return spec, run, before, after, backend.status(run)


def test_job_in_container_produces_valid_onnx_model(finished_run):
    import onnxruntime

    spec, run, before, after, status = finished_run
    assert status == COMPLETED
    assert [e["status"] for e in events(after) if e["type"] == "run_end"] == ["completed"]
    model = spec.output_dir / "model.onnx"
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["orchestrate.labels"]) == ["blue", "green", "red"]
    assert json.loads(metadata["orchestrate.preprocess"])
    assert json.loads((spec.output_dir / "labels.json").read_text()) == ["blue", "green", "red"]
    assert model.stat().st_uid == os.getuid()  # written through the bind mount as the invoking user


def test_corrupt_images_are_skipped_not_fatal(finished_run):
    spec, run, before, after, status = finished_run
    assert status == COMPLETED
    skipped = json.loads((spec.output_dir / "metrics.json").read_text())["skipped"]
    assert len(skipped) == 2 and all("corrupt" in item["path"] for item in skipped)
    assert [e["count"] for e in events(before + after) if e["type"] == "skipped"] == [2]


def test_reattach_from_cursor_shows_every_line_exactly_once(finished_run):
    spec, run, before, after, status = finished_run
    persisted = (spec.log_path).read_text().splitlines()
    assert [line.text for line in before + after] == persisted
    assert [line.cursor for line in before + after] == list(range(1, len(persisted) + 1))
    assert sum(1 for e in events(before + after) if e["type"] == "run_start") == 1


def test_container_removed_after_completion_and_log_replayable(finished_run, docker_client):
    spec, run, before, after, status = finished_run
    assert containers_of(docker_client, spec.run_id) == []
    exit_record = json.loads((spec.run_dir / "container.json").read_text())
    assert exit_record["exit_code"] == 0 and exit_record["status"] == COMPLETED
    replay = list(DockerBackend().log_lines(run, cursor=0, follow=True))  # from runs/<id>/logs/train.log
    assert [line.text for line in replay] == [line.text for line in before + after]


def test_cancel_stops_an_isolated_running_container(tmp_path, docker_client, offline_base, training_image):
    data = make_dataset(tmp_path / "data", per_class=12, size=32)
    long_job = ["--epochs", "500", "--patience", "500", "--image-size", "64", "--arch", "resnet18",
                "--weights", "none", "--mode", "full"]
    spec = make_spec(tmp_path, data, long_job, offline_base)
    backend = DockerBackend()
    backend.prepare(spec)
    run = backend.submit(spec)
    for line in backend.log_lines(run):
        event = parse_line(line.text)
        if event and event["type"] == "epoch_end":
            break
    assert backend.status(run) == RUNNING
    assert backend.exit_code(run) is None  # not known while it runs

    container = docker_client.containers.get(run.remote_id)
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    assert container.attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"  # outputs not root-owned
    assert {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}["/data"] is False
    network = container.exec_run(["python3", "-c", "import socket; socket.create_connection(('1.1.1.1', 53), 2)"])
    assert network.exit_code != 0 and b"unreachable" in network.output
    write = container.exec_run(["touch", "/data/probe"])
    assert write.exit_code != 0 and b"Read-only file system" in write.output
    host = container.attrs["HostConfig"]  # submit's container has the settings the hardening probe saw
    assert (host["ReadonlyRootfs"], host["CapDrop"], host["SecurityOpt"], host["PidsLimit"]) == \
        (True, ["ALL"], ["no-new-privileges"], docker_backend.PIDS_LIMIT)
    assert {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}["/cache"] is True
    assert container.attrs["Config"]["Cmd"][-2:] == ["--cache-dir", "/cache"]

    started = time.monotonic()
    backend.cancel(run)
    assert time.monotonic() - started < 15
    assert backend.status(run) == CANCELED
    assert containers_of(docker_client, spec.run_id) == []
    assert json.loads((spec.run_dir / "container.json").read_text())["exit_code"] in (137, 143)
    assert backend.exit_code(run) in (137, 143)
    assert RunFolder(spec.run_dir).cancel_marker.exists()  # the same marker name as the local backend's


HARDENING_PROBE = """
import errno, json, os

def write(path):
    try:
        with open(path, "w") as f:
            f.write("probe")
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

status = dict(line.split(":", 1) for line in open("/proc/self/status"))
pids = [p for p in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max") if os.path.exists(p)]
print(json.dumps({
    "root": write("/probe"), "code": write("/code/probe"), "tmp": write("/tmp/probe"),
    "cache": write("/cache/probe"), "no_new_privs": status["NoNewPrivs"].strip(),
    "cap_eff": int(status["CapEff"], 16), "pids_max": open(pids[0]).read().strip(),
    "interfaces": sorted(os.listdir("/sys/class/net"))}))
"""


def run_probe(docker_client, image, spec, probe):
    """Run `probe` (python code) in a container with the exact settings submit gives the job's container."""
    command, settings = docker_backend.container_settings(spec, docker_settings(spec.backend_options))
    assert command[:3] == ["python3", "-u", "/code/launch.py"]  # what submit would run instead of the probe
    output = docker_client.containers.run(image, ["python3", "-c", probe], remove=True, **settings)
    return json.loads(output)


def test_the_job_container_is_hardened(tmp_path, docker_client, offline_base, training_image):
    spec = make_spec(tmp_path, tmp_path, FAST_JOB, offline_base)
    seen = run_probe(docker_client, training_image, spec, HARDENING_PROBE)
    assert seen["root"] == "EROFS"  # read-only root filesystem ...
    assert seen["code"] == "EROFS"  # ... and read-only code mount
    assert seen["tmp"] == "ok"  # a scratch /tmp (HOME and TORCH_HOME)
    assert seen["cache"] == "ok"  # the decoded-image cache volume
    assert seen["no_new_privs"] == "1"
    assert seen["cap_eff"] == 0  # every capability dropped
    assert seen["pids_max"] == str(docker_backend.PIDS_LIMIT)
    assert seen["interfaces"] == ["lo"]  # network none
    probe = image_cache_dir() / "probe"  # written through the mount, on the host, as the invoking user
    assert probe.read_text() == "probe" and probe.stat().st_uid == os.getuid()


def test_the_image_cache_is_the_users_cache_folder_mounted_at_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    spec = make_spec(tmp_path, tmp_path, FAST_JOB, "any")
    command, settings = docker_backend.container_settings(spec, docker_settings(spec.backend_options))
    assert command[-2:] == ["--cache-dir", "/cache"]
    host = tmp_path / "xdg" / "orchestrate" / "images"
    assert host.is_dir()  # made by the client as the user, not by docker as root
    assert settings["volumes"][str(host)] == {"bind": "/cache", "mode": "rw"}
    assert settings["read_only"] is True


def test_a_cache_dir_in_the_train_args_is_mounted_instead(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    spec = make_spec(tmp_path, tmp_path, ["--cache-dir", str(tmp_path / "mine"), *FAST_JOB], "any")
    command, settings = docker_backend.container_settings(spec, docker_settings(spec.backend_options))
    assert command.count("--cache-dir") == 1 and command[command.index("--cache-dir") + 1] == "/cache"
    assert settings["volumes"][str(tmp_path / "mine")] == {"bind": "/cache", "mode": "rw"}
    assert not (tmp_path / "xdg").exists()

    (tmp_path / "file").write_text("")
    spec = make_spec(tmp_path, tmp_path, ["--cache-dir", str(tmp_path / "file" / "cache")], "any")
    with pytest.raises(UsageError, match=r"^cannot create the image cache folder .*/file/cache: Not a directory$"):
        docker_backend.container_settings(spec, docker_settings(spec.backend_options))


@pytest.mark.parametrize("cache", ["data", "parent", "outputs"])
def test_a_cache_dir_overlapping_another_mount_is_refused_in_one_line(tmp_path, cache):
    """docker keys binds by host path: a --cache-dir equal to the data folder replaced the
    read-only /data by a writable /cache, and one holding the data folder made the data writable."""
    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    spec = make_spec(tmp_path, data, [], "any")
    host = {"data": data, "parent": tmp_path / "work", "outputs": spec.output_dir}[cache]
    spec.train_args = ["--cache-dir", str(host), *FAST_JOB]
    with pytest.raises(UsageError) as refused:
        docker_backend.container_settings(spec, docker_settings(spec.backend_options))
    assert "\n" not in str(refused.value) and "give separate folders" in str(refused.value)
    assert str(host) in str(refused.value)


def test_a_runs_folder_inside_the_data_folder_is_still_mounted(tmp_path):
    """A writable folder inside the read-only data folder gives the job nothing more: allowed."""
    spec = make_spec(tmp_path, tmp_path, FAST_JOB, "any")  # runs/ inside the data folder
    command, settings = docker_backend.container_settings(spec, docker_settings(spec.backend_options))
    assert settings["volumes"][str(tmp_path.resolve())] == {"bind": "/data", "mode": "ro"}
    assert settings["volumes"][str(spec.output_dir.resolve())] == {"bind": "/outputs", "mode": "rw"}


def test_docker_train_with_the_data_folder_as_cache_dir_is_exit_2(tmp_path, cli):
    data = make_dataset(tmp_path / "data", per_class=4)
    result = cli("train", data, "--backend", "docker", "--cache-dir", data, "--runs-dir", tmp_path / "runs",
                 "--weights", "none", "--epochs", "1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "give separate folders" in result.stderr, result.stderr


@pytest.mark.parametrize("cpus, threads", [(None, None), (0.5, "1"), (1, "1"), (2.9, "2"), (16, "16")])
def test_thread_counts_follow_cpus(tmp_path, cpus, threads):
    spec = make_spec(tmp_path, tmp_path, FAST_JOB, "any")
    spec.backend_options["cpus"] = cpus
    command, settings = docker_backend.container_settings(spec, docker_settings(spec.backend_options))
    environment = settings["environment"]
    assert environment.get("OMP_NUM_THREADS") == threads and environment.get("MKL_NUM_THREADS") == threads
    assert settings.get("nano_cpus") == (int(cpus * 1e9) if cpus else None)


@pytest.mark.parametrize("cpus", [1, 2])
def test_torch_in_the_container_uses_as_many_threads_as_cpus(tmp_path, docker_client, offline_base,
                                                            training_image, cpus):
    """Both counts: Debian's torch here defaults to 1 thread on this 2-core host, so cpus=2 shows the effect."""
    if cpus > (os.cpu_count() or 1):
        pytest.skip(f"the engine refuses --cpus {cpus} on a host with fewer CPUs")
    spec = make_spec(tmp_path, tmp_path, FAST_JOB, offline_base)
    spec.backend_options["cpus"] = cpus
    seen = run_probe(docker_client, training_image, spec,
                     "import json, torch; print(json.dumps({'threads': torch.get_num_threads()}))")
    assert seen["threads"] == cpus


def test_reap_removes_exited_containers_of_detached_clients(tmp_path, docker_client, offline_base,
                                                            training_image):
    spec, run = submit_and_wait(tmp_path, docker_client, offline_base, ["--help"])
    DockerBackend().reap()
    assert containers_of(docker_client, spec.run_id) == []
    assert "usage" in spec.log_path.read_text()


def test_reap_never_recreates_a_deleted_run_folder(tmp_path, docker_client, offline_base, training_image):
    spec, run = submit_and_wait(tmp_path, docker_client, offline_base, ["--help"])
    shutil.rmtree(spec.run_dir)  # the user threw the run away while its container had exited
    DockerBackend().reap()
    assert not spec.run_dir.exists()
    assert containers_of(docker_client, spec.run_id) == []


def test_reap_skips_a_run_folder_it_cannot_write(tmp_path, docker_client, offline_base, training_image):
    spec, run = submit_and_wait(tmp_path, docker_client, offline_base, ["--help"])
    shutil.rmtree(spec.log_path.parent)
    spec.log_path.parent.write_text("")  # logs/ is a file: the log cannot be saved (chmod means nothing to root)
    DockerBackend().reap()  # what every submit does: someone else's run must not fail it
    assert [c.id for c in containers_of(docker_client, spec.run_id)] == [run.remote_id]  # its log is kept
    with pytest.raises(UsageError, match=r"^cannot save the finished run into .*: (File exists|Not a directory)$"):
        DockerBackend().status(run)
    spec.log_path.parent.unlink()
    assert DockerBackend().status(run) == COMPLETED
    assert "usage" in spec.log_path.read_text()
    assert containers_of(docker_client, spec.run_id) == []


def test_a_fresh_created_container_is_left_to_its_client_an_old_one_is_reaped(
        tmp_path, docker_client, offline_base, monkeypatch):
    run_dir = tmp_path / "runs" / "orphan"
    run_dir.mkdir(parents=True)
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    docker_client.containers.create(offline_base, ["true"], labels={RUN_LABEL: run_id, RUN_DIR_LABEL: str(run_dir)})
    DockerBackend().reap()  # a client may be between create and start right now
    assert [c.status for c in containers_of(docker_client, run_id)] == ["created"]
    monkeypatch.setattr(docker_backend, "ORPHAN_AGE_SECONDS", -1)  # as if a minute had passed
    DockerBackend().reap()
    assert containers_of(docker_client, run_id) == []
    record = json.loads((run_dir / "container.json").read_text())
    assert record["status"] == FAILED and record["exit_code"] is None  # it never ran, so it did not complete

    canceled = RunRef(run_id=f"{run_id}-2", backend="docker", run_dir=tmp_path / "runs" / "queued")
    canceled.run_dir.mkdir()
    canceled.remote_id = docker_client.containers.create(
        offline_base, ["true"], labels={RUN_LABEL: canceled.run_id, RUN_DIR_LABEL: str(canceled.run_dir)}).id
    DockerBackend().cancel(canceled)  # canceled before it ever started
    assert DockerBackend().status(canceled) == CANCELED
    assert containers_of(docker_client, canceled.run_id) == []


def test_finalizing_a_container_another_client_just_removed_is_not_an_error(tmp_path, docker_client, offline_base,
                                                                              training_image):
    spec, run = submit_and_wait(tmp_path, docker_client, offline_base, ["--help"])
    stale = docker_client.containers.get(run.remote_id)  # what reap or status holds ...
    assert DockerBackend().status(run) == COMPLETED  # ... when a second client finalizes and removes it
    assert docker_backend._finalize(spec.run_dir, stale)["status"] == COMPLETED


@pytest.mark.parametrize("problem", ["mount", "device request"])
def test_a_start_the_engine_refuses_leaves_no_container(tmp_path, docker_client, offline_base, training_image,
                                                          monkeypatch, problem):
    data = tmp_path / "data"
    if problem == "mount":
        data.write_text("")
        data = data / "images"  # under a regular file: the engine cannot mount it
    else:
        if docker_client.info().get("Runtimes", {}).get("nvidia"):
            pytest.skip("this engine can satisfy a GPU request")
        monkeypatch.setattr(docker_backend, "gpu_runtime", lambda client: True)  # the engine then refuses it
    spec = make_spec(tmp_path, data, ["--help"], offline_base)
    if problem == "device request":
        spec.backend_options["gpus"] = "all"
    with pytest.raises(ServiceError, match=r"^docker could not start the job: [^\n]+$"):
        DockerBackend().submit(spec)
    assert containers_of(docker_client, spec.run_id) == []


def test_exit_code_from_the_container_then_from_container_json(tmp_path, docker_client, offline_base,
                                                               training_image):
    spec, run = submit_and_wait(tmp_path, docker_client, offline_base, ["--no-such-flag"])
    backend = DockerBackend()
    assert backend.exit_code(run) == 2  # read from the exited container ...
    assert containers_of(docker_client, spec.run_id) != []
    assert backend.status(run) == FAILED
    assert containers_of(docker_client, spec.run_id) == []
    assert backend.exit_code(run) == 2  # ... and from container.json once it is gone


def test_cancel_after_the_job_ended_keeps_its_outcome(tmp_path, docker_client, offline_base, training_image):
    spec, run = submit_and_wait(tmp_path, docker_client, offline_base, ["--help"])
    DockerBackend().cancel(run)
    assert DockerBackend().status(run) == COMPLETED
    assert not RunFolder(spec.run_dir).cancel_marker.exists()

    killed = make_spec(tmp_path, tmp_path, ["--epochs", "500"], offline_base)
    run = DockerBackend().submit(killed)
    container = docker_client.containers.get(run.remote_id)
    container.kill()  # dies on its own, as an OOM kill does: 137, with no cancel asked for
    container.wait(timeout=60)
    DockerBackend().cancel(run)
    assert DockerBackend().status(run) == FAILED
    assert DockerBackend().exit_code(run) == 137


def test_failed_build_names_the_failing_step(tmp_path, docker_client, offline_base):
    (tmp_path / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo about to fail && exit 3\n")
    with pytest.raises(UsageError, match=r"Step 3/\d+ : RUN echo about to fail.*: 3\nlast output:\nabout to fail$"):
        ensure_training_image(docker_client, offline_base, on_line=lambda line: None, context=tmp_path)


def test_unpullable_base_suggests_the_offline_base(tmp_path, docker_client, offline_base):
    spec = make_spec(tmp_path, tmp_path, [], "registry.invalid/pytorch:none")
    with pytest.raises(UsageError, match="cannot pull base image .*--base-image orchestrate/base:offline"):
        DockerBackend().prepare(spec)


def test_gpus_without_gpu_runtime_is_a_user_error(tmp_path, docker_client, offline_base):
    if DockerBackend().client.info().get("Runtimes", {}).get("nvidia"):
        pytest.skip("this engine has a GPU runtime")
    spec = make_spec(tmp_path, tmp_path, [], offline_base)
    spec.backend_options["gpus"] = "all"
    with pytest.raises(UsageError, match="no GPU runtime"):
        DockerBackend().prepare(spec)


@pytest.mark.parametrize("options, message", [
    ({"gpus": "two"}, "--gpus"), ({"cpus": "-1"}, "--cpus"), ({"cpus": "x"}, "--cpus"),
    ({"memory": "lots"}, "--memory"),
])
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(UsageError, match=message):
        docker_settings(options)


def test_image_tag_follows_context_content_and_base(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    first = image_tag("base:1", context=tmp_path)
    assert image_tag("base:1", context=tmp_path) == first
    assert image_tag("base:2", context=tmp_path) != first
    (tmp_path / "requirements.txt").write_text("onnx\n")
    assert image_tag("base:1", context=tmp_path) != first


def test_missing_engine_is_explained_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    started = time.monotonic()
    assert engine_available() is False
    assert time.monotonic() - started < 1
    with pytest.raises(ServiceError, match="no Docker engine is running .*start it"):
        DockerBackend().prepare(make_spec(tmp_path, tmp_path, [], "any"))


def test_socket_permission_problem_is_explained():
    error = PermissionError(13, "Permission denied")
    assert "docker group" in explain_engine_error(error)


@pytest.mark.parametrize("ci, outcome", [("", "1 skipped"), ("1", "1 error")])
def test_missing_engine_skips_locally_and_fails_in_ci(tmp_path, ci, outcome):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/docker.sock", "CI": ci}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"{__file__}::test_failed_build_names_the_failing_step"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert outcome in result.stdout, result.stdout


def test_offline_builder_says_what_it_needs(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setenv("PATH", "/nonexistent")
        with pytest.raises(UsageError, match="needs debootstrap: apt-get install debootstrap"):
            build_offline_base(client=None, mirror=ANY_MIRROR)
    if shutil.which("debootstrap"):
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        with pytest.raises(UsageError, match="needs root"):
            build_offline_base(client=None, mirror=ANY_MIRROR)


ONE_LINE_SOURCES = """\
# deb http://commented.invalid/debian bookworm main
deb-src http://source-only.invalid/debian bookworm main
deb http://vendor.invalid/apt nodistro main
deb [arch=amd64 signed-by=/usr/share/keyrings/vendor.gpg] http://vendor.invalid/apt cloud-sdk-bookworm main
deb cdrom:[Debian GNU/Linux 12]/ bookworm main
deb http://security.invalid/debian-security bookworm-security main
deb http://contrib-only.invalid/debian bookworm contrib
deb [ arch=amd64 ] http://updates.invalid/debian/ bookworm-updates main
deb [ arch=amd64 ] http://archive-one.invalid/debian/ bookworm main contrib  # the one
"""

DEB822_SOURCES = """\
Types: deb deb-src
URIs: http://updates.invalid/debian
Suites: bookworm-updates
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD3K87ZM18gzyQZJD+w
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://disabled.invalid/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
# http://snapshot.invalid/archive/debian/20250520T000000Z
URIs: https://archive-two.invalid/debian
Suites: trixie bookworm
Components: main contrib
"""


def apt_dir(root, files):
    """An /etc/apt-like folder holding `files` ({relative path: text})."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_mirror_comes_from_one_line_apt_sources(tmp_path):
    sources = apt_dir(tmp_path, {"sources.list": ONE_LINE_SOURCES,
                                 "sources.list.d/later.list": "deb http://later.invalid/debian bookworm main\n"})
    assert host_debian_mirror(sources) == "http://archive-one.invalid/debian"  # plain suite over -updates


def test_the_mirror_comes_from_deb822_apt_sources(tmp_path):
    sources = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822_SOURCES,
                                 "sources.list.d/a.sources.disabled": DEB822_SOURCES.replace("two", "off")})
    assert host_debian_mirror(sources) == "https://archive-two.invalid/debian"


def test_an_updates_entry_serves_when_no_plain_one_exists_security_never(tmp_path):
    updates_only = DEB822_SOURCES.split("\n\n")[0]
    assert host_debian_mirror(apt_dir(tmp_path / "a", {"sources.list.d/d.sources": updates_only})) == \
        "http://updates.invalid/debian"
    security_only = "deb http://security.invalid/debian-security bookworm-security main\n"
    assert host_debian_mirror(apt_dir(tmp_path / "b", {"sources.list": security_only})) is None


def test_no_mirror_anywhere_asks_for_one(tmp_path):
    sources = apt_dir(tmp_path, {"sources.list": "deb http://vendor.invalid/apt nodistro main\n"})
    with pytest.raises(UsageError, match=r"^no Debian archive found in the apt sources under .*: "
                                        r"pass --mirror URL[^\n]*$"):
        build_offline_base(client=None, apt_dir=sources)


def test_cli_ctrl_c_detaches_and_cancel_removes_the_container(tmp_path, docker_client, offline_base,
                                                               training_image):
    from conftest import ORCHESTRATE, default_sigint, run_cli

    data = make_dataset(tmp_path / "data", per_class=12, size=32)
    train_err = tmp_path / "train.err"
    with open(train_err, "wb") as err_file:
        train = subprocess.Popen(
            [str(ORCHESTRATE), "train", data, "--backend", "docker", "--base-image", offline_base, "--gpus", "none",
             "--runs-dir", tmp_path / "runs", "--arch", "resnet18", "--weights", "none", "--image-size", "64",
             "--mode", "full", "--epochs", "500", "--patience", "500"],
            stdout=subprocess.DEVNULL, stderr=err_file, preexec_fn=default_sigint)
        try:
            wait_for(lambda: list((tmp_path / "runs").glob("*/spec.json")), "the run folder")
            (run_dir,) = (tmp_path / "runs").iterdir()
            wait_for(lambda: containers_of(docker_client, run_dir.name), "the container")
            # the client streams the job's log: the Ctrl-C comes once it has shown an epoch
            wait_for(lambda: "epoch 1/500" in train_err.read_text() or train.poll() is not None, "the first epoch")
            assert train.poll() is None, train_err.read_text()
            train.send_signal(signal.SIGINT)
            train.wait(timeout=30)
        finally:
            train.kill()
    err = train_err.read_text()
    assert train.returncode == 130 and "Re-attach with: orchestrate logs" in err, err
    assert [c.status for c in containers_of(docker_client, run_dir.name)] == ["running"]

    assert run_cli("cancel", run_dir.name).returncode == 0
    assert containers_of(docker_client, run_dir.name) == []
    assert run_cli("status", run_dir.name).stdout.strip() == CANCELED
    logs = run_cli("logs", run_dir.name)  # re-rendered from runs/<id>/logs/train.log
    assert logs.returncode == 1 and "canceled" in logs.stderr


def test_doctor_reports_engine_image_and_gpu_runtime(tmp_path, docker_client, offline_base, training_image):
    from conftest import run_cli

    result = run_cli("doctor", "--json", "--base-image", offline_base)
    assert result.returncode == 0, result.stderr
    checks = {row["check"]: row for row in json.loads(result.stdout)}
    assert checks["engine"]["result"] == "ok"
    assert checks["training image"]["result"] == "ok" and training_image in checks["training image"]["detail"]
    assert checks["gpu runtime"]["result"] in ("ok", "warn")

    missing = run_cli("doctor", env={"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"})
    assert missing.returncode == 2 and "no Docker engine is running" in missing.stdout


def test_a_search_runs_its_trials_in_one_container(tmp_path, docker_client, offline_base, training_image):
    """`train --search --backend docker`: launch.py starts search.py, whose trials write their folders
    and search.json under the run's outputs, the best trial's model as the run's."""
    data = make_dataset(tmp_path / "data", per_class=12, size=32)
    spec = make_spec(tmp_path, data, FAST_JOB[:-2], offline_base)  # the trials choose the mode
    spec.trials = [{"mode": "linear", "lr": 0.01}, {"mode": "head", "lr": 0.001}]
    backend = DockerBackend()
    backend.prepare(spec)
    run = backend.submit(spec)
    seen = events(backend.log_lines(run, cursor=0))
    assert backend.status(run) == "completed", seen[-1]
    assert [e["trial"] for e in seen if e["type"] == "trial_end"] == ["t01", "t02"]
    found = json.loads((spec.output_dir / "search.json").read_text())
    assert [t["status"] for t in found["trials"]] == ["completed", "completed"]
    best = spec.output_dir / "trials" / found["best"] / "outputs" / "model.onnx"
    assert (spec.output_dir / "model.onnx").read_bytes() == best.read_bytes()
