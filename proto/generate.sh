#!/usr/bin/env bash
# Regenerates the committed Python code for the queue's on-disk records:
#   proto/otlp_meter/queue/v1/record.proto -> otlp_meter/queue/proto/record_pb2.py (+ .pyi)
#
# protoc names its output after the proto's path (otlp_meter/queue/v1/record_pb2.py); we generate
# into a scratch directory and move the two files into otlp_meter/queue/proto/, so the module imports
# as `otlp_meter.queue.proto.record_pb2` while the descriptor keeps its full, collision-free file name
# "otlp_meter/queue/v1/record.proto" in protobuf's global pool. The module imports nothing generated,
# so moving it is safe. Uses grpcio-tools' bundled protoc from the project venv (pinned in
# requirements-dev.txt); the generated code must not need a newer protobuf runtime than requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m grpc_tools.protoc -Iproto --python_out="$scratch" --pyi_out="$scratch" \
  proto/otlp_meter/queue/v1/record.proto
mkdir -p otlp_meter/queue/proto
mv "$scratch/otlp_meter/queue/v1/record_pb2.py" "$scratch/otlp_meter/queue/v1/record_pb2.pyi" \
  otlp_meter/queue/proto/
echo "generated otlp_meter/queue/proto/record_pb2.py and record_pb2.pyi"
