"""Training: the `train { }` section's checker (torch-free) and the runtime the generated
training scripts import (`dslc.training.runtime`, which needs torch)."""
