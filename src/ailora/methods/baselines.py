"""The Table 4 baselines as training methods: how each prepares a model and saves what it trained.

Where PEFT implements a method faithfully it is used: DoRA (``use_dora``) and rsLoRA
(``use_rslora``) are PEFT LoRA layers through ``ailora.core.apply``, so they combine with the SVD starts;
VeRA is PEFT's ``VeraConfig``. LoRA+ is PEFT-faithful in its layers (plain LoRA) but not in its
optimizer: ``peft.optimizers.create_loraplus_optimizer`` puts every 1-D trainable tensor in the
lora_B group, so the classifier's bias and DoRA's magnitudes would get ratio x lr while the
classifier's weight gets lr; ``ailora.param_groups(loraplus_ratio=...)`` raises only lora_B.
Full fine-tuning, BitFit and Houlsby adapters have no PEFT tuner (``select.py``, ``houlsby.py``).
"""

from __future__ import annotations

import peft
from torch import nn

from ailora.core.options import HoulsbyOptions, NoOptions, VeraOptions
from ailora.core.roles import find_targets
from ailora.errors import AiloraError
from ailora.methods import saving as io
from ailora.methods.houlsby import prepare_houlsby
from ailora.methods.lora import lora_variant
from ailora.methods.registry import Prepared, TrainMethod, register_method
from ailora.methods.select import BaselineState, head_modules, prepare_bitfit, prepare_full, prepared_baseline

LORAPLUS_RATIO = 16.0  # LoRA+'s default ratio lr_B / lr_A (PEFT's example and the paper's suggestion)
VERA_TARGETS = ("query", "value")


def prepare_vera(model: nn.Module, cfg, seed: int) -> Prepared:
    """VeRA (Kopiczko et al. 2024) through PEFT: frozen random A, B shared by all layers (from ``seed``),
    trained vectors d (init 0.1) and b (init 0), so outputs are unchanged at step 0. ``cfg.options``:
    a ``VeraOptions``."""
    opts = cfg.options
    targets = find_targets(model, opts.targets or VERA_TARGETS)
    fused = [t for t in targets if t.fused]
    if fused:
        raise AiloraError(f"VeRA adapts whole modules, and {fused[0].name} holds the roles "
                          f"{', '.join(fused[0].roles)} of a fused projection; choose unfused roles")
    head = head_modules(model)
    config = peft.VeraConfig(
        r=opts.vera_rank, target_modules=[t.name for t in targets], projection_prng_key=seed, save_projection=True,
        vera_dropout=opts.dropout, d_initial=0.1, fan_in_fan_out=all(t.fan_in_fan_out for t in targets),
        modules_to_save=head or None,
    )
    return prepared_baseline(peft.get_peft_model(model, config),
                             BaselineState("vera", head, {"vera_rank": opts.vera_rank, "targets": [t.name for t in targets]}))


BASELINES = [
    TrainMethod("full", prepare_full, io.save_full, "full fine-tuning: every weight trains", NoOptions),
    TrainMethod("bitfit", prepare_bitfit, io.save_trained,
                "BitFit: bias vectors and the task head train (Ben Zaken et al. 2022)", NoOptions),
    TrainMethod("houlsby", prepare_houlsby, io.save_trained,
                "Houlsby adapters after attention output and FFN, m = method.bottleneck; LayerNorms and "
                "head train (Houlsby et al. 2019)", HoulsbyOptions),
    lora_variant("dora", "DoRA: LoRA with a trained per-row magnitude (Liu et al. 2024), via PEFT", use_dora=True),
    lora_variant("rslora", "rsLoRA: LoRA scaled by alpha / sqrt(r) (Kalajdzievski 2023), via PEFT",
                 use_rslora=True),
    TrainMethod("vera", prepare_vera, io.save_vera,
                "VeRA: shared frozen random A, B; trained vectors d, b; rank method.vera_rank "
                "(Kopiczko et al. 2024), via PEFT", VeraOptions),
    lora_variant("loraplus", f"LoRA+: lr of lora_B = method.loraplus_ratio (default {LORAPLUS_RATIO:g}) x lr of A "
                 "(Hayou et al. 2024)", loraplus_ratio=lambda o: o.loraplus_ratio or LORAPLUS_RATIO),
]

for _method in BASELINES:
    register_method(_method)
