"""GPU devices behind one interface: NVML (real) and a virtual GPU driven by the power model."""
