"""Adapters on a pretrained base: NOLA, PRANC's delta mode and the baselines in one harness (runs.py), the
sweep of accuracy against stored bytes (sweep.py), a tiny LoRA (lora.py), PEFT's LoRA/VeRA (peft_baselines.py)."""
