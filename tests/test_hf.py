"""ailora inside Hugging Face Trainer and TRL's SFTTrainer (tier 1, tiny models, a few steps each):
every checkpoint loads on the ORIGINAL base with plain PEFT and reproduces the model at its step,
resume_from_checkpoint continues exactly, per-role learning rates reach Trainer's optimizer, and a
checkpoint written without the callback refuses to load instead of loading wrong."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
import transformers as T

import ailora
import ailora.hf
from ailora.core.adapters import RESIDUAL_FORM
from ailora.errors import AiloraError
from tests.tiny_models import build, save_tiny_llama, tiny_tokenizer

STEPS, SAVE_EVERY, BATCH = 4, 2, 4


class Rows(torch.utils.data.Dataset):
    """Seeded random token ids, with class labels (a classifier) or the ids themselves (a causal LM)."""

    def __init__(self, causal: bool, n: int = STEPS * BATCH, length: int = 8, vocab: int = 90):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(4, vocab, (n, length), generator=g)
        self.labels = self.ids.clone() if causal else torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


PROBE = torch.randint(4, 90, (2, 8), generator=torch.Generator().manual_seed(5))


def logits(model, ids: torch.Tensor = PROBE) -> torch.Tensor:
    was_training = model.training
    with torch.no_grad():
        out = model.eval()(input_ids=ids).logits.detach().clone()
    model.train(was_training)
    return out


class Snapshots(T.TrainerCallback):
    """The model's probe logits at every checkpoint, for comparison with what is reloaded from it."""

    def __init__(self, ids: torch.Tensor = PROBE):
        self.ids, self.at = ids, {}

    def on_save(self, args, state, control, model=None, **kwargs):
        self.at[state.global_step] = logits(model, self.ids)


def original_model(arch: str):
    if arch == "bert":
        return build("bert", T.BertForSequenceClassification, num_labels=3, dropout=False).eval()
    return build("llama", dropout=False).eval()


def trainer_for(model, out, callbacks, max_steps=STEPS):
    args = T.TrainingArguments(output_dir=str(out), max_steps=max_steps, save_steps=SAVE_EVERY, logging_steps=1,
                               per_device_train_batch_size=BATCH, report_to=[], use_cpu=True, seed=0,
                               disable_tqdm=True, save_strategy="steps", dataloader_num_workers=0)
    return T.Trainer(model=model, args=args, train_dataset=Rows(causal=not isinstance(model.get_base_model(),
                                                                                    T.BertForSequenceClassification)),
                     optimizer_cls_and_kwargs=ailora.hf.optimizer_cls_and_kwargs(model, lr=1e-2),
                     callbacks=callbacks)


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def lora_tensors(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_trainer_checkpoints_load_on_the_original_base_and_resume_exactly(arch, tmp_path):
    original = original_model(arch)
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    snapshots = Snapshots()
    trainer = trainer_for(model, tmp_path / "run", [ailora.hf.AiloraCallback(), snapshots])
    trainer.train()
    # per-role learning rates reached Trainer's optimizer: AILoRA's value adapters at 2x the query's
    lrs = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert lrs["value"] == pytest.approx(2e-2) and lrs["query"] == pytest.approx(1e-2)
    for step in (2, 4):
        checkpoint = tmp_path / "run" / f"checkpoint-{step}"
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(original), str(checkpoint))
        torch.testing.assert_close(logits(loaded), snapshots.at[step], atol=1e-5, rtol=0)
        assert (snapshots.at[step] - logits(original)).abs().max() > 1e-3  # training really moved it
    assert (tmp_path / "run" / "checkpoint-2" / "README.md").read_text().startswith("---\n")
    # resume from step 2 on a fresh apply: the same losses and the same adapters as the uninterrupted run
    again = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    resumed = trainer_for(again, tmp_path / "resumed", [ailora.hf.AiloraCallback()])
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    # (the resumed log starts with the checkpoint's first SAVE_EVERY entries; the rest are new)
    assert len(losses(trainer)) == STEPS and losses(resumed) == losses(trainer)
    final, final_again = lora_tensors(model), lora_tensors(again)
    assert final.keys() == final_again.keys()
    assert all(torch.equal(final[k], final_again[k]) for k in final)


