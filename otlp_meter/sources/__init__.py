"""Sources: OTLP producers inside the service (Kubernetes, Prometheus, S3, Run:ai)."""
