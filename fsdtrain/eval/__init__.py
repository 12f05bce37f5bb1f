"""Evaluation: metrics, reports, `fsdtrain eval`, pictures. Never imports fsdtrain.train."""
