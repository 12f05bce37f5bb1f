"""The driving model: pure PyTorch + timm, no Lightning or DeepSpeed imports."""
