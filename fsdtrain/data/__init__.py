"""The loader: shard directories -> window batches (order, stream, augmentations, data module)."""
