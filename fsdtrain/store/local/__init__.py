"""The local object store: SeaweedFS started and stopped by fsdtrain, one key per zone."""
