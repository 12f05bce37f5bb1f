"""Training: LightningCLI, LightningModule, strategies, checkpoints, callbacks, W&B, fine-tuning policy, and what runs inside each rank (cluster detection, SLURM requeue)."""
