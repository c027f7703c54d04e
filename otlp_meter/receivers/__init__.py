"""Thin transports (OTLP gRPC, OTLP/HTTP) around one receiver core."""
