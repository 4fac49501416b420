"""The paper pipeline: evaluation grid (rsd-eval), main job (rsd-main), sweeps, ablations, calibration, plots."""
