"""The driving model: pure PyTorch + timm (transformer, heads, ego-status MLP baseline, losses, FLOPs), no Lightning or DeepSpeed imports."""
