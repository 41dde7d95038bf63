"""The baselines of the AILoRA paper's Table 4, as training methods selectable by name.

    ailora train --method houlsby --task movie-sentiment method.bottleneck=64 ...
    ailora train --method ailora method.use_dora=true method.loraplus_ratio=16 ...

=========  ===================================================  ===============================
name       what trains                                          implementation
=========  ===================================================  ===============================
full       every weight                                         ``select.prepare_full``
bitfit     bias vectors + task head                             ``select.prepare_bitfit``
houlsby    bottleneck adapters + LayerNorms + task head         ``houlsby.py`` (PEFT has none)
dora       LoRA factors + per-row magnitude                     PEFT ``use_dora`` via ailora.core.apply
rslora     LoRA factors, scaling alpha / sqrt(r)                PEFT ``use_rslora`` via ailora.core.apply
vera       vectors d, b on shared frozen random A, B            PEFT ``VeraConfig``
loraplus   LoRA factors, lr of B = ratio x lr of A              ``ailora.param_groups``
=========  ===================================================  ===============================

The task head trains in every method. ``options.py`` holds which options each method reads (the
combination table); ``io.py`` the save formats and ``load``.
"""

from ailora.methods.houlsby import HoulsbyAdapter, add_houlsby, insertion_points
from ailora.methods.options import refuse_unused
from ailora.methods.saving import load
from ailora.methods.select import BaselineState, bias_parameters, head_modules

__all__ = [
    "BaselineState", "HoulsbyAdapter", "add_houlsby", "bias_parameters", "head_modules", "insertion_points",
    "load", "refuse_unused",
]
