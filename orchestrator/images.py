"""The training image: one Dockerfile (infra/docker/) for the docker backend and for Azure ML.

Why a content-hash tag: the image is rebuilt only when infra/docker/ or the base image changes,
so a second `orchestrate train --backend docker` starts in seconds and two checkouts with the
same Dockerfile share one image. The training code is not in the image (it is mounted at run
time, as Azure ML mounts a code snapshot), so editing train.py never triggers a rebuild.

Why an offline base builder: on hosts that reach no container registry (air-gapped sites, our
CI) nothing can be pulled, but a Debian mirror usually can be reached. debootstrap builds a
bookworm root filesystem with Debian's own torch, which `docker import` turns into a base image.
The mirror is the one the host's own apt already uses (or --mirror): no mirror is written in the
code, so an air-gapped site's internal mirror is picked up with no configuration.

The docker SDK is imported by callers (orchestrator.backends.docker.connect), never here at
module level, so that `orchestrate --help` stays fast.
"""
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections import deque
from pathlib import Path

from .errors import UsageError
from .paths import docker_context_dir

IMAGE_REPOSITORY = "orchestrate/train"
# A public PyTorch CUDA runtime image: what Azure ML GPU nodes and users with a registry run.
DEFAULT_BASE_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
OFFLINE_BASE_TAG = "orchestrate/base:offline"

