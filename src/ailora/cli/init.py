"""``ailora init``: initialise adapters on a model, write them and a JSON report."""

from __future__ import annotations

import json
from pathlib import Path

from ailora.cli.common import add_method_args, parse_modules


def run(args) -> int:
    import ailora
    from ailora.core.models import load_model, resolve_model_path
    from ailora.core.policies import resolve_policy

    resolve_policy(args.method, args.targets, args.policy)  # fail on a bad method or role before loading
    path = resolve_model_path(args.model)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ailora.AiloraError(f"output directory {out} is not empty; pass --overwrite to replace it")
    model = load_model(path, kind=args.kind, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    model = ailora.apply(
        model, method=args.method, rank=args.rank, alpha=args.alpha, targets=args.targets, policy=args.policy,
        modules=parse_modules(args.modules), solver=args.solver, seed=args.seed, use_rslora=args.rslora,
        device=args.device, head=None if args.no_head else "auto", progress=not args.quiet,
    )
    report = model.ailora_state.report()
    report["model"] = str(path)
    ailora.save(model, out, overwrite=args.overwrite)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.quiet:
        check = report["output_check"]
        svs = [len(v) for rec in report["layers"] for v in rec["singular_values"].values()]
        print(f"{args.method}: {len(report['layers'])} layers, {sum(svs)} singular triplets moved, "
              f"{report['total_seconds']:.2f} s; output check max |diff| = {check['max_abs_diff']:.2e} "
              f"(tolerance {check['tolerance']:.0e}, {'passed' if check['passed'] else 'FAILED'})")
        print(f"wrote {out}/ (adapter_config.json, adapter_model.safetensors, ailora.json, report.json)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "init", help="initialise adapters on a model and write them with a JSON report",
        description="Initialise AILoRA (or another method's) adapters on a model, check that the model's outputs "
        "are unchanged, and write a PEFT adapter directory plus report.json (per layer: roles, shape, rank, "
        "singular values taken, seconds; total seconds; the output check). The adapter loads on the original "
        "base with peft.PeftModel.from_pretrained.",
    )
    p.add_argument("--model", required=True, help="model directory (config.json + safetensors), or minilm / smollm2")
    p.add_argument("--out", required=True, help="directory to write the adapter and report.json into")
    add_method_args(p)
    p.add_argument("--kind", default="auto",
                   help="model class: auto (the checkpoint's architecture), base, seq-cls, causal-lm, seq2seq-lm")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default=None, help="where the SVDs run, e.g. cuda (default: the weights' device)")
    p.add_argument("--no-head", action="store_true", help="do not train/save a task head even if the model has one")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    p.set_defaults(func=run)
