"""waolb: an energy-aware Kubernetes service proxy (nftables), a drop-in for kube-proxy."""

__version__ = "0.1.0"
