"""The control plane: the autoscaler, its pure decisions, GPUs, and the drivers."""
