"""``ailora extract``: a PEFT LoRA adapter from a fully fine-tuned checkpoint, by truncated SVD of dW."""

from __future__ import annotations

import argparse


def summary(report: dict) -> str:
    """The lines ``ailora extract`` prints about an extraction report."""
    ranks = [layer["rank"] for layer in report["layers"].values()]
    energy = min(layer["energy_retained"] for layer in report["layers"].values())
    lines = [
        f"wrote {report['out']}: {len(ranks)} modules, ranks {min(ranks)}-{max(ranks)}, "
        f"{report['adapter_parameters']} parameters, min energy retained {energy:.4f}, "
        f"probe max |diff| {report['probe']['max_abs_diff']:.3g}"
    ]
    if report["other_changed_tensors"]["count"]:
        lines.append(
            f"note: {report['other_changed_tensors']['count']} other tensors changed in fine-tuning "
            "and are not in the adapter (see extract_report.json)"
        )
    return "\n".join(lines)


def _run(args) -> int:
    from ailora.analysis import extract_adapter_dir  # imported on use: start-up speed

    report = extract_adapter_dir(
        args.base,
        args.finetuned,
        args.out,
        rank=args.rank,
        energy=args.energy,
        targets=args.targets,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    print(summary(report))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "extract",
        help="post-hoc LoRA adapter from a full fine-tune (truncated SVD of dW)",
        description="Extract a PEFT LoRA adapter whose B @ A is the truncated SVD of W_ft - W_base for each "
        "target projection; writes adapter_config.json, adapter_model.safetensors and extract_report.json.",
    )
    parser.add_argument(
        "--base",
        required=True,
        help="base model directory (config.json + model.safetensors), or minilm / smollm2",
    )
    parser.add_argument("--finetuned", required=True, help="fully fine-tuned model directory")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank", type=int, help="rank r of every module (lora_alpha = r, scaling 1)")
    size.add_argument(
        "--energy",
        type=float,
        help="per module, the smallest rank keeping this fraction of sum(sigma^2), in (0, 1]",
    )
    parser.add_argument("--out", required=True, help="adapter directory to create (written atomically)")
    parser.add_argument(
        "--targets", default="query,value", help="projections: query, key, value (default: query,value)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe batch (default: 0)")
    parser.set_defaults(func=_run)
    return parser
