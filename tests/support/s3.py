"""An S3-compatible server on loopback (moto's server mode) and a boto3 client for it."""

from __future__ import annotations

import itertools
from types import TracebackType
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from tests.support.service import free_port

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
REGION = "us-east-1"
_buckets = itertools.count()


class S3Server:
    """A real HTTP S3 API (moto) on 127.0.0.1: boto3 in the tests, boto3 in the service, speak to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.client: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        self._server.start()
        self.client = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        return self

    def stop(self) -> None:
        self._server.stop()

    def new_bucket(self, prefix: str = "usage") -> str:
        """A bucket of its own for one test (moto keeps one store per process)."""
        bucket = f"{prefix}-{next(_buckets)}"
        self.client.create_bucket(Bucket=bucket)
        return bucket

    def put(self, bucket: str, key: str, body: bytes) -> str:
        """Upload ``body``; returns its ETag."""
        etag: str = self.client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
        return etag

    def source_config(self, bucket: str, **overrides: Any) -> dict[str, Any]:
        """An s3 source config (as YAML would hold it) for ``bucket`` on this server."""
        return {
            "bucket": bucket,
            "endpoint_url": self.url,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "addressing_style": "path",
            **overrides,
        }

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
