"""The shard format: clip schema, manifests, indexes, the one tar reader and sample validator, video, windows, writing and verifying shards (docs/data-format.md)."""
