"""capinfer's Kubernetes operator: PowerCappedInference objects in, Triton Deployments out."""
