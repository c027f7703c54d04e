"""Exporters: deliver leased queue batches to OpenMeter (or a file for local use)."""
