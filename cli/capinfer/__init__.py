"""The capinfer command line: local cluster, benchmarks, characterization."""
