"""Training: LightningModule, strategies, callbacks, fine-tuning policy, weights export."""
