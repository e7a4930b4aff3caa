"""Built-in GPU profile sets, one YAML file each (see :mod:`capinfer_sidecar.sim.profiles`)."""
