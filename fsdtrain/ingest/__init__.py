"""Raw drives (docs/data-format.md) -> shards: checks, resampling, parallel encoding."""
