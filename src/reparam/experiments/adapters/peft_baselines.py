"""HF PEFT's LoRA and VeRA next to reparam's adapters (optional: `pip install 'reparam[peft]'`).

The same base, data, optimizer and schedule as every other method of the harness. Stored bytes are the bytes
of the tensors in the `adapter_model.safetensors` PEFT's `save_pretrained` writes (file bytes: the file), as
for reparam's adapters; VeRA saves its shared random projections there by default (`save_projection=True`),
because PEFT cannot regenerate them bit-identically on every device.
PEFT's LoRA takes Conv2d and Linear layers; its VeRA takes Linear layers only, so on a CNN it adapts the head.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn

from reparam.core.errors import ReparamError


def _peft():
    try:
        import peft
    except ImportError:
        raise ReparamError("peft is not installed: pip install 'reparam[peft]' (an optional extra) to run the "
                           "peft-lora and peft-vera baselines") from None
    return peft


def _targets(model: nn.Module, method: str) -> list[str]:
    kinds = (nn.Linear,) if method == "peft-vera" else (nn.Linear, nn.Conv2d)
    names = [n for n, m in model.named_modules() if isinstance(m, kinds) and n
             and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)]
    if not names:
        raise ReparamError(f"{method} found no layer it can adapt")
    return names


def prepare_peft(method: str, model: nn.Module, *, rank: int = 4, seed: int = 0):
    from reparam.experiments.adapters.runs import Prepared
    from reparam.train.hooks import KeepNormStatistics

    peft = _peft()
    targets = _targets(model, method)
    if method == "peft-lora":
        cfg = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0)
    else:
        cfg = peft.VeraConfig(r=rank, target_modules=targets, projection_prng_key=seed, vera_dropout=0.0)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = peft.get_peft_model(model, cfg)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    stored = sum(p.numel() for p in params)

    def save(out_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
        out_dir.mkdir(parents=True, exist_ok=True)
        wrapped.save_pretrained(str(out_dir / "peft"))
        f = out_dir / "peft" / "adapter_model.safetensors"
        from safetensors.torch import load_file

        payload = sum(t.numel() * t.element_size() for t in load_file(str(f)).values())
        return {"bytes_stored": payload, "file_bytes": f.stat().st_size}

    return Prepared(method, wrapped, params, [KeepNormStatistics(model)], stored,
                    f"PEFT {method[5:]} rank {rank} on {len(targets)} layers", save,
                    {"rank": rank, "targets": targets})


def peft_sizes(prep) -> dict[str, int]:
    """{bytes_stored: the tensors' bytes, file_bytes: the file's} of PEFT's saved adapter."""
    with tempfile.TemporaryDirectory() as tmp:
        return prep.save(Path(tmp), {})
