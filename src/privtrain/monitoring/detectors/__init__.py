"""Detectors: pure state machines over step reports and a clock."""
