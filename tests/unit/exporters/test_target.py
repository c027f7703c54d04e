"""Where events go: ``resolve_target`` picks a file, a self-hosted OpenMeter or Konnect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otlp_meter.errors import ConfigError
from otlp_meter.exporters.config import KONNECT_DEFAULT_URL, ExporterConfig, Target, resolve_target

DATA = Path("/var/lib/otlp-meter")
TOKEN = "om_secret_token_123"


def resolve(env: dict[str, str] | None = None, **settings: Any) -> Target:
    return resolve_target(ExporterConfig.model_validate(settings), DATA, env or {})


def test_a_file_path_wins_over_everything() -> None:
    target = resolve(
        {"OPENMETER_URL": "http://openmeter:8888", "OPENMETER_TOKEN": TOKEN},
        file={"path": "/tmp/out.jsonl"},
        openmeter={"url": "https://eu.api.konghq.com/v3/openmeter", "token": TOKEN},
    )
    assert target == Target("file", "/tmp/out.jsonl")


def test_openmeter_url_from_the_environment_is_self_hosted_v1() -> None:
    target = resolve({"OPENMETER_URL": "http://openmeter:8888/"})
    assert (target.kind, target.api, target.endpoint) == (
        "openmeter",
        "v1",
        "http://openmeter:8888/api/v1/events",
    )
    assert target.token is None


def test_a_self_hosted_url_under_a_path_prefix_keeps_the_prefix() -> None:
    target = resolve(openmeter={"url": "https://gw.example.com/openmeter/"})
    assert target.endpoint == "https://gw.example.com/openmeter/api/v1/events"


def test_the_configured_url_wins_over_the_environment() -> None:
    target = resolve({"OPENMETER_URL": "http://env:8888"}, openmeter={"url": "http://config:8888"})
    assert target.endpoint == "http://config:8888/api/v1/events"


@pytest.mark.parametrize(
    "url", ["https://eu.api.konghq.com/v3/openmeter", "https://eu.api.konghq.com/v3/openmeter/"]
)
def test_a_url_ending_in_v3_openmeter_posts_to_its_events(url: str) -> None:
    from_config = resolve(openmeter={"url": url, "token": TOKEN})
    from_env = resolve({"OPENMETER_URL": url, "OPENMETER_TOKEN": TOKEN})
    for target in (from_config, from_env):
        assert (target.api, target.endpoint) == ("v3", "https://eu.api.konghq.com/v3/openmeter/events")
        assert target.token is not None
        assert target.token.get_secret_value() == TOKEN


def test_an_explicit_api_overrides_the_guess() -> None:
    target = resolve(openmeter={"url": "https://proxy.example.com/metering", "api": "v3"})
    assert (target.api, target.endpoint) == ("v3", "https://proxy.example.com/metering/events")


@pytest.mark.parametrize(
    "target",
    [resolve({"OPENMETER_TOKEN": TOKEN}), resolve(openmeter={"token": TOKEN})],
    ids=["env", "config"],
)
def test_a_token_alone_means_konnect_us(target: Target) -> None:
    assert target.kind == "openmeter"
    assert (target.api, target.endpoint) == ("v3", f"{KONNECT_DEFAULT_URL}/events")
    assert target.endpoint == "https://us.api.konghq.com/v3/openmeter/events"


def test_the_configured_token_wins_over_the_environment() -> None:
    target = resolve({"OPENMETER_TOKEN": "from-env"}, openmeter={"token": "from-config"})
    assert target.token is not None
    assert target.token.get_secret_value() == "from-config"


@pytest.mark.parametrize("env", [{}, {"OPENMETER_TOKEN": "", "OPENMETER_URL": ""}])
def test_neither_url_nor_token_writes_the_local_events_file(env: dict[str, str]) -> None:
    assert resolve(env) == Target("file", str(DATA / "events.jsonl"))


@pytest.mark.parametrize(
    "target",
    [
        resolve({"OPENMETER_TOKEN": TOKEN}),
        resolve({"OPENMETER_URL": "http://openmeter:8888", "OPENMETER_TOKEN": TOKEN}),
        resolve(openmeter={"url": "https://eu.api.konghq.com/v3/openmeter", "token": TOKEN}),
    ],
)
def test_describe_never_contains_the_token(target: Target) -> None:
    description = target.describe()
    assert TOKEN not in description
    assert "with bearer token" in description
    assert target.endpoint.replace("https://", "").replace("http://", "") in description


def test_describe_hides_credentials_written_into_the_url() -> None:
    description = resolve(openmeter={"url": "https://user:hunter2@openmeter.example.com"}).describe()
    assert "hunter2" not in description
    assert "openmeter.example.com/api/v1/events" in description
    assert "without token" in description


def test_describe_of_a_file_target_names_the_file() -> None:
    assert resolve().describe() == f"file {DATA / 'events.jsonl'}"


@pytest.mark.parametrize(
    ("url", "api", "endpoint"),
    [
        ("https://us.api.konghq.com/v3", "v3", "https://us.api.konghq.com/v3/openmeter/events"),
        (
            "https://us.api.konghq.com/v3/openmeter/events",
            "v3",
            "https://us.api.konghq.com/v3/openmeter/events",
        ),
        ("http://localhost:8888/api/v1/events", "v1", "http://localhost:8888/api/v1/events"),
        ("http://localhost:8888/api/v1/events/", "v1", "http://localhost:8888/api/v1/events"),
    ],
    ids=["konnect-server-url", "konnect-events-url", "v1-events-url", "trailing-slash"],
)
def test_the_api_reference_s_server_url_or_the_events_url_itself_are_understood(
    url: str, api: str, endpoint: str
) -> None:
    """Nothing is appended twice: a doubled path is a 404 retried forever, events never delivered."""
    target = resolve({"OPENMETER_URL": url, "OPENMETER_TOKEN": TOKEN})
    assert (target.api, target.endpoint) == (api, endpoint)


def test_a_url_with_a_query_is_refused_with_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"no query or fragment") as refused:
        resolve({"OPENMETER_URL": "http://openmeter:8888?tenant=a"})
    assert refused.value.problems[0][0] == "$OPENMETER_URL"


def test_an_explicit_v3_with_konnect_s_server_url_posts_to_its_events() -> None:
    target = resolve(openmeter={"url": "https://us.api.konghq.com/v3", "api": "v3", "token": TOKEN})
    assert (target.api, target.endpoint) == ("v3", "https://us.api.konghq.com/v3/openmeter/events")
