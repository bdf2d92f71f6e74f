"""The serving bundle of `croptune export`, one concern per module: lint (vLLM's LoRA rules),
manifest (croptune.yaml from the training facts; the model is toolkit.bundle.BundleManifest),
card (README.md and its `vllm serve` commands), writer (the bundle folder, leak scan)."""
