from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_openmeter import FakeOpenMeter
from tests.support.service import ServiceProcess

TOKEN = "test-token"

ServiceFactory = Callable[..., ServiceProcess]


@pytest.fixture
def openmeter() -> Iterator[FakeOpenMeter]:
    with FakeOpenMeter(token=TOKEN) as server:
        yield server


@pytest.fixture
def service_factory(tmp_path: Path, openmeter: FakeOpenMeter) -> Iterator[ServiceFactory]:
    """Builds services exporting to the fake OpenMeter; all are stopped at the end of the test."""
    started: list[ServiceProcess] = []

    def make(
        config: dict[str, Any] | None = None, env: dict[str, str] | None = None, workdir: Path | None = None
    ) -> ServiceProcess:
        base_env = {"OPENMETER_URL": openmeter.url, "OPENMETER_TOKEN": TOKEN}
        service = ServiceProcess(workdir or tmp_path / "svc", config, {**base_env, **(env or {})})
        started.append(service)
        return service

    yield make
    for service in started:
        if service.process is not None and service.process.poll() is None:
            service.stop()


@pytest.fixture
def service(service_factory: ServiceFactory) -> Iterator[ServiceProcess]:
    with service_factory() as running:
        yield running
