"""Training methods selectable by name: the LoRA family and the baselines of the AILoRA paper's Table 4.

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

The task head trains in every method. Every method, the LoRA family's (``lora.py``) and the
baselines (``baselines.py``), is one entry of ``registry.METHODS``; importing this package registers
them all. Each method names the class of the options it reads (``ailora.core.options``);
``options.py`` builds a run's options for its method and refuses any it does not read;
``saving.py`` the save formats and ``load``.
"""

from ailora.methods import baselines, lora  # noqa: F401  (importing registers the methods)
from ailora.methods.houlsby import HoulsbyAdapter, add_houlsby, insertion_points
from ailora.methods.options import build_options
from ailora.methods.registry import METHODS, Prepared, TrainMethod, get_method, register_method
from ailora.methods.saving import load
from ailora.methods.select import BaselineState, bias_parameters, head_modules

__all__ = [
    "METHODS", "BaselineState", "HoulsbyAdapter", "Prepared", "TrainMethod", "add_houlsby", "bias_parameters",
    "build_options", "get_method", "head_modules", "insertion_points", "load", "register_method",
]
