"""``ailora analyze <name>``: the paper's analyses, each writing <out>/<name>.png and <name>.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ailora.errors import AiloraError

DEFAULT_OUT = "analysis"


def _common(p: argparse.ArgumentParser, targets: bool = True) -> None:
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"output directory for <name>.png and <name>.json (default: {DEFAULT_OUT})",
    )
    if targets:
        p.add_argument(
            "--targets",
            default="query,value",
            help="projections to analyse: query, key, value (default: query,value)",
        )


def _labels(paths: list[str], labels: list[str] | None, flag: str) -> list[str]:
    if labels is None:
        return [Path(p).name or str(p) for p in paths]
    if len(labels) != len(paths):
        raise AiloraError(f"--labels has {len(labels)} names for {len(paths)} {flag} paths")
    return labels


def _write(args, name: str, fig, result: dict) -> int:
    from ailora.analysis.io import save_figure, write_json

    out = Path(args.out)
    png, js = save_figure(fig, out / f"{name}.png"), write_json(out / f"{name}.json", result)
    print(f"wrote {png} and {js}")
    return 0


def _norms(args) -> int:
    from ailora.analysis import relative_update_norms, role_deltas, split_roles, update_norms
    from ailora.analysis.io import load_state_dict
    from ailora.analysis.plots import plot_norms

    base = load_state_dict(args.base)
    base_roles = split_roles(base, args.targets)
    norms, relative = {}, {}
    for path, label in zip(args.finetuned, _labels(args.finetuned, args.labels, "--finetuned")):
        deltas = role_deltas(base, load_state_dict(path), args.targets)
        norms[label] = {role: update_norms(d) for role, d in deltas.items()}
        relative[label] = {role: relative_update_norms(d, base_roles[role]) for role, d in deltas.items()}
    result = {
        "analysis": "norms",
        "figure": "AILoRA Fig. 1 c, d",
        "base": args.base,
        "finetuned": args.finetuned,
        "frobenius_norm": norms,
        "relative_norm": relative,
    }
    return _write(args, "norms", plot_norms(norms), result)


def _tsne(args) -> int:
    from ailora.analysis import matched_roles, tsne_of_weights
    from ailora.analysis.io import load_state_dict
    from ailora.analysis.plots import plot_tsne

    base = load_state_dict(args.base)
    labels = _labels(args.finetuned, args.labels, "--finetuned")
    groups: dict[str, dict] = {}
    for path, label in zip(args.finetuned, labels):
        base_roles, ft_roles = matched_roles(base, load_state_dict(path), args.targets)
        for role in base_roles:
            groups.setdefault(role, {"base": base_roles[role]})[label] = ft_roles[role]
    by_role = {role: tsne_of_weights(g, args.perplexity, args.seed) for role, g in groups.items()}
    result = {
        "analysis": "tsne",
        "figure": "AILoRA Figs. 1 a, b and 8",
        "base": args.base,
        "finetuned": args.finetuned,
        "seed": args.seed,
        "tsne": by_role,
    }
    return _write(args, "tsne", plot_tsne(by_role), result)


def _spectrum(args) -> int:
    from ailora.analysis import singular_spectrum, split_roles
    from ailora.analysis.io import load_state_dict
    from ailora.analysis.plots import plot_spectrum

    if args.rank <= 0:
        raise AiloraError(f"--rank must be positive, got {args.rank}")
    roles = split_roles(load_state_dict(args.model), args.targets)
    spectra = {
        role: {n: singular_spectrum(w, args.rank) for n, w in ws.items()} for role, ws in roles.items()
    }
    if not any(spectra.values()):
        raise AiloraError(f"no {args.targets} projections found in {args.model}")
    result = {"analysis": "spectrum", "model": args.model, "rank": args.rank, "spectra": spectra}
    return _write(args, "spectrum", plot_spectrum(spectra, args.rank), result)


def _similarity(args) -> int:
    from ailora.analysis import lora_deltas, role_deltas, similarity_by_layer
    from ailora.analysis.io import load_state_dict, read_adapter
    from ailora.analysis.plots import plot_similarity

    if args.rank is not None and args.rank <= 0:
        raise AiloraError(f"--rank must be positive, got {args.rank}")
    full = role_deltas(load_state_dict(args.base), load_state_dict(args.finetuned), args.targets)
    sims, ranks = {}, {}
    for path, label in zip(args.adapter, _labels(args.adapter, args.labels, "--adapter")):
        adapter_config, adapter_state = read_adapter(path)
        learned = lora_deltas(adapter_state, adapter_config)
        per_role = {role: similarity_by_layer(learned, d, args.rank) for role, d in full.items()}
        sims[label] = {role: {n: v["phi"] for n, v in layers.items()} for role, layers in per_role.items()}
        ranks[label] = {role: {n: v["rank"] for n, v in layers.items()} for role, layers in per_role.items()}
    result = {
        "analysis": "similarity",
        "figure": "AILoRA Figs. 4a, 7",
        "base": args.base,
        "finetuned": args.finetuned,
        "adapters": args.adapter,
        "phi": sims,
        "rank": ranks,
    }
    return _write(args, "similarity", plot_similarity(sims), result)


def _forgetting(args) -> int:
    from transformers import AutoTokenizer

    from ailora.analysis.io import model_dir
    from ailora.analysis.lm import detect_objective, load_lm_pair, measure_forgetting, read_texts
    from ailora.analysis.plots import plot_forgetting

    for name in ("max_length", "batch_size"):
        if getattr(args, name) <= 0:
            raise AiloraError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    texts = read_texts(args.text, args.max_texts)
    objective = detect_objective(args.base) if args.objective == "auto" else args.objective
    tok_dir = args.tokenizer or str(model_dir(args.base))
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise AiloraError(
            f"no usable tokenizer in {tok_dir} (pass --tokenizer): {str(exc).splitlines()[0]}"
        ) from None
    results, shared = {}, []
    for path, label in zip(args.finetuned, _labels(args.finetuned, args.labels, "--finetuned")):
        base_model, ft_model, shared = load_lm_pair(args.base, path, objective, args.seed)
        results[label] = measure_forgetting(
            base_model,
            ft_model,
            tokenizer,
            texts,
            objective,
            args.max_length,
            args.batch_size,
            args.mask_prob,
            args.seed,
        )
    result = {
        "analysis": "forgetting",
        "figure": "AILoRA Fig. 4b",
        "base": args.base,
        "finetuned": args.finetuned,
        "text": args.text,
        "texts": len(texts),
        "objective": objective,
        "mask_prob": args.mask_prob,
        "seed": args.seed,
        "shared_random_head": shared,
        "results": results,
    }
    return _write(args, "forgetting", plot_forgetting(results), result)


def _curves(args) -> int:
    from dataclasses import asdict

    from ailora.analysis import mean_by_method, read_run
    from ailora.analysis.plots import plot_curves

    runs = [read_run(p) for p in args.runs]
    names = list(dict.fromkeys(m for r in runs for m in r.metrics))
    metric = args.metric or (names[0] if names else None)
    if args.metric and args.metric not in names:
        raise AiloraError(
            f"--metric {args.metric!r} not logged by any run; logged: {', '.join(names) or 'none'}"
        )
    means = mean_by_method(runs, metric)
    series = [
        {
            "method": r.method,
            "epochs": r.epochs,
            "train_loss": r.train_loss,
            "metric": r.metrics.get(metric, [None] * len(r.epochs)),
        }
        for r in runs
    ]
    result = {
        "analysis": "curves",
        "figure": "AILoRA Fig. 3",
        "metric": metric,
        "runs": [asdict(r) for r in runs],
        "mean_by_method": means,
    }
    return _write(args, "curves", plot_curves(means, series, metric), result)


def _add_weight_analyses(sub) -> None:
    p = sub.add_parser("norms", help="Frobenius norms of dW^Q, dW^V per layer, box plots (Fig. 1 c, d)")
    p.add_argument("--base", required=True, help="base model directory (config.json + model.safetensors)")
    p.add_argument("--finetuned", required=True, nargs="+", help="fully fine-tuned model directories")
    p.add_argument("--labels", nargs="+", help="one label per --finetuned (default: directory names)")
    _common(p)
    p.set_defaults(func=_norms)

    p = sub.add_parser("tsne", help="t-SNE of per-layer W^Q, W^V before/after fine-tuning (Figs. 1 a, b, 8)")
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument(
        "--finetuned", required=True, nargs="+", help="fine-tuned (or adapter-merged) model directories"
    )
    p.add_argument("--labels", nargs="+", help="one label per --finetuned (default: directory names)")
    p.add_argument(
        "--perplexity", type=float, help="t-SNE perplexity (default: (n-1)/3 clipped to [2, 30], n points)"
    )
    p.add_argument("--seed", type=int, default=0, help="t-SNE random state (default: 0)")
    _common(p)
    p.set_defaults(func=_tsne)

    p = sub.add_parser(
        "spectrum", help="singular values of each target weight, principal/minor slices marked"
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--rank", type=int, required=True, help="r: the slices an initialisation of rank r takes")
    _common(p)
    p.set_defaults(func=_spectrum)

    p = sub.add_parser("similarity", help="subspace similarity of LoRA updates with full FT dW (Figs. 4a, 7)")
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--finetuned", required=True, help="fully fine-tuned model directory (gives dW)")
    p.add_argument("--adapter", required=True, nargs="+", help="PEFT LoRA adapter directories")
    p.add_argument("--labels", nargs="+", help="one label per --adapter (default: directory names)")
    p.add_argument("--rank", type=int, help="r of phi (default: each adapter module's rank)")
    _common(p)
    p.set_defaults(func=_similarity)


def _add_output_analyses(sub) -> None:
    p = sub.add_parser("forgetting", help="CE / KL of fine-tuned against base predictions (Fig. 4b)")
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument(
        "--finetuned", required=True, nargs="+", help="fine-tuned (or adapter-merged) model directories"
    )
    p.add_argument("--labels", nargs="+", help="one label per --finetuned (default: directory names)")
    p.add_argument(
        "--text", required=True, help="held-out text: .txt (one per line) or .jsonl (field text/sentence)"
    )
    p.add_argument("--tokenizer", help="tokenizer directory (default: --base)")
    p.add_argument(
        "--objective",
        choices=("auto", "mlm", "causal"),
        default="auto",
        help="masked-LM (encoders) or next-token (decoders); auto reads config.json",
    )
    p.add_argument("--max-texts", type=int, default=512, help="use at most this many texts (default: 512)")
    p.add_argument(
        "--max-length", type=int, default=128, help="truncate texts to this many tokens (default: 128)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default: 16)")
    p.add_argument(
        "--mask-prob", type=float, default=0.15, help="fraction of tokens masked for mlm (default: 0.15)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the masked positions and of a missing LM head"
    )
    _common(p, targets=False)
    p.set_defaults(func=_forgetting)

    p = sub.add_parser("curves", help="train loss and validation metric per epoch across runs (Fig. 3)")
    p.add_argument("--runs", required=True, nargs="+", help="run directories (config.json + metrics.jsonl)")
    p.add_argument("--metric", help="validation metric to plot (default: the first one logged)")
    _common(p, targets=False)
    p.set_defaults(func=_curves)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "analyze",
        help="analyses of the AILoRA paper: PNG + JSON",
        description="Run one of the AILoRA paper's analyses; writes <out>/<name>.png and <out>/<name>.json.",
    )
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    _add_weight_analyses(sub)
    _add_output_analyses(sub)
    return parser
