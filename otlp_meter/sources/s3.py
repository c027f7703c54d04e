"""The s3 source: usage files in an S3-compatible bucket, each object read exactly once.

It lists ``bucket``/``prefix`` in key order (S3 lists in UTF-8 binary order) after the cursor, and
reads each new object as a stream of rows (``s3_formats``). Rows go to the sink in chunks of at most
``batch_rows``, each chunk committed with the cursor (the key, ETag and the rows done so far), so a
crash mid-object resumes after the last committed chunk and re-reads nothing that was committed;
rows that are read again produce the same records, hence the same event ids. The object's last
chunk moves ``after`` to its key in the same commit. CloudEvents files pass straight to the queue
(``sink.events``); unreadable rows and invalid events become log records the s3 pack dead-letters.

Objects are taken as immutable, identified by key: keys at or below the cursor are never read
(again), so producers must write new keys in increasing order (e.g. date-prefixed). An object
rewritten while half read (new ETag) continues at the same row number in its new version: rows
already committed stand, rows after them come from the new content (logged and counted).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from otlp_meter.config_types import ByteSize, Duration, Section
from otlp_meter.events import EncodedEvent
from otlp_meter.pipeline import IngestResult
from otlp_meter.sources.base import (
    BackoffConfig,
    Source,
    SourceObserver,
    SourceSink,
    SourceStats,
    TlsClientConfig,
    Wait,
    cursor_key,
    deliver,
    run_until_stopped,
    wait_or_stop,
)
from otlp_meter.sources.s3_formats import Row
from otlp_meter.sources.s3_reader import (
    Compression,
    Format,
    ObjectProgress,
    ObjectStream,
    S3Cursor,
    cloud_event,
    logs_request,
)
from otlp_meter.telemetry.logging import get_logger

KIND = "s3"
log = get_logger("sources.s3")

LIST_PAGE = 1000
BATCH_BYTES = 4 * 1024 * 1024
"""Most row bytes in one commit (with ``batch_rows``, it bounds memory and commit size)."""
# boto3/botocore cost ~0.12 s and ~23 MiB to import: they are imported when the source runs.


def _failures() -> tuple[type[Exception], ...]:
    """What a listing or read may raise that is retried: botocore's errors and OSError."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, OSError)


