"""The precision policy (docs/real-models.md#precision): whatever dtype a model is loaded in,
the weights that train (and so AdamW's state) are fp32; the compute precision is
``trainer.precision`` (bf16-mixed on GPU). A 1e-6 update to a bf16 weight of ~0.02 rounds to
nothing (bf16 spacing there is ~1.2e-4), so a bf16 master copy would make DPO a no-op."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from eightfold.models import tiny_gpt
from tests.helpers import compose_cfg

# A small run of the procedural task (the smoke experiment's data; its model keys are tiny_gpt's).
SMALL = ["data.size=64", "data.test_size=64", "data.task.chains=2", "data.task.steps=1"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def saved_bf16_model(directory: Path) -> Path:
    """A random GPT-2 with the char tokenizer, stored in bf16 as a hub checkpoint would be."""
    model, tokenizer = tiny_gpt(n_layer=1, n_embd=32, n_head=2, n_positions=128, seed=0)
    model.to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def saved_bf16_llama(directory: Path) -> Path:
    """The real-model test's tiny Llama and byte-level BPE tokenizer (tests/real_model.py), stored
    in bf16."""
    from transformers import LlamaForCausalLM

    from tests.real_model import save_tiny_llama, task_texts, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(task_texts(size=200, chains=2, steps=1, modulus=7))
    save_tiny_llama(directory, tokenizer)
    LlamaForCausalLM.from_pretrained(directory).to(torch.bfloat16).save_pretrained(directory)
    return directory


# each architecture with the name of its final norm (initialised at 1.0)
ARCHS = {
    "gpt2": (saved_bf16_model, "transformer.ln_f.weight"),
    "llama": (saved_bf16_llama, "model.norm.weight"),
}


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_bf16_load_trains_fp32_master_weights(precision, arch, tmp_path):
    """model=hf with model.dtype=bfloat16, one AdamW step at lr 1e-6 through the objective's own
    configure_optimizers: the weights and the optimizer state are fp32, and nearly every weight
    moved (in bf16 only those with |w| < ~2.6e-4 could, about 1 % of them, and no norm weight at
    1.0). GPT-2 with the char tokenizer and the real-model test's Llama with its BPE tokenizer."""
    save, final_norm = ARCHS[arch]
    name = save(tmp_path / "bf16")
    cfg = compose_cfg(
        [
            *SMALL,
            "model=hf",
            f"model.name={name}",
            "model.dtype=bfloat16",
            "objective.module.lr=1e-6",
            "objective.module.warmup_steps=0",
            f"trainer.precision={precision}",
            f"paths.root={tmp_path / 'root'}",
        ]
    )
    data = instantiate(cfg.data, _convert_="all")
    data.prepare_examples()
    model, tokenizer = instantiate({k: v for k, v in cfg.model.items() if k != "lora"})
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # loaded as asked
    data.tokenizer = tokenizer
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    module = instantiate(cfg.objective.module, model=model, tokenizer=tokenizer, _convert_="all")
    train_data = module.prepare(cfg, data, None) or data
    trainer = instantiate(
        cfg.trainer,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=train_data)

    assert trainer.global_step == 1
    params = dict(module.model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}
    state = trainer.optimizers[0].state
    assert {s["exp_avg"].dtype for s in state.values()} == {torch.float32}
    moved = sum(int((params[n].detach() != w).sum()) for n, w in before.items())
    total = sum(w.numel() for w in before.values())
    assert moved / total > 0.9, f"only {moved} of {total} weights moved at lr 1e-6"
    ln = params[final_norm].detach()
    assert (ln != 1.0).all() and (ln - 1.0).abs().max() < 1e-5  # one step of ~lr from 1.0


@pytest.mark.parametrize(
    "model, saved",
    [
        (["model=hf", "model.dtype=bfloat16"], torch.bfloat16),  # the dtype asked for
        (["model=hf", "model.dtype=auto"], torch.bfloat16),  # the checkpoint's own
        (["model.n_layer=1", "model.n_embd=32", "model.n_head=2"], torch.float32),  # tiny_gpt
    ],
    ids=["hf-bfloat16", "hf-auto", "tiny_gpt"],
)
def test_a_run_trains_fp32_and_saves_its_model_in_the_load_dtype(model, saved, tmp_path):
    """A whole SFT run (eightfold.train.run): the weights that trained (last.ckpt, the Lightning
    state) are fp32, the saved model/ is those weights cast to the load dtype, and pi_sft loads
    it in that dtype. A bf16-loaded model saved in fp32 would double the 7B model's 14 GB and
    make pi_sft sample in fp32; a tiny_gpt run keeps fp32 throughout."""
    from safetensors.torch import load_file

    from eightfold.objectives.pi_sft import load_pretrained
    from eightfold.rundir import run_dir
    from eightfold.runfiles import MODEL_DIR, RESULT, last_checkpoint
    from eightfold.train import run

    if model[0] == "model=hf":
        model = [*model, f"model.name={saved_bf16_model(tmp_path / 'bf16')}"]
    cfg = compose_cfg(
        [
            *SMALL,
            *model,
            "save_model=true",
            "trainer.max_steps=3",
            "checkpoint_every_n_steps=100",
            "trainer.enable_progress_bar=false",
            f"paths.root={tmp_path / 'root'}",
        ]
    )
    run(cfg)
    directory = run_dir(cfg)
    assert (directory / RESULT).is_file()  # evaluated after the cast

    trained = torch.load(last_checkpoint(directory), weights_only=False)["state_dict"]
    trained = {k.removeprefix("model."): v for k, v in trained.items()}
    weights = load_file(directory / MODEL_DIR / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {saved}
    for name, w in weights.items():
        assert trained[name].dtype == torch.float32, name
        assert torch.equal(w, trained[name].to(saved)), name
    assert {p.dtype for p in load_pretrained(directory / MODEL_DIR)[0].parameters()} == {saved}
