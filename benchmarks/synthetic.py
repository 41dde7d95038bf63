"""A LLaMA checkpoint with seeded random weights, written one tensor at a time (never whole in memory):
what benchmarks/streaming_init.py and benchmarks/scale_7b.py time the streaming init on."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path


def llama_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor of ``config``'s LlamaForCausalLM: name -> shape (built on the meta device)."""
    import torch
    import transformers

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in transformers.LlamaForCausalLM(config).state_dict().items()}


def write_random_checkpoint(directory: Path, config, shapes: dict, groups: list[list[str]], dtype) -> int:
    """The tensors ``shapes`` in ``dtype``, one shard per group (transformers' file names and index),
    1-D tensors ones and the others N(0, 0.02) from a generator seeded 0, drawn in file order; then
    the config. Returns the bytes of tensor data."""
    import torch

    from ailora.core.checkpoint import FLOAT_DTYPES, INDEX_FILE, tensor_writer, write_shard

    g = torch.Generator().manual_seed(0)

    def random_tensor(name: str) -> Callable:
        shape = shapes[name]
        return lambda f: tensor_writer((torch.ones(shape) if len(shape) == 1 else
                                        torch.randn(shape, generator=g) * 0.02).to(dtype))(f)

    weight_map = {}
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_shard(directory / file, [(n, FLOAT_DTYPES[dtype], shapes[n], random_tensor(n)) for n in names],
                    {"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(math.prod(s) * dtype.itemsize for s in shapes.values())
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config.save_pretrained(directory)
    return total
