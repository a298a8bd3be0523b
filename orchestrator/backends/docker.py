"""The docker backend: the Azure ML job, run in a local container (SageMaker local mode, minus compose).

Same image definition (infra/docker/), same script (remote_scripts/ mounted read-only at /code, as
Azure ML mounts a code snapshot), same inputs and outputs: the dataset at /data (read-only), the
outputs at /outputs and checkpoints at /checkpoints, both bind-mounted from runs/<id>/ so the files
land there directly, owned by the invoking user; the decoded-image cache at /cache, a host folder
kept across runs. No network: the job must not depend on it. Hardened besides: read-only root with
a scratch /tmp, no capabilities, no-new-privileges, a pids limit (see container_settings).

Lifecycle and who cleans up: the container is found again by its label (orchestrate.run_id). When
it has exited, the first status()/download()/cancel() that sees it "finalizes" the run -- writes
its log to runs/<id>/logs/train.log and its exit to runs/<id>/container.json, then removes it -- so
a client that detached (Ctrl-C) leaves no orphan: the next `orchestrate status/logs RUN`, or the
next submit (which reaps every exited orchestrate container), removes it, and `orchestrate logs RUN`
re-renders the run from the persisted log after the container is gone. A run folder the user deleted
is never recreated: its container is just removed. A container left `created` by a client that died
between create and start is finalized (as failed) by the reap once it is ORPHAN_AGE_SECONDS old.
A resumed run (`orchestrate train --resume RUN`) gets a new container of the same name on the same
folders, after its earlier one is finalized; its log keeps the earlier attempts' lines first.
"""
import dataclasses
import itertools
import json
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from remote_scripts.atomic import write_atomically

from ..errors import OrchestrateError, ServiceError, UsageError
from ..events import build_output
from ..images import DEFAULT_BASE_IMAGE, ensure_training_image
from ..paths import image_cache_dir, remote_scripts_dir
from ..run_folder import RunFolder
from ..weights import hub_dir
from .base import (CANCELED, COMPLETED, FAILED, LAUNCH_OPTIONS, QUEUED, RUNNING, Backend, BackendOption, LogLine,
                   RunRef, launch_command)

RUN_LABEL = "orchestrate.run_id"
RUN_DIR_LABEL = "orchestrate.run_dir"
# logs/ of a resumed run whose new container is not finalized yet: the earlier attempts' log lines
EARLIER_LOG = "earlier_attempts.log"
ORPHAN_AGE_SECONDS = 60             # a `created` container this old was never started: its client died
STOP_GRACE_SECONDS = 10             # SIGTERM, then SIGKILL: train.py checkpoints on SIGTERM
SHM_SIZE = "2g"                     # DataLoader workers share batches through /dev/shm
TORCH_CACHE = "/torch-cache"        # the host's torch hub cache, so --weights imagenet works offline
CACHE_MOUNT = "/cache"              # the decoded-image cache, kept on the host across runs
# Processes AND threads count against it: a fork bomb or a runaway spawn loop must not exhaust the
# host's pid table, yet 8 ranks x (torch, decode and loader threads) on a 128-core machine stay
# near 2,000, so 4096 never stops a real job.
PIDS_LIMIT = 4096
# The only writable place besides the mounts (HOME and TORCH_HOME point here). Not noexec: torch
# 2.x compiles kernels into /tmp and loads them; mode 1777 because the job runs as the user's uid.
TMP_OPTIONS = "rw,nosuid,nodev,mode=1777"


def connect(timeout=60):
    """A docker client that answered a ping, or a UsageError that says what is missing and how to fix it."""
    try:
        import docker
    except ImportError:
        raise UsageError("the docker backend needs the docker SDK for Python: pip install 'docker>=7'")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # the SDK raises DockerException, requests and OS errors alike
        raise ServiceError(explain_engine_error(exc))


def explain_engine_error(exc):
    """A one-line reason why the engine did not answer, with the fix."""
    text = str(exc)
    socket = _socket_path()
    if "Permission denied" in text or isinstance(exc, PermissionError):
        return (f"no permission on the Docker socket {socket}: add your user to the docker group "
                "(sudo usermod -aG docker $USER, then log in again) or run as root")
    if socket and not os.path.exists(socket):
        if shutil.which("dockerd") or shutil.which("docker"):
            return (f"no Docker engine is running (no socket at {socket}): start it "
                    "(sudo systemctl start docker, or scripts/setup_docker.sh)")
        return ("Docker is not installed: install Docker Engine (apt-get install docker.io) or run "
                "scripts/setup_docker.sh; or use --backend local")
    return f"the Docker engine did not answer ({text.splitlines()[0] if text else type(exc).__name__})"


