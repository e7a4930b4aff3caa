"""The simulated world the benchmark runs the production control loop in: pure, no I/O.

- :mod:`.profiles` -- latency and power of a (DNN, dataset) on a GPU, from YAML profile sets
  (built-in ones in ``profile_data/``);
- :mod:`.gpu_model` -- a virtual GPU fed executed batches, with NVML-style readings;
- :mod:`.arrivals`, :mod:`.world` -- the load as counts, Triton's dynamic batcher on that GPU,
  and the control loop's two ports over it (GPU and Triton), with
- :mod:`.faults` applied: failed and hanging reloads, Triton outages, NVML errors;
- :mod:`.config`, :mod:`.workloads` -- what a run is, and benchmark workload files;
- :mod:`.metrics`, :mod:`.oracle` -- what a run achieved, and the best static pair.

The driver that runs :class:`~capinfer_sidecar.loop.ControlLoop` on virtual time against
this world is :mod:`capinfer_sidecar.simloop`; the benchmark is :mod:`capinfer.bench`.
"""
