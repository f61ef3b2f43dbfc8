"""How good a model is: metrics, thresholds, calibration, evaluation, reports and plots."""
