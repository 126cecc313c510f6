"""The outside world: weights (TORCH_HOME, the shipped decoder), the style catalogue,
downloads, foreign checkpoints (a restricted unpickler, StyleGAN2 conversion) and ONNX
export. Imports core and models only."""
