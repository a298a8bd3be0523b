"""A real Docker engine and the offline training image, for the docker backend's tests.

Nothing is faked: the tests talk to the dockerd that scripts/setup_docker.sh installs and starts.
Without an engine the tests skip -- except in CI (the variable CI is set), where a missing service
must fail the suite instead of silently skipping it.
"""
import os

import pytest

from orchestrator.errors import OrchestrateError


def missing(reason):
    """Skip locally, fail in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping; run scripts/setup_docker.sh)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client talking to a live engine."""
    from orchestrator.backends.docker import connect

    try:
        return connect()
    except OrchestrateError as exc:
        missing(f"no Docker engine: {exc}")


@pytest.fixture(scope="session")
def offline_base(docker_client):
    """The offline base image's tag; built with debootstrap (minutes, from the Debian mirror of this
    host's apt sources) only when it is missing."""
    from orchestrator.images import OFFLINE_BASE_TAG, build_offline_base, image_exists

    if not image_exists(docker_client, OFFLINE_BASE_TAG):
        try:
            build_offline_base(docker_client, on_line=lambda line: None)
        except OrchestrateError as exc:
            missing(f"no offline base image {OFFLINE_BASE_TAG} and cannot build it: {exc}")
    return OFFLINE_BASE_TAG


@pytest.fixture(scope="session")
def training_image(docker_client, offline_base):
    """The training image (infra/docker/Dockerfile) on the offline base, built when its hash changed."""
    from orchestrator.images import ensure_training_image

    return ensure_training_image(docker_client, offline_base, on_line=lambda line: None)
