"""The bundled LLM's listwise LoRA adapter: data preparation, CPU training, evaluation."""
