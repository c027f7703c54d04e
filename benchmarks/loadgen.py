"""Load generators: processes apart from the service, each running ``clients`` concurrent clients.

Each client has a connection of its own (a gRPC channel with a private subchannel pool, or a
keep-alive HTTP/1.1 connection) and sends request after request of its workload — rendered from a
template before the clock starts for that request — waiting for every answer (an answer means the
events are committed to disk). Paced runs (``rate``) send on a fixed schedule instead of as fast as
answers come back. The HTTP client is a bare asyncio one so that the generator, sharing two cores
with the service, spends as little CPU as it can.

``run_load`` starts the processes, lets them build templates and connect, then starts them all at
once and measures the service's CPU time over exactly the time they were sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue as queue_module
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.harness import cpu_seconds, machine_cpu_seconds, memory_status
from benchmarks.payloads import Template, Workload, template

Transport = Literal["grpc", "http"]
Send = Callable[[bytes], Awaitable[str | None]]  # None: success, else what went wrong

GRPC_LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
GRPC_METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
_CONTEXT = multiprocessing.get_context("fork")  # grpc is only imported (and initialised) in the children


@dataclass(frozen=True)
class LoadSpec:
    """One generator process."""

    transport: Transport
    port: int
    path: str  # gRPC method, or HTTP path
    workload: Workload
    clients: int = 1  # concurrent clients in this process, each with its own connection
    first_client: int = 0  # client numbers first_client… (keeps records of all clients distinct)
    seconds: float = 10.0  # send for this long (a bound when ``requests`` is set)
    rate: float | None = None  # requests/s of the whole process, paced; None: as fast as answered
    requests: int | None = None  # per client: stop after this many
    warmup: int = 0  # per client: requests sent (one at a time) before the measured run starts
    content_type: str = "application/x-protobuf"  # HTTP only


@dataclass
class ClientResult:
    requests: int = 0
    errors: int = 0
    error: str | None = None
    latencies: list[float] = field(default_factory=list)


@dataclass
class Measurement:
    """What a load run measured: counts from the generators, CPU and memory from /proc."""

    requests: int
    records: int
    errors: int
    error: str | None
    seconds: float  # from the first generator starting to the last one finishing
    cpu_seconds: float  # of the service over that window
    generator_cpu_seconds: float  # of the load generators over that window
    others_cores: float  # cores kept busy by processes outside the suite over that window
    steal_cores: float  # cores' time taken by the hypervisor (steal) over that window
    rss_mib: float
    hwm_mib: float
    anon_mib: float  # resident heap (RSS without LMDB's map and other file pages)
    latencies: list[float]  # seconds, sorted

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        index = min(len(self.latencies) - 1, max(0, round(p / 100 * len(self.latencies)) - 1))
        return self.latencies[index]


def run_load(
    specs: list[LoadSpec],
    service_pid: int,
    timeout: float = 600.0,
    before_go: Callable[[], object] | None = None,
    helper_pids: tuple[int, ...] = (),
) -> Measurement:
    """Run ``specs`` (one process each) against the service; bounded by ``timeout`` seconds.

    ``before_go`` is called once every generator has warmed up and connected, just before the
    measured window opens (to read the service's counters). ``helper_pids`` (the stub OpenMeter)
    are the suite's own processes: their CPU, the service's and the generators' are subtracted from
    the machine's to tell how busy *other* processes kept the cores (``others_cores``).
    """
    results: Any = _CONTEXT.Queue()
    go = _CONTEXT.Event()
    processes = [
        _CONTEXT.Process(target=_generator, args=(spec, go, results), name=f"loadgen-{n}", daemon=True)
        for n, spec in enumerate(specs)
    ]
    for process in processes:
        process.start()
    inbox = _Inbox(results, time.monotonic() + timeout)
    try:
        inbox.expect("ready", len(specs))
        if before_go is not None:
            before_go()
        cpu_before = cpu_seconds(service_pid)
        helpers_before = sum(cpu_seconds(pid) for pid in helper_pids)
        machine_before, steal_before = machine_cpu_seconds()
        go.set()
        windows = inbox.expect("done", len(specs))
        cpu = cpu_seconds(service_pid) - cpu_before
        machine_after, steal_after = machine_cpu_seconds()
        helpers = sum(cpu_seconds(pid) for pid in helper_pids) - helpers_before
        memory = memory_status(service_pid)
        reports = inbox.expect("result", len(specs))
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
    started = min(start for start, _, _ in windows)
    ended = max(end for _, end, _ in windows)
    generators = sum(used for _, _, used in windows)
    others = machine_after - machine_before - cpu - helpers - generators
    clients = [client for report in reports for client in report]
    latencies = sorted(lat for client in clients for lat in client.latencies)
    requests = sum(client.requests for client in clients)
    errors = [client.error for client in clients if client.error]
    return Measurement(
        requests=requests,
        records=requests * specs[0].workload.size,
        errors=sum(client.errors for client in clients),
        error=errors[0] if errors else None,
        seconds=ended - started,
        cpu_seconds=cpu,
        generator_cpu_seconds=generators,
        others_cores=max(0.0, others) / (ended - started),
        steal_cores=(steal_after - steal_before) / (ended - started),
        rss_mib=memory.get("VmRSS", 0.0),
        hwm_mib=memory.get("VmHWM", 0.0),
        anon_mib=memory.get("RssAnon", 0.0),
        latencies=latencies,
    )


class _Inbox:
    """Messages from the generators by tag: one process may report "result" before another's "done"."""

    def __init__(self, results: Any, deadline: float) -> None:
        self._results = results
        self._deadline = deadline
        self._pending: dict[str, list[Any]] = {}

    def expect(self, tag: str, count: int) -> list[Any]:
        pending = self._pending.setdefault(tag, [])
        while len(pending) < count:
            try:
                got, payload = self._results.get(timeout=max(0.1, self._deadline - time.monotonic()))
            except queue_module.Empty:
                raise TimeoutError(
                    f"load generators: {len(pending)} of {count} reported {tag!r} in time"
                ) from None
            if got == "failed":
                raise RuntimeError(f"a load generator failed: {payload}")
            self._pending.setdefault(got, []).append(payload)
        out, self._pending[tag] = pending[:count], pending[count:]
        return out


def _generator(spec: LoadSpec, go: Any, results: Any) -> None:
    try:
        templates = [template(spec.workload, spec.first_client + c) for c in range(spec.clients)]
        if spec.transport == "grpc":
            asyncio.run(_grpc_main(spec, templates, go, results))
        else:
            import uvloop

            uvloop.run(_http_main(spec, templates, go, results))
    except BaseException as exc:
        results.put(("failed", f"{type(exc).__name__}: {exc}"))
        raise


async def _drive(
    spec: LoadSpec, templates: list[Template], senders: list[Send], go: Any, results: Any
) -> None:
    async def warm(n: int) -> None:
        for seq in range(spec.warmup):
            problem = await senders[n](templates[n].render(seq))
            if problem is not None:
                raise RuntimeError(f"warm-up request refused: {problem}")

    await asyncio.gather(*(warm(n) for n in range(spec.clients)))
    results.put(("ready", None))
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    started, cpu_started = time.monotonic(), time.process_time()
    deadline = started + spec.seconds
    interval = spec.clients / spec.rate if spec.rate else 0.0

    async def client(n: int) -> ClientResult:
        result = ClientResult()
        render, send = templates[n].render, senders[n]
        next_at = started + n * interval / spec.clients
        seq = spec.warmup  # cumulative streams: the measured exports come after the warm-up ones
        while spec.requests is None or seq < spec.warmup + spec.requests:
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            if time.monotonic() >= deadline:
                break
            body = render(seq)
            begin = time.perf_counter()
            problem = await send(body)
            elapsed = time.perf_counter() - begin
            if problem is None:
                result.requests += 1
                result.latencies.append(elapsed)
                seq += 1
            else:
                result.errors += 1
                result.error = result.error or problem
                await asyncio.sleep(0.05)  # refused (queue full?): back off a little, then resend
        return result

    clients = await asyncio.gather(*(client(n) for n in range(spec.clients)))
    results.put(("done", (started, time.monotonic(), time.process_time() - cpu_started)))
    results.put(("result", clients))


async def _grpc_main(spec: LoadSpec, templates: list[Template], go: Any, results: Any) -> None:
    import grpc

    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 64 << 20)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{spec.port}", options=options) for _ in templates]
    try:
        senders: list[Send] = []
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
            senders.append(_grpc_sender(channel.unary_unary(spec.path), grpc))
        await _drive(spec, templates, senders, go, results)
    finally:
        for channel in channels:
            await channel.close()