def _socket_path():
    """The unix socket the SDK talks to (DOCKER_HOST or the default), or None for a TCP engine."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return host[len("unix://"):] if host.startswith("unix://") else None


def engine_available():
    """Whether a Docker engine answers here, within a second (for choosing the default backend)."""
    try:
        connect(timeout=1)
        return True
    except OrchestrateError:
        return False


def gpu_runtime(client):
    """Whether the engine can pass GPUs through (the NVIDIA runtime or its prestart hook is installed)."""
    return "nvidia" in client.info().get("Runtimes", {}) or bool(shutil.which("nvidia-container-runtime-hook"))


def docker_settings(backend_options):
    """The docker settings of a JobSpec's backend_options: checked by DockerBackend.options, with
    their defaults, and gpus "auto" (all GPUs where the engine has a GPU runtime) when not given."""
    settings = DockerBackend.settings(backend_options)
    settings["gpus"] = str(settings["gpus"] or "auto").lower()
    return settings


def device_requests(client, gpus):
    """The DeviceRequests for --gpus: auto passes all GPUs when the engine has a GPU runtime."""
    import docker.types

    if gpus == "none" or (gpus == "auto" and not gpu_runtime(client)):
        return []
    if gpus != "auto" and not gpu_runtime(client):
        raise UsageError(f"--gpus {gpus}: the Docker engine has no GPU runtime (install the NVIDIA "
                        "Container Toolkit and restart Docker), or use --gpus none")
    count = int(gpus) if gpus.isdigit() else -1
    return [docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])]


class DockerBackend(Backend):
    name = "docker"
    title = "Docker"
    resumable = True
    options = (
        BackendOption("--base-image", "str", DEFAULT_BASE_IMAGE, "base image of the training image"),
        *LAUNCH_OPTIONS,
        BackendOption("--cpus", "float", None, "CPU limit", low=0, low_open=True),
        BackendOption("--memory", "str", None, "memory limit, e.g. 8g", pattern=r"\d+(\.\d+)?[bkmg]?",
                      form="a size like 8g or 512m"),
    )

    def __init__(self, on_event=None, approve=None):
        # on_event: the image build's output (base image, pulls, debootstrap), one build event per line
        super().__init__(on_event, approve)
        self._client = None

    @classmethod
    def auto_choice(cls, options, named=False):
        """"auto" runs the job in a container when a Docker engine answers here (within a second)."""
        return "" if named or engine_available() else None

    @property
    def client(self):
        if self._client is None:
            self._client = connect()
        return self._client

    def prepare(self, spec):
        options = docker_settings(spec.backend_options)
        if not Path(spec.data).is_dir():
            raise UsageError(f"dataset folder not found: {spec.data}")
        container_settings(spec, options)  # its refusals (overlapping mounts) before any image work
        device_requests(self.client, options["gpus"])
        ensure_training_image(self.client, options["base_image"], lambda line: self.on_event(build_output(line)))

    def submit(self, spec):
        import docker.errors

        from ..images import image_tag

        self.reap()
        options = docker_settings(spec.backend_options)
        command, settings = container_settings(spec, options)
        # create and start separately (not containers.run): a start that fails (a mount or a device
        # request the engine cannot satisfy) leaves a `created` container, which must go, not linger.
        try:
            container = self.client.containers.create(
                image_tag(options["base_image"]), command,
                device_requests=device_requests(self.client, options["gpus"]), **settings)
        except docker.errors.APIError as exc:
            raise ServiceError(f"docker could not create the job's container: {_reason(exc)}")
        try:
            container.start()
        except docker.errors.APIError as exc:
            _remove(container)
            raise ServiceError(f"docker could not start the job: {_reason(exc)}")
        return RunRef(run_id=spec.run_id, backend=self.name, run_dir=Path(spec.run_dir).resolve(),
                      remote_id=container.id)

    def log_lines(self, run, cursor=0, follow=True):
        """The live container's log, or the persisted one once finalized, as numbered lines.

        A resumed run's earlier attempts (logs/EARLIER_LOG) come before its live container's lines,
        so one line cursor spans every attempt. That file is read first: it is deleted only after
        the container it precedes is gone, so a live container is never seen without it.
        """
        import docker.errors

        folder = RunFolder(run.run_dir)
        earlier = _read_bytes(folder.logs / EARLIER_LOG) or b""
        container = self._container(run)
        try:
            stream = container.logs(stream=True, follow=follow, stdout=True, stderr=True) if container else None
        except docker.errors.NotFound:  # finalized between the lookup and this call
            stream = None
        if stream is None:
            persisted = _read_bytes(folder.log_path)
            yield from _numbered_lines([earlier if persisted is None else persisted], cursor)
            return
        try:
            yield from _numbered_lines(itertools.chain([earlier], stream), cursor)
        finally:
            stream.close()

    def status(self, run):
        record = _read_exit(run.run_dir)
        if record:
            return record["status"]
        container = self._container(run)
        if container is None:  # finalized meanwhile by another client, or removed by hand (docker rm)
            return (_read_exit(run.run_dir) or {"status": FAILED})["status"]
        state = container.attrs["State"]["Status"]
        if state == "created":
            return QUEUED
        if state in ("running", "restarting", "paused"):
            return RUNNING
        return _finalize(Path(run.run_dir), container)["status"]

    def exit_code(self, run):
        """From container.json once finalized, else from the exited container (137 after an OOM kill)."""
        record = _read_exit(run.run_dir)
        if record:
            return record["exit_code"]
        container = self._container(run)
        if container is None or container.attrs["State"]["Status"] not in ("exited", "dead"):
            return None
        return container.attrs["State"]["ExitCode"]

    def cancel(self, run):
        """Stop a live container, marking the run canceled first; a run that already ended keeps its outcome.

        The marker is written only while the container still runs, so a job that had completed (0) or
        died on its own (an OOM kill is 137 too) is not recorded as canceled by a late cancel.
        """
        if not Path(run.run_dir).is_dir():
            raise UsageError(f"the folder of run {run.run_id} is missing: {run.run_dir}")
        if _read_exit(run.run_dir):
            return
        container = self._container(run)
        if container is None:
            return
        if container.attrs["State"]["Status"] in ("created", "running", "restarting", "paused"):
            RunFolder(run.run_dir).cancel_marker.touch()
            container.stop(timeout=STOP_GRACE_SECONDS)
            container.reload()
        _finalize(Path(run.run_dir), container)

    def resume(self, spec, run):
        """A new container of the same name on the same folders; the earlier one is finalized first.

        Finalizing persists the earlier attempt's log and frees the name orchestrate-<run_id>. That
        log (every earlier attempt) becomes logs/EARLIER_LOG, which log_lines and the next finalize
        put before the new container's lines, closed with a newline so that half a line written by
        a killed job does not swallow the new attempt's first one. The earlier attempt's exit record
        and cancel marker go, so the new attempt is not taken for ended.
        """
        run_dir = Path(run.run_dir)
        earlier_container = self._container(dataclasses.replace(run, remote_id=""))  # by name
        if earlier_container is not None:
            _finalize(run_dir, earlier_container)
        folder = RunFolder(run_dir)
        log, earlier = folder.log_path, folder.logs / EARLIER_LOG
        try:
            if log.exists():
                os.replace(log, earlier)
            if earlier.exists() and earlier.stat().st_size:
                with open(earlier, "rb+") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
            for marker in (RunFolder(run_dir).container_state_path, RunFolder(run_dir).cancel_marker):
                marker.unlink(missing_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot prepare run folder {run_dir} for the resumed job: {exc.strerror or exc}")
        return self.submit(spec)

    def download(self, run, dest):
        self.status(run)  # finalizes (persists log and exit, removes the container) once terminal
        source = RunFolder(run.run_dir).outputs
        if source.is_dir() and Path(dest).resolve() != source.resolve():
            shutil.copytree(source, dest, dirs_exist_ok=True)

    def reap(self):
        """Finalize every exited orchestrate container, and every stale `created` one: no orphans.

        It runs inside every submit, on other runs' containers, so it must never fail that submit:
        a run whose folder cannot be written keeps its container (and log) for its owner to finalize,
        and containers another client removes meanwhile are skipped.
        """
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        for container in self.client.containers.list(
                all=True, ignore_removed=True, filters={"label": RUN_LABEL, "status": ["exited", "dead", "created"]}):
            created = datetime.strptime(container.attrs["Created"][:19], "%Y-%m-%dT%H:%M:%S")
            if container.attrs["State"]["Status"] == "created" and (now - created).total_seconds() < ORPHAN_AGE_SECONDS:
                continue  # another client may be about to start it
            try:
                _finalize(Path(container.labels[RUN_DIR_LABEL]), container)
            except OrchestrateError:
                continue

    def _container(self, run):
        """The run's container, or None once it has been removed."""
        import docker.errors

        try:
            return self.client.containers.get(run.remote_id or f"orchestrate-{run.run_id}")
        except docker.errors.NotFound:
            return None


