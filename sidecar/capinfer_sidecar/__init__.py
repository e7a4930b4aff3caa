"""capinfer's per-pod sidecar: reads GPU power and moves Triton's batch size and the SM clock."""