DEBIAN_SUITE = "bookworm"
# Suites of the Debian archive (codenames and aliases). Why a list: a host's apt sources also name
# other vendors' repositories (their own suite names) and Ubuntu archives (Ubuntu codenames), neither
# of which can bootstrap Debian; any Debian suite's archive carries bookworm as well.
DEBIAN_SUITES = frozenset({"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                           "oldoldstable", "oldstable", "stable", "testing", "unstable"})
APT_DIR = Path("/etc/apt")
# Everything train.py needs, from Debian itself (torch 1.13, torchvision 0.14, onnx 1.12).
OFFLINE_PACKAGES = ("python3", "python3-torch", "python3-torchvision", "python3-pil",
                    "python3-numpy", "python3-onnx", "ca-certificates")
# debootstrap's phase lines ("I: Unpacking the base system...") as opposed to its per-package ones.
DEBOOTSTRAP_PHASE = re.compile(r"packages|base system|Release|component|successfully")
# Applied by `docker import`: a root filesystem tarball carries no image config of its own.
OFFLINE_IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/usr/bin/python3"]',
)


def image_tag(base_image, context=None):
    """`orchestrate/train:<hash>`, the hash covering every file of the build context and the base."""
    context = context or docker_context_dir()
    digest = hashlib.sha256(base_image.encode())
    # bytecode is not part of the definition: pip compiles the installed copy's .py files
    for path in sorted(p for p in Path(context).rglob("*")
                       if p.is_file() and "__pycache__" not in p.relative_to(context).parts):
        digest.update(b"\0" + path.relative_to(context).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return f"{IMAGE_REPOSITORY}:{digest.hexdigest()[:12]}"


def image_exists(client, tag):
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_base_image(client, base_image, on_line):
    """Make `base_image` present locally, pulling it if needed; a clear UsageError if it cannot be."""
    import docker.errors

    if image_exists(client, base_image):
        return
    on_line(f"pulling base image {base_image}")
    try:
        for chunk in client.api.pull(base_image, stream=True, decode=True):
            if "error" in chunk:
                raise docker.errors.APIError(chunk["error"])
            if "id" not in chunk or chunk.get("status") in ("Pull complete", "Already exists"):
                on_line(" ".join(filter(None, (chunk.get("id"), chunk.get("status")))))
    except docker.errors.APIError as exc:
        reason = str(getattr(exc, "explanation", None) or exc).splitlines()[0]
        if image_exists(client, OFFLINE_BASE_TAG):
            hint = f"the offline base exists here: add --base-image {OFFLINE_BASE_TAG}"
        else:
            hint = ("on a host without registry access build an offline base with "
                    f"`orchestrate image build-base --offline` and add --base-image {OFFLINE_BASE_TAG}")
        raise UsageError(f"cannot pull base image {base_image} ({reason}); {hint}")


def ensure_training_image(client, base_image, on_line, context=None):
    """Build the training image for `base_image` unless its content-hash tag exists; return the tag.

    `on_line` receives the build's step lines ("Step 3/7 : RUN ..."), which are its progress.
    A failed build raises UsageError naming the failing step and the last lines it printed.
    """
    context = context or docker_context_dir()
    tag = image_tag(base_image, context)
    if image_exists(client, tag):
        return tag
    ensure_base_image(client, base_image, on_line)
    on_line(f"building {tag} from {context} (base {base_image})")
    step, tail = "", deque(maxlen=15)
    stream = client.api.build(path=str(context), tag=tag, buildargs={"BASE_IMAGE": base_image},
                              rm=True, forcerm=True, pull=False, decode=True,
                              labels={"orchestrate.base_image": base_image})
    for chunk in stream:
        if "error" in chunk:
            output = "\n".join(tail)
            raise UsageError(f"image build failed at {step or 'start'}: {chunk['error'].strip()}"
                            + (f"\nlast output:\n{output}" if output else ""))
        for line in chunk.get("stream", "").splitlines():
            if line.startswith("Step "):
                step = line.strip()
                tail.clear()
                on_line(step)
            elif line.strip() and not line.startswith((" ---> ", "Removing intermediate container")):
                tail.append(line.rstrip())
    return tag


def build_offline_base(client, tag=OFFLINE_BASE_TAG, mirror=None, on_line=print, apt_dir=APT_DIR):
    """Build a Debian bookworm base image with debootstrap and `docker import` it as `tag`.

    `mirror` (a Debian archive URL) defaults to the one the host's apt uses (see host_debian_mirror);
    with neither, a UsageError asks for --mirror. Needs root (debootstrap creates device nodes and
    chroots) and the debootstrap tool; says so, as a UsageError, when either is missing. Takes a few
    minutes (it downloads ~400 MB of .debs).
    """
    mirror = mirror or host_debian_mirror(apt_dir)
    if mirror is None:
        raise UsageError(f"no Debian archive found in the apt sources under {apt_dir}: "
                        "pass --mirror URL (a Debian mirror that serves bookworm)")
    if shutil.which("debootstrap") is None:
        raise UsageError("the offline base builder needs debootstrap: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise UsageError("the offline base builder needs root (debootstrap chroots): run it with sudo")
    workdir = Path(tempfile.mkdtemp(prefix="orchestrate-rootfs-"))
    try:
        rootfs = workdir / "rootfs"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(OFFLINE_PACKAGES)}",
                   DEBIAN_SUITE, str(rootfs), mirror]
        _run_streaming(command, on_line, what="debootstrap")
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftovers).glob("*"):
                if path.is_file():
                    path.unlink()
        on_line(f"importing the root filesystem as {tag}")
        repository, version = split_tag(tag)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."],
                               stdout=subprocess.PIPE)
        try:
            client.api.import_image_from_stream(tar.stdout, repository=repository, tag=version,
                                                changes=list(OFFLINE_IMAGE_CHANGES))
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise UsageError(f"tar of the root filesystem failed (exit {tar.returncode})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return tag


def host_debian_mirror(apt_dir=APT_DIR):
    """The Debian archive this host's apt uses, as an http(s) URL; None when its sources name none.

    Reads `sources.list`, then `sources.list.d/*.list` (one-line format) and `*.sources` (deb822),
    in apt's order, and takes the first URI of a binary (`deb`) entry with the main component for a
    suite of the Debian archive -- a plain suite (bookworm) first, an -updates or -backports entry
    only when no plain one exists (same archive, so its URI serves as well). Security entries never
    count: that archive holds only the security updates, so debootstrap cannot build a system from it.
    """
    apt_dir = Path(apt_dir)
    fallback = None
    for uri, suite in _apt_entries(apt_dir):
        codename, _, flavour = suite.partition("-")  # the old security suite "buster/updates" is no codename
        if codename not in DEBIAN_SUITES or flavour == "security":
            continue
        if not flavour:
            return uri
        fallback = fallback or uri
    return fallback


def _apt_entries(apt_dir):
    """(uri, suite) of every enabled `deb` entry with the main component and an http(s) URI, in apt's order."""
    listing = sorted((apt_dir / "sources.list.d").glob("*"))
    for path in [apt_dir / "sources.list", *listing]:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        stanzas = _deb822_stanzas(text) if path.suffix == ".sources" else _one_line_entries(text)
        for types, uris, suites, components in stanzas:
            if "deb" not in types or "main" not in components:
                continue
            for uri in uris:
                if uri.startswith(("http://", "https://")):
                    yield from ((uri.rstrip("/"), suite) for suite in suites)


def _one_line_entries(text):
    """(types, uris, suites, components) of each `deb [options] uri suite components...` line."""
    for line in text.splitlines():
        match = re.fullmatch(r"(deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)(.*)", line.split("#")[0].strip())
        if match:
            yield [match[1]], [match[2]], [match[3]], match[4].split()


def _deb822_stanzas(text):
    """(types, uris, suites, components) of each enabled stanza of a deb822 `.sources` file."""
    for block in re.split(r"\n\s*\n", text):
        fields, name = {}, None
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and name:  # a continuation line (a multi-line Signed-By key)
                fields[name] += " " + line.strip()
            elif ":" in line:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                fields[name] = value.strip()
        if fields.get("enabled", "yes").lower() != "no":
            yield (fields.get("types", "").split(), fields.get("uris", "").split(),
                   fields.get("suites", "").split(), fields.get("components", "").split())


def split_tag(tag):
    """("orchestrate/base", "offline") for "orchestrate/base:offline"; "latest" when untagged."""
    repository, _, version = tag.rpartition(":")
    if not repository or "/" in version:
        return tag, "latest"
    return repository, version


def _run_streaming(command, on_line, what):
    """Run `command`, pass its output lines to `on_line`; UsageError with the last lines on failure."""
    tail = deque(maxlen=15)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        tail.append(line.rstrip())
        on_line(line.rstrip())
    if process.wait() != 0:
        output = "\n".join(tail)
        raise UsageError(f"{what} failed (exit {process.returncode}); last output:\n{output}")
