"""otlp-meter: OpenTelemetry and CloudEvents in, durable CloudEvents out to OpenMeter."""

__version__ = "0.1.0"
