"""Reproducible replication of "Improving Dictionary Learning with Gated Sparse Autoencoders"."""

__version__ = "0.1.0"