def test_a_checkpoint_without_the_callback_refuses_to_load_on_the_original_base(tmp_path):
    original = original_model("bert")
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    trainer_for(model, tmp_path / "raw", [], max_steps=SAVE_EVERY).train()
    checkpoint = tmp_path / "raw" / f"checkpoint-{SAVE_EVERY}"
    with pytest.raises(ValueError, match="ailora-residual-form"):
        peft.PeftModel.from_pretrained(copy.deepcopy(original), str(checkpoint))
    with pytest.raises(AiloraError, match="raw save of an ailora model"):
        ailora.load(copy.deepcopy(original), checkpoint)
    # the live model keeps training and saving as usual; ailora.save writes the loadable adapter
    assert model.peft_config["default"].init_lora_weights == RESIDUAL_FORM
    ailora.save(model, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path / "adapter"))
    torch.testing.assert_close(logits(loaded), logits(model), atol=1e-5, rtol=0)


def test_plain_lora_starts_are_not_marked(tmp_path):
    """B0 = 0 everywhere: W is untouched, so the model's own save is already right on the original base."""
    original = original_model("bert")
    model = ailora.apply(copy.deepcopy(original), method="lora", rank=2)
    assert model.peft_config["default"].init_lora_weights is True


def test_optimizer_factory_groups_the_parameters_of_a_wrapped_model():
    model = ailora.apply(original_model("bert"), method="ailora", rank=2)

    class Wrapper(torch.nn.Module):  # as DDP: the model under ``module``
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    make, kwargs = ailora.hf.optimizer_cls_and_kwargs(model, lr=1e-3, optimizer_kwargs={"eps": 1e-7})
    optimizer = make()(Wrapper(model), **kwargs)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["value"] == pytest.approx(2e-3) and lrs["query"] == pytest.approx(1e-3) and "head" in lrs
    assert all(g["eps"] == 1e-7 for g in optimizer.param_groups)
    fsdp_name = "_fsdp_wrapped_module.base_model.model.bert._fsdp_wrapped_module.encoder.layer.0.x"
    assert ailora.hf.WRAPPER_PARTS.sub("", fsdp_name) == "base_model.model.bert.encoder.layer.0.x"
    with pytest.raises(AiloraError, match="ailora.apply"):
        ailora.hf.optimizer_cls_and_kwargs(original_model("bert"), lr=1e-3)


def test_a_foreign_adapter_of_another_rank_is_refused_on_resume(tmp_path):
    """The load hook takes back only this model's own plain form; anything else fails loudly."""
    original = original_model("bert")
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    ailora.hf.accept_plain_checkpoints(model)
    other = ailora.apply(copy.deepcopy(original), method="ailora", rank=2, seed=1, policy="value=principal")
    ailora.save(other, tmp_path / "other")
    with pytest.raises(RuntimeError, match="does not end in this model's start"):
        model.load_adapter(str(tmp_path / "other"), "default", is_trainable=True)


def test_sft_trainer_checkpoint_loads_on_the_original_base(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    model_dir = save_tiny_llama(tmp_path / "lm")
    original = T.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    texts = ["the movie was good and the plot was fun", "the film is bad and the story is dull",
             "what is the answer yes or no", "the cat sat on the mat"] * 2
    # bf16=False: SFTConfig turns bf16 autocast on by default, which would make the snapshots bf16 results
    config = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, save_steps=2, per_device_train_batch_size=4,
                           learning_rate=1e-2, report_to=[], use_cpu=True, max_length=16, disable_tqdm=True, bf16=False,
                           logging_steps=1)
    probe = tiny_tokenizer()(texts[:2], return_tensors="pt", padding=True)["input_ids"]
    snapshots = Snapshots(probe)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=Dataset.from_dict({"text": texts}),
                             processing_class=tiny_tokenizer(),
                             optimizer_cls_and_kwargs=ailora.hf.optimizer_cls_and_kwargs(model, lr=1e-2),
                             callbacks=[ailora.hf.AiloraCallback(), snapshots])
    trainer.train()
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path / "sft" / "checkpoint-2"))
    torch.testing.assert_close(logits(loaded, probe), snapshots.at[2], atol=1e-5, rtol=0)
    assert (snapshots.at[2] - logits(original, probe)).abs().max() > 1e-3
