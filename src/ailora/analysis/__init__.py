"""Analyses of the AILoRA paper (arXiv 2510.08034), as pure functions over tensors and models.

Figure 1 c, d: `update_norms`; Figures 1 a, b and 8: `tsne_of_weights`; spectra with the
slices SVD initialisations take: `singular_spectrum`; Figures 4a and 7: `subspace_similarity`,
`similarity_by_layer`, `lora_deltas`; Figure 4b: `forgetting_loss`; Figure 3: `read_run`,
`mean_by_method`, and against optimizer steps `read_steps`, `band`, `steps_to_fraction`,
`plot_step_curves`; post-hoc adapters: `extract_lora`, `peft_adapter`, `extract_adapter_dir`.
The target weights come from `role_weights` / `role_deltas` (``ailora.core.roles``), and each
analysis end to end, as ``ailora analyze`` runs it, from `ANALYSES` (``analyze_<name>``).
"""

from ailora.analysis.commands import (
    ANALYSES,
    analyze_curves,
    analyze_forgetting,
    analyze_norms,
    analyze_similarity,
    analyze_spectrum,
    analyze_tsne,
)
from ailora.analysis.curves import (
    RunCurves,
    StepCurves,
    band,
    mean_by_method,
    read_run,
    read_steps,
    steps_to_fraction,
)
from ailora.analysis.export import extract_adapter_dir
from ailora.analysis.extract import LoraFactors, energy_rank, extract_lora, peft_adapter, truncated_lora
from ailora.analysis.forgetting import combine_forgetting, forgetting_loss, mlm_positions
from ailora.analysis.norms import relative_update_norms, update_norms
from ailora.analysis.plots import plot_curves, plot_step_curves, save_figure
from ailora.analysis.similarity import (
    lora_deltas,
    similarity_by_layer,
    subspace_similarity,
    top_left_singular_vectors,
    update_similarity,
)
from ailora.analysis.spectrum import singular_spectrum
from ailora.analysis.tsne import default_perplexity, tsne_embedding, tsne_of_weights
from ailora.analysis.weights import (
    load_checkpoint,
    matched_roles,
    role_deltas,
    role_weights,
    split_roles,
)

__all__ = [
    "ANALYSES",
    "LoraFactors",
    "RunCurves",
    "StepCurves",
    "analyze_curves",
    "analyze_forgetting",
    "analyze_norms",
    "analyze_similarity",
    "analyze_spectrum",
    "analyze_tsne",
    "combine_forgetting",
    "default_perplexity",
    "band",
    "energy_rank",
    "extract_adapter_dir",
    "extract_lora",
    "forgetting_loss",
    "load_checkpoint",
    "lora_deltas",
    "matched_roles",
    "mean_by_method",
    "mlm_positions",
    "peft_adapter",
    "plot_curves",
    "plot_step_curves",
    "read_run",
    "read_steps",
    "relative_update_norms",
    "role_deltas",
    "role_weights",
    "save_figure",
    "similarity_by_layer",
    "singular_spectrum",
    "steps_to_fraction",
    "split_roles",
    "subspace_similarity",
    "top_left_singular_vectors",
    "truncated_lora",
    "tsne_embedding",
    "tsne_of_weights",
    "update_norms",
    "update_similarity",
]
