"""Models and tokenizers: a tiny GPT-2 built from a config, or any Hugging Face causal LM.

Both paths return a ``transformers`` model and a ``PreTrainedTokenizerFast`` so that every
objective, sampler and evaluator works on either without special cases.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

# Every character the procedural task and the GSM8K-style formats can produce.
CHAR_VOCAB = "0123456789abcdefghijklmnopqrstuvwxyz=+-*/,.?|#\n ()"
SPECIAL = ("<pad>", "<bos>", "<eos>", "<unk>")


def char_tokenizer(chars: str = CHAR_VOCAB) -> PreTrainedTokenizerFast:
    """A character-level tokenizer built locally (no hub): one token per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def tiny_gpt(
    n_layer: int = 2,
    n_embd: int = 128,
    n_head: int = 4,
    n_positions: int = 128,
    dropout: float = 0.0,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised GPT-2 over the char vocabulary (0.42 M parameters at the defaults)."""
    tokenizer = char_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():  # the init is seeded but leaves the global stream alone
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model, tokenizer


def apply_lora(model: PreTrainedModel, lora: dict) -> PreTrainedModel:
    """Wrap ``model`` in peft LoRA adapters (``{r, alpha, dropout, target_modules}``); only the
    adapters train. ``merge_lora`` folds them back into plain weights for saving."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is in the dev extra
        raise ImportError("model.lora needs peft: pip install 'eightfold[lora]'") from err
    unknown = set(lora) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise ValueError(
            f"model.lora has unknown keys {sorted(unknown)}: valid are r, alpha, dropout, target_modules"
        )
    r = int(lora.get("r", 16))
    config = LoraConfig(
        r=r,
        lora_alpha=float(lora.get("alpha", 2 * r)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=lora.get("target_modules", "all-linear"),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in backward (non-reentrant). transformers 5 renamed the switch and
    its argument; 4.x has only the old names."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def fp32_master_weights(model: torch.nn.Module) -> None:
    """Cast the trainable parameters to fp32 in place, whatever dtype the model was loaded in.

    The precision policy (docs/real-models.md#precision): AdamW updates fp32 weights and keeps
    fp32 state; the compute precision is the trainer's (bf16-mixed autocasts on GPU; FSDP's
    mixed precision casts the shards). A bf16 master copy would lose the update: at a weight of
    ~0.01 the bf16 spacing is ~6e-5, so a DPO step of lr ~1e-6 rounds to zero. Frozen
    parameters (a LoRA base) keep their load dtype: they are never updated."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def load_dtype(model: PreTrainedModel) -> torch.dtype:
    """The dtype ``model`` was loaded in. ``from_pretrained`` records it in the config (``dtype``;
    ``torch_dtype`` before transformers 4.56): the one ``model.dtype`` asked for, or the
    checkpoint's own for ``auto``. A model built from a config (tiny_gpt) records none: fp32."""
    dtype = getattr(model.config, "dtype", None)
    if dtype is None and "torch_dtype" in vars(model.config):  # transformers < 4.56 (no property:
        dtype = model.config.torch_dtype  # reading the new one's alias logs a deprecation line)
    if dtype is None:
        return torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def to_load_dtype(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` with its parameters cast back, in place, to the dtype it was loaded in: the
    inverse of fp32_master_weights once training is over. fp32 is needed only for the updates;
    a bf16-loaded 7B model saved in fp32 takes 28 GB instead of 14, and pi_sft, which loads the
    saved model as it is, would sample at fp32 speed. Buffers stay as they are (RoPE's inv_freq
    is fp32 by design). A tiny or fp32-loaded model is returned unchanged."""
    dtype = load_dtype(model)
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return model


def merge_lora(model: PreTrainedModel) -> PreTrainedModel:
    """A LoRA-wrapped model with its adapters merged into the base weights; others unchanged."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def hf_causal_lm(
    name: str,
    dtype: str = "auto",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Any causal LM by hub name or local path (pretrained weights)."""
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(
        name, trust_remote_code=trust_remote_code, **kwargs
    )
    return model, tokenizer


def run_device(accelerator: str | None = "auto") -> torch.device:
    """Where a run samples, rolls out and evaluates: a GPU when the accelerator asks for one
    (``gpu``, ``cuda`` or ``auto``) and one exists, else the CPU; any other value (``cpu``,
    ``cuda:1``) is taken as it is."""
    if accelerator in ("gpu", "cuda", "auto", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(accelerator)


def fingerprint_model(model: PreTrainedModel) -> str:
    """sha256 of a model's state dict (for a model built in memory, e.g. in tests/benchmarks)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # bytes, any dtype
        h.update(name.encode() + b"\0" + raw.numpy().tobytes())
    return h.hexdigest()
