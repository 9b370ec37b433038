"""krate: run untrusted developer workloads isolated, with a tamper-evident local record."""

__version__ = "0.1.0"
