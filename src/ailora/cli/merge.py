"""``ailora merge``: base + adapter -> one full model directory (safetensors), output-checked."""

from __future__ import annotations


def run(args) -> int:
    import ailora
    from ailora.core.models import load_model, resolve_model_path

    base_path = resolve_model_path(args.base)
    base = load_model(base_path, kind=args.kind, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    model = ailora.load(base, args.adapter)
    check = ailora.merge_to_dir(model, args.out, overwrite=args.overwrite, tokenizer_from=base_path)
    print(f"wrote {args.out}/ (merged safetensors); max |diff| against base+adapter = "
          f"{check['max_abs_diff']:.2e} (tolerance {check['tolerance']:.0e})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "merge", help="merge an adapter into its base model and write the full model",
        description="Load the base model and a PEFT LoRA adapter (such as one written by ailora), merge the adapter "
        "into the weights, check the merged model's outputs against base+adapter, and write the full model "
        "as safetensors (tokenizer files copied along).",
    )
    p.add_argument("--base", required=True, help="base model directory (or minilm / smollm2)")
    p.add_argument("--adapter", required=True, help="adapter directory")
    p.add_argument("--out", required=True, help="directory for the merged model")
    p.add_argument("--kind", default="auto", help="model class, as in `ailora init --kind`")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.set_defaults(func=run)
