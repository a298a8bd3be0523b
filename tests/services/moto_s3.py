"""A real S3 API for the source tests: moto's server on 127.0.0.1, started once per session.

`moto.server.ThreadedMotoServer` serves the S3 REST API over HTTP from a thread of the test
process; boto3 reaches it through AWS_ENDPOINT_URL like any other S3 service, so the code under
test makes real requests (signing, pagination, error responses). moto accepts any credentials
unless IAM authentication is switched on (`moto.core.authorization.enable_iam_authentication`),
which the credential tests do around the calls that must be refused.
"""
import os

import pytest

from services.azurite import free_port

REGION = "us-east-1"
# dummy keys of the moto server: nothing is real about them
ACCESS_KEY, SECRET_KEY = "testing-access-key", "testing-secret-key"


class MotoS3:
    """A running moto server: its endpoint and a boto3 client for setting up buckets."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY)

    def put_folder(self, folder, bucket, prefix):
        """Upload every file under `folder` as <prefix>/<relative path> (creating the bucket);
        the dataset's URI."""
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                path = os.path.join(dirpath, name)
                key = f"{prefix}/{os.path.relpath(path, folder)}"
                with open(path, "rb") as handle:
                    client.put_object(Bucket=bucket, Key=key, Body=handle.read())
        return f"s3://{bucket}/{prefix}"


@pytest.fixture(scope="session")
def moto_s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoS3(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_s3, tmp_path, monkeypatch):
    """The environment of a user whose AWS settings name the moto server: dummy keys in the
    variables, no profile, and no ~/.aws files or instance metadata of this machine's."""
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
           "AWS_ENDPOINT_URL": moto_s3.endpoint, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
           "AWS_CONFIG_FILE": str(tmp_path / "aws-config"), "AWS_EC2_METADATA_DISABLED": "true"}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
