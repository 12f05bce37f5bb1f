"""fsdtrain."""
