"""Hugging Face Hub conventions for a saved adapter: its model card, how to serve it, and the upload.

The card is the ``README.md`` the Hub shows: YAML front matter the Hub indexes (``base_model``,
``library_name: peft``, tags) and a body saying what ailora did (method, per-role starts, rank,
alpha, solver, the output check) and how to load and serve the adapter. Everything here is text
computed from ``ailora.json``'s contents; ``push`` is the only function that touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

from ailora.errors import AiloraError

CARD_FILE = "README.md"


def _yaml_list(items: list[str]) -> str:
    return "".join(f"\n- {json.dumps(i)}" for i in items)


def serve_flags(r: int, adapter_dir: str = "my-adapter/", base: str = "BASE_MODEL") -> dict[str, str]:
    """The vLLM and SGLang command lines that serve an adapter of rank ``r`` on ``base``."""
    return {
        "vllm": f"vllm serve {base} --enable-lora --max-lora-rank {r} --lora-modules adapter={adapter_dir}",
        "sglang": (f"python -m sglang.launch_server --model-path {base} --enable-lora --max-lora-rank {r} "
                   f"--lora-paths adapter={adapter_dir}"),
    }


def model_card(meta: dict, config: dict, base_model: str | None) -> str:
    """README.md text of an adapter directory from its ``ailora.json`` (``meta``) and adapter config dict."""
    method = meta.get("method", "lora")
    front = ["---"]
    if base_model:
        front.append(f"base_model: {json.dumps(base_model)}")
    front += ["library_name: peft", f"tags:{_yaml_list(list(dict.fromkeys(['ailora', method, 'lora', 'peft'])))}", "---"]
    check = meta.get("output_check") or {}
    policy = ", ".join(f"{role}: {init}" for role, init in (meta.get("policy") or {}).items()) or "plain LoRA"
    flags = serve_flags(config["r"], base=base_model or "BASE_MODEL")
    lines = [
        f"# {method} adapter (ailora)", "",
        f"A standard PEFT LoRA adapter for the ORIGINAL base model{f' `{base_model}`' if base_model else ''}, "
        "written by [ailora](https://arxiv.org/abs/2510.08034): the adapters were trained from SVD-based "
        "starts on a residual base and saved as plain LoRA on the unmodified weights.", "",
        f"- method: `{method}`; per-role starts: {policy}",
        f"- rank per block: {meta.get('rank')}, alpha: {meta.get('alpha')}, rsLoRA: {meta.get('use_rslora', False)}, "
        f"solver: `{meta.get('solver')}`",
        f"- saved: r = {config['r']}, lora_alpha = {config['lora_alpha']} (one scale for every module), "
        f"compressed rank: {meta.get('compressed_rank')}, max relative error: {meta.get('max_relative_error', 0.0):.3g}",
    ]
    if meta.get("quantization"):
        from ailora.core.quantize import card_lines

        lines += card_lines(meta["quantization"])
    if check:
        lines.append(f"- output check at initialisation: max |diff| {check.get('max_abs_diff', 0.0):.2e} "
                     f"(tolerance {check.get('tolerance', 0.0):.0e})")
    lines += ["", "Load it with PEFT (no ailora needed):", "", "```python",
              "from peft import PeftModel", "model = PeftModel.from_pretrained(base_model, \"path/to/this/adapter\")",
              "```", "", "Serve it:", "", "```bash", flags["vllm"], flags["sglang"], "```", ""]
    return "\n".join(front + lines)


def push(adapter_dir, repo_id: str) -> str:
    """Upload the adapter directory as it was written to the Hub model repo ``repo_id`` (created if
    missing); returns the commit URL. Needs a network connection and a Hugging Face token.

    ``PeftModel.push_to_hub`` is not used: it would save the model's own (residual-form) tensors
    again instead of the plain-LoRA directory ``ailora.save`` wrote.
    """
    from huggingface_hub import HfApi

    d = Path(adapter_dir)
    if not (d / "adapter_config.json").is_file():
        raise AiloraError(f"{d} is not an adapter directory (no adapter_config.json)")
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(d), repo_type="model",
                             commit_message="Upload adapter written by ailora")
    return str(getattr(info, "commit_url", info))