def container_settings(spec, options):
    """(command, keyword arguments of containers.create but the image and GPUs) for the job's container.

    Everything submit gives the engine is decided here, in one place, so the hardening test runs its
    probes under exactly these settings. Creates the host folders it mounts, as the invoking user:
    docker would create missing ones owned by root.
    """
    run_dir = Path(spec.run_dir).resolve()
    folder = RunFolder(run_dir)
    folder.create()
    mounts = [
        Mount(Path(spec.data).resolve(), "/data", "ro", "the data folder"),
        Mount(folder.outputs, "/outputs", "rw", "the run's outputs folder"),
        Mount(folder.checkpoints, "/checkpoints", "rw", "the run's checkpoints folder"),
        Mount(remote_scripts_dir().resolve(), "/code", "ro", "the job's code"),
    ]
    train_args = _mount_image_cache(_mount_weights(list(spec.train_args), mounts), mounts)
    environment = {"HOME": "/tmp", "TORCH_HOME": "/tmp/torch"}
    hub = hub_dir()  # where the client fetched --weights imagenet (orchestrator.weights)
    if (hub / "checkpoints").is_dir():
        mounts.append(Mount(hub.resolve(), f"{TORCH_CACHE}/hub", "ro", "the torch hub cache"))
        environment["TORCH_HOME"] = TORCH_CACHE
    volumes = _volumes(mounts)
    settings = {}
    if options["cpus"]:
        settings["nano_cpus"] = int(options["cpus"] * 1e9)
        # A CPU quota does not change os.cpu_count() (nor the cores torch and OpenMP detect) inside
        # the container: without a thread count, torch starts a thread per host core and they fight
        # over the quota's share of time, which is slower than fewer threads that each get a core.
        threads = str(max(1, math.floor(options["cpus"])))
        environment.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if options["memory"]:
        settings["mem_limit"] = options["memory"]
    if hasattr(os, "getuid"):
        settings["user"] = f"{os.getuid()}:{os.getgid()}"
    # --gpus is the engine's device request: launch.py counts what the container was given.
    command = launch_command("python3", "/code", ["--data", "/data", "--output", "/outputs",
                                                  "--checkpoint-dir", "/checkpoints", *train_args],
                             nproc=spec.backend_options.get("nproc"), trials=spec.trials)
    return command, dict(
        settings, name=f"orchestrate-{spec.run_id}", labels={RUN_LABEL: spec.run_id, RUN_DIR_LABEL: str(run_dir)},
        init=True, network_mode="none", shm_size=SHM_SIZE, working_dir="/code",
        volumes=volumes, environment=environment,
        # Hardening: the job runs third-party code (torch, pillow decoding untrusted images) next to
        # the user's files, so it gets no more than it needs: no privilege gain through setuid
        # binaries, no capabilities, a bounded number of processes, and nothing writable but its
        # mounts and a scratch /tmp.
        security_opt=["no-new-privileges"], cap_drop=["ALL"], pids_limit=PIDS_LIMIT,
        read_only=True, tmpfs={"/tmp": TMP_OPTIONS})


