"""Test support: fakes of services that cannot run here (OpenMeter, …)."""
