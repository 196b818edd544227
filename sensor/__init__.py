"""gpusentry: an eBPF sensor for GPU hosts, with a Python control plane."""

__version__ = "0.1.0"
