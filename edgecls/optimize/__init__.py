"""Model optimization: structured pruning, fine-tuning with distillation, int8 quantization."""