class Mount(NamedTuple):
    """One host path bound into the job's container; `what` names it in a refusal."""
    host: Path
    bind: str
    mode: str  # "ro" or "rw"
    what: str


def _volumes(mounts):
    """The engine's `volumes` of `mounts`, refusing mounts that overlap.

    docker keys binds by host path, so two mounts of one folder would silently become one (a
    --cache-dir equal to the data folder turned the read-only /data into a writable /cache), and a
    writable mount of a folder that holds another mount's folder makes that one writable too.
    Read-only mounts may nest, and so may a writable folder inside a read-only one (a runs folder
    inside the data folder): neither gives the job more than each mount says.
    """
    for i, one in enumerate(mounts):
        for other in mounts[i + 1:]:
            for outer, inner in ((one, other), (other, one)):
                same = outer.host == inner.host
                if same or (outer.mode == "rw" and inner.host.is_relative_to(outer.host)):
                    relation = "is" if same else "holds"
                    raise UsageError(f"{outer.what} {outer.host} {relation} {inner.what} {inner.host}: the "
                                    f"container would see it through two mounts, writable through one; give "
                                    f"separate folders")
    return {str(mount.host): {"bind": mount.bind, "mode": mount.mode} for mount in mounts}


def _mount_image_cache(train_args, mounts):
    """Mount the decoded-image cache read-write at /cache and point the job's --cache-dir at it.

    The host folder is the user's own --cache-dir when the train arguments carry one, else the
    user's cache folder (paths.image_cache_dir), so a later run, a resume or a local run on the same
    data finds the images already decoded; the container's root stays read-only.
    """
    if "--cache-dir" in train_args[:-1]:
        index = train_args.index("--cache-dir") + 1
        host = Path(train_args[index]).expanduser()
        train_args[index] = CACHE_MOUNT
    else:
        host = image_cache_dir()
        train_args += ["--cache-dir", CACHE_MOUNT]
    try:
        host.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the image cache folder {host}: {exc.strerror or exc}")
    mounts.append(Mount(host.resolve(), CACHE_MOUNT, "rw", "the decoded-image cache (--cache-dir)"))
    return train_args


