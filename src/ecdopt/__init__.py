"""ecdopt: Energy-Conserving Descent optimizers for PyTorch."""