def _grpc_sender(call: Any, grpc: Any) -> Send:
    async def send(body: bytes) -> str | None:
        try:
            await call(body, timeout=60)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return None

    return send


class _HttpClient:
    """One keep-alive HTTP/1.1 connection; POSTs a body and reads the whole answer."""

    def __init__(self, port: int, path: str, content_type: str) -> None:
        self._port = port
        self._head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: {content_type}\r\ncontent-length: "
        ).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port, limit=1 << 20)

    async def send(self, body: bytes) -> str | None:
        if self._writer is None:
            await self.connect()
        assert self._reader is not None
        assert self._writer is not None
        self._writer.writelines([self._head, str(len(body)).encode(), b"\r\n\r\n", body])
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            return f"connection lost: {exc!r}"
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"content-length:")
        length = int(lower[at + 15 : lower.find(b"\r\n", at)]) if at >= 0 else 0
        answer = await self._reader.readexactly(length) if length else b""
        if b"connection: close" in lower:
            await self.close()
        if 200 <= status < 300:
            return None
        return f"HTTP {status}: {answer[:200]!r}"

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _http_main(spec: LoadSpec, templates: list[Template], go: Any, results: Any) -> None:
    clients = [_HttpClient(spec.port, spec.path, spec.content_type) for _ in templates]
    try:
        for client in clients:
            await client.connect()
        await _drive(spec, templates, [client.send for client in clients], go, results)
    finally:
        for client in clients:
            await client.close()