class S3SourceConfig(Section):
    """One bucket (and prefix) of usage files."""

    name: str = Field("s3", description="Instance name; part of the cursor key, keep it stable.")
    bucket: str = Field("", validate_default=True, description="Bucket to read (required).")
    prefix: str = Field("", description="Only keys starting with this are read, e.g. usage/.")
    suffix: str = Field(
        "", description="Only keys ending with this are read (e.g. .csv.gz); others are passed."
    )
    after: str = Field(
        "", description="Start key: only keys after it (in key order) are read, on the first run too."
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, R2, Ceph...), e.g. http://minio:9000. Unset: AWS."
    )
    region: str | None = Field(None, description="Region. Unset: the standard chain ($AWS_REGION, ...).")
    access_key_id: SecretStr | None = Field(
        None, description="Access key. Unset: the standard chain ($AWS_ACCESS_KEY_ID, profile, IRSA, IMDS)."
    )
    secret_access_key: SecretStr | None = Field(None, description="Secret key (with access_key_id).")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="auto, path (most S3-compatible servers) or virtual (bucket.host)."
    )
    format: Format = Field(
        "jsonl",
        description="jsonl (one JSON object per line), json (an array of objects), csv (a header row, "
        "then rows), cloudevents (CloudEvents as JSON Lines or a JSON array, queued as they are).",
    )
    compression: Compression = Field(
        "auto", description="auto (gzip when the key ends in .gz or the data starts like gzip), none, gzip."
    )
    csv_delimiter: str = Field(",", description="Field separator of csv files (one character).")
    poll_interval: Duration = Field(60.0, gt=0, description="Wait between listings once all is read.")
    batch_rows: int = Field(1000, ge=1, description="Most rows committed together (one commit each).")
    max_row_bytes: ByteSize = Field(
        1024 * 1024, ge=64, description="Longest row; a longer one is dead-lettered, never held whole."
    )
    timeout: Duration = Field(60.0, gt=0, description="Connect and read timeout of one S3 request.")
    tls: TlsClientConfig = Field(default_factory=TlsClientConfig, description="TLS to the endpoint.")
    backoff: BackoffConfig = Field(
        default_factory=BackoffConfig,
        description="Waits between retries of a failed listing, read or commit.",
    )

    @field_validator("bucket")
    @classmethod
    def _bucket_given(cls, value: str) -> str:
        if not value:
            raise ValueError("an s3 source needs its bucket")
        return value

    @field_validator("csv_delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1 or value in '"\r\n':
            raise ValueError("must be one character other than a quote or a line break")
        return value

    @model_validator(mode="after")
    def _keys_together(self) -> S3SourceConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together")
        return self


class S3Source:
    """Reads the objects of one :class:`S3SourceConfig`; see the module docstring."""

    kind = KIND

    def __init__(
        self,
        config: S3SourceConfig,
        *,
        observer: SourceObserver | None = None,
        wait: Wait = wait_or_stop,
        client_factory: Any = None,
        strict_events: bool = False,
    ) -> None:
        self.config = config
        self._strict_events = strict_events
        """``cloudevents`` rows are validated as OpenMeter's v3 API takes them (the exporter's target)."""
        self.name = config.name
        self.stats = SourceStats(KIND, config.name, observer)
        self._wait = wait
        self._client_factory = client_factory or functools.partial(make_client, config)
        self._state_key = cursor_key(KIND, config.name)
        self._resource = {"otlp_meter.source.name": config.name}

    async def run(self, sink: SourceSink, stop: asyncio.Event) -> None:
        """Poll, read and commit until ``stop`` is set."""
        loop = functools.partial(self._poll, sink, stop)
        await run_until_stopped(stop, loop, restart=self.config.backoff, wait=self._wait)

    async def _poll(self, sink: SourceSink, stop: asyncio.Event) -> None:
        failures = _failures()
        client = await asyncio.to_thread(self._client_factory)
        delays = self.config.backoff.delays()
        while not stop.is_set():
            try:
                idle = await self._step(client, sink, stop)
            except failures as exc:
                delay = next(delays)
                self.stats.add("reads_failed")
                log.warning(
                    "s3_read_failed",
                    source=self.name,
                    bucket=self.config.bucket,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=round(delay, 3),
                )
                if await self._wait(stop, delay):
                    return
                continue
            delays = self.config.backoff.delays()
            if idle and await self._wait(stop, self.config.poll_interval):
                return

    async def _step(self, client: Any, sink: SourceSink, stop: asyncio.Event) -> bool:
        """Finish a half-read object, then read one listing page; True when nothing more is listed."""
        cursor = S3Cursor.decode(sink.get_state(self._state_key))
        if cursor.current is not None:
            done = await self._read(client, sink, stop, cursor, cursor.current)
            if done is None:
                return False
            cursor = done
        start_after = max(self.config.after, cursor.after)
        page = await asyncio.to_thread(self._list, client, start_after)
        passed = cursor.after
        for listed in page.get("Contents", []):
            key = listed["Key"]
            if not key.endswith(self.config.suffix) or (key.endswith("/") and listed.get("Size") == 0):
                passed = key  # not a usage file: nothing to read, the cursor just moves past it
                continue
            modified_ns = round(listed["LastModified"].timestamp() * 1e9)
            progress = ObjectProgress(key, listed["ETag"], modified_ns)
            reading = S3Cursor(cursor.after, progress, cursor.etag)
            done = await self._read(client, sink, stop, reading, progress)
            if done is None:
                return False
            cursor = done
            passed = key
        if passed > cursor.after:
            done_cursor = S3Cursor(passed)
            if await self._commit(sink, stop, [], done_cursor) is None:
                return False
        return not page.get("IsTruncated", False)

    def _list(self, client: Any, start_after: str) -> Any:
        kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "MaxKeys": LIST_PAGE}
        if self.config.prefix:
            kwargs["Prefix"] = self.config.prefix
        if start_after:
            kwargs["StartAfter"] = start_after
        return client.list_objects_v2(**kwargs)

    async def _read(
        self, client: Any, sink: SourceSink, stop: asyncio.Event, cursor: S3Cursor, progress: ObjectProgress
    ) -> S3Cursor | None:
        """Read one object to its end, committing chunk by chunk; the cursor after it, or None
        when ``stop`` came first."""
        c = self.config
        stream = ObjectStream(
            client,
            c.bucket,
            progress,
            file_format=c.format,
            compression=c.compression,
            max_row_bytes=c.max_row_bytes,
            delimiter=c.csv_delimiter,
        )
        from botocore.exceptions import ClientError

        try:
            await asyncio.to_thread(stream.open)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            self.stats.add("objects_vanished")
            log.warning(
                "s3_object_vanished", source=self.name, key=progress.key, rows_read=progress.position.rows
            )
            done = S3Cursor(progress.key, etag=progress.etag)
            return done if await self._commit(sink, stop, [], done) is not None else None
        if progress.position.rows:
            log.info(
                "s3_object_resumed", source=self.name, key=progress.key, rows_done=progress.position.rows
            )
        try:
            if stream.changed:
                self.stats.add("objects_changed")
                log.warning(
                    "s3_object_changed",
                    source=self.name,
                    key=progress.key,
                    rows_committed=progress.position.rows,
                    policy="committed rows stand; the rest is read from the new version",
                )
            rows_done = progress.position.rows
            while True:
                rows, finished = await asyncio.to_thread(stream.take, c.batch_rows, BATCH_BYTES)
                groups = self._groups(rows, stream.progress.modified_ns)
                for i, (items, last) in enumerate(groups):
                    final = finished and i == len(groups) - 1
                    here = S3Cursor(cursor.after, replace(stream.progress, position=last.after), cursor.etag)
                    at = S3Cursor(progress.key, etag=stream.progress.etag) if final else here
                    if await self._commit(sink, stop, items, at, stream.progress) is None:
                        return None
                    rows_done = last.after.rows
                if finished:
                    done = S3Cursor(progress.key, etag=stream.progress.etag)
                    if not groups and await self._commit(sink, stop, [], done) is None:
                        return None
                    self.stats.add("objects_completed")
                    log.info("s3_object_done", source=self.name, key=progress.key, rows=rows_done)
                    return done
        finally:
            await asyncio.to_thread(stream.close)

    def _groups(self, rows: list[Row], modified_ns: int) -> list[tuple[list[Row] | list[EncodedEvent], Row]]:
        """Rows split into what commits together: all of them, for row files; for CloudEvents,
        runs of valid events (queued as they are) and runs of invalid ones (dead-lettered)."""
        if not rows:
            return []
        if self.config.format != "cloudevents":
            return [(rows, rows[-1])]
        groups: list[tuple[list[Any], Row]] = []
        for row in rows:
            item = cloud_event(row, modified_ns, strict=self._strict_events)
            if groups and type(groups[-1][0][0]) is type(item):
                groups[-1][0].append(item)
                groups[-1] = (groups[-1][0], row)
            else:
                groups.append(([item], row))
        return groups

    async def _commit(
        self,
        sink: SourceSink,
        stop: asyncio.Event,
        items: list[Row] | list[EncodedEvent],
        cursor: S3Cursor,
        progress: ObjectProgress | None = None,
    ) -> IngestResult | None:
        state = {self._state_key: cursor.encode()}
        if items and isinstance(items[0], EncodedEvent):
            events = [e for e in items if isinstance(e, EncodedEvent)]
            send = functools.partial(sink.events, events, state)
            self.stats.add("events", len(events))
        else:
            rows = [r for r in items if isinstance(r, Row)]
            key, modified = (progress.key, progress.modified_ns) if progress else ("", 0)
            request = logs_request(self.config.bucket, key, modified, rows, self._resource)
            send = functools.partial(sink.logs, request, state)
            unreadable = sum(1 for r in rows if r.value is None)
            self.stats.add("rows", len(rows) - unreadable)
            self.stats.add("rows_unreadable", unreadable)
        return await deliver(send, stop, backoff=self.config.backoff, wait=self._wait, on_retry=self._busy)

    def _busy(self, exc: Exception, delay: float) -> None:
        self.stats.add("commits_retried")
        log.warning("s3_commit_retry", source=self.name, error=str(exc), retry_in=delay)


def make_client(config: S3SourceConfig) -> Any:
    """A boto3 S3 client for ``config`` (credentials from it, else the standard chain)."""
    import boto3.session
    from botocore.config import Config as BotoConfig

    tls = config.tls
    key_id, secret = config.access_key_id, config.secret_access_key
    client_cert = (str(tls.cert_file), str(tls.key_file)) if tls.cert_file and tls.key_file else None
    boto_config = BotoConfig(
        connect_timeout=config.timeout,
        read_timeout=config.timeout,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": config.addressing_style},
        client_cert=client_cert,
    )
    verify: bool | str | None = str(tls.ca_file) if tls.ca_file else None
    if tls.insecure_skip_verify:
        verify = False
    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        verify=verify,
        config=boto_config,
        aws_access_key_id=key_id.get_secret_value() if key_id else None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
    )


def build(
    config: S3SourceConfig, *, observer: SourceObserver | None = None, strict_events: bool = False
) -> Source:
    """Create the running source for ``config`` (``observer`` receives its counts; ``strict_events``:
    CloudEvents files are checked as OpenMeter's v3 API takes events)."""
    return S3Source(config, observer=observer, strict_events=strict_events)
