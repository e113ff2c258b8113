"""Job monitoring: stall and NaN detectors, alert transitions."""