def _mount_weights(train_args, mounts):
    """Rewrite `--weights PATH` (a host file) to its read-only mount under /weights."""
    for index, arg in enumerate(train_args[:-1]):
        path = Path(train_args[index + 1])
        if arg == "--weights" and path.is_file():
            mounts.append(Mount(path.resolve(), f"/weights/{path.name}", "ro", "the --weights file"))
            train_args[index + 1] = f"/weights/{path.name}"
    return train_args


def _numbered_lines(chunks, cursor):
    """LogLines numbered from 1 out of byte chunks, skipping the first `cursor` lines.

    The cursor is a line count, which is the same whether the lines come from the live
    container log or from the persisted train.log, so a resumed follower never repeats a line.
    """
    buffer, number = b"", 0
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            number += 1
            if number > cursor:
                yield LogLine(text=line.decode("utf-8", "replace").rstrip("\r"), cursor=number)
    if buffer:
        number += 1
        if number > cursor:
            yield LogLine(text=buffer.decode("utf-8", "replace").rstrip("\r"), cursor=number)


def _read_exit(run_dir):
    path = RunFolder(run_dir).container_state_path
    return json.loads(path.read_text()) if path.exists() else None


def _read_bytes(path):
    """The file's content, or None when there is no such file."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def _finalize(run_dir, container):
    """Persist an ended container's log and exit status into its run dir, then remove it; the record.

    Canceled only when a cancel marked the run AND the job died of the stop's signal (143/137)
    without running out of memory: exit 0 stays completed whenever the cancel came. A container
    still `created` never ran: it has no exit code, and is canceled when marked, else failed.
    A deleted run folder is not recreated (the user threw the run away): the container just goes.
    A folder that cannot be written raises UsageError and keeps the container, so the log survives.
    """
    import docker.errors

    state = container.attrs["State"]
    code = None if state["Status"] == "created" else state.get("ExitCode")
    oom_killed = state.get("OOMKilled", False)
    try:
        if not run_dir.is_dir():
            _remove(container)
            return {"status": _outcome(code, oom_killed, canceled=False), "exit_code": code}
        record = {"status": _outcome(code, oom_killed, canceled=RunFolder(run_dir).cancel_marker.exists()),
                  "exit_code": code, "oom_killed": oom_killed, "container_id": container.id,
                  "finished_at": state.get("FinishedAt")}
        # The earlier attempts' lines before the container's log: read first, since a concurrent
        # finalizer deletes that file only after it removed the container (then logs() fails here).
        folder = RunFolder(run_dir)
        earlier = folder.logs / EARLIER_LOG
        earlier_lines = _read_bytes(earlier) or b""
        try:
            log = container.logs(stdout=True, stderr=True)
        except docker.errors.NotFound:  # a concurrent finalizer got there first: its record stands
            return _read_exit(run_dir) or record
        folder.logs.mkdir(exist_ok=True)
        write_atomically(folder.log_path, earlier_lines + log)
        write_atomically(RunFolder(run_dir).container_state_path, json.dumps(record, indent=2))
    except OSError as exc:
        raise UsageError(f"cannot save the finished run into {run_dir}: {exc.strerror or exc}")
    _remove(container)
    earlier.unlink(missing_ok=True)  # train.log holds those lines now
    return record


def _outcome(code, oom_killed, canceled):
    """The run state for an exit code (None: never started), given whether a cancel was requested."""
    if code == 0:
        return COMPLETED
    if canceled and (code is None or (code in (137, 143) and not oom_killed)):
        return CANCELED
    return FAILED


def _remove(container):
    """Force-remove a container; one that is gone or already being removed (a concurrent client) is fine."""
    import docker.errors

    try:
        container.remove(force=True)
    except docker.errors.APIError:
        pass


def _reason(exc):
    """The engine's one-line reason for a failed API call."""
    text = str(exc.explanation or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
