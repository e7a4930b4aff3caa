"""The GPU power/performance model and the discrete-event runner that drives policies on it."""
