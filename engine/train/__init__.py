"""Training: the generic loop (loop.py) and the schedules that use it (VAE, DiT, fine-tuning stages)."""
