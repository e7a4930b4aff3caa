"""The GPU power/performance model and the discrete-event runner that drives policies on it.

- :mod:`.profiles` -- latency and power of a (DNN, dataset) on a GPU, from YAML profile sets
  (built-in ones in ``profile_data/``);
- :mod:`.gpu_model` -- a virtual GPU fed executed batches, with NVML-style readings;
- :mod:`.runner` -- the discrete-event simulation of Triton's dynamic batcher on that GPU,
  driving a :class:`~capinfer_sidecar.policies.base.Policy`;
- :mod:`.metrics`, :mod:`.oracle` -- what a run achieved, and the best static pair;
- :mod:`.workloads`, :mod:`.bench` -- benchmark workload files and ``capinfer bench``'s logic.
"""
