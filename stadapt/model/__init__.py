"""The video classifier: one ViT block with temporal attention, shift and adapters; backbone loaders per library
(open_clip, timm, torchvision) and Swin; the Table 1 builder, adapter artifacts and the public-code converter."""
