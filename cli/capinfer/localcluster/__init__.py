"""A real local Kubernetes control plane (built from source) with fake GPU nodes."""
