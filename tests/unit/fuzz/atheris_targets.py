"""Coverage-guided fuzzing with atheris (libFuzzer) of the decoders that take hostile bytes.

    python -m tests.unit.fuzz.atheris_targets TARGET [libFuzzer options] [corpus dir]

TARGET is one of ``otlp_json``, ``otlp_protobuf`` (decode, limits, then the rules engine),
``events`` (the events API's parse and validation) and ``decompress``. An exception other than
the decoder's documented refusals is a crash: libFuzzer stops and exits non-zero with the input.
``test_atheris.py`` runs each target for a CI-sized number of runs; run longer by hand with
``-runs=1000000`` or ``-max_total_time=600``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["otlp_meter"]):  # ours only: the rest is slow to instrument
    from google.protobuf.message import DecodeError as ProtobufDecodeError
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from otlp_meter.errors import (
        DecodeError,
        LimitExceededError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
    )
    from otlp_meter.receivers import otlp_json
    from otlp_meter.receivers.cloudevents import MEDIA_TYPES, parse_events
    from otlp_meter.receivers.config import LimitsConfig
    from otlp_meter.receivers.encoding import decompress
    from otlp_meter.receivers.limits import check_limits
    from otlp_meter.rules import RulesConfig, RulesEngine

LIMITS = LimitsConfig(max_attributes_per_record=64, max_attribute_value_size=256)
ENGINE = RulesEngine.from_config(RulesConfig(packs=["genai", "http"]))
NOW = 1_767_225_600_000_000_000


def otlp_json_target(data: bytes) -> None:
    decode = otlp_json.decode_logs_request if data[:1] != b"m" else otlp_json.decode_metrics_request
    with contextlib.suppress(DecodeError):
        decode(data)


def otlp_protobuf_target(data: bytes) -> None:
    metrics = data[:1] == b"\x00"
    try:
        if metrics:
            request_m = ExportMetricsServiceRequest.FromString(data[1:])
            check_limits(request_m, len(data), LIMITS)
            ENGINE.map_metrics(request_m, NOW)
        else:
            request_l = ExportLogsServiceRequest.FromString(data)
            check_limits(request_l, len(data), LIMITS)
            ENGINE.map_logs(request_l, NOW)
    except (ProtobufDecodeError, RuntimeError, ValueError, LimitExceededError):
        pass  # what the receivers answer INVALID_ARGUMENT for


def events_target(data: bytes) -> None:
    media = MEDIA_TYPES[data[0] % 3] if data else MEDIA_TYPES[0]
    with contextlib.suppress(DecodeError, UnsupportedMediaTypeError, PayloadTooLargeError):
        parse_events(data[1:], media, strict=bool(data[:1]) and data[0] & 4 == 4, max_events=100)


def decompress_target(data: bytes) -> None:
    encoding = "deflate" if data[:1] == b"d" else "gzip"
    with contextlib.suppress(DecodeError, PayloadTooLargeError):
        decompress(data[1:], encoding, 1024 * 1024)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "otlp_json": otlp_json_target,
    "otlp_protobuf": otlp_protobuf_target,
    "events": events_target,
    "decompress": decompress_target,
}


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
