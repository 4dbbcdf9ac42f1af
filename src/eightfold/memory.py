"""Will it fit: GPU memory per device of one training step, estimated from the config alone.

Standard library only (no torch, no omegaconf), so the sweeper can check every run of a sweep
before anything heavy is imported or submitted. ``estimate_config(cfg)`` reads a composed run
config; ``estimate(shape, ...)`` is the formula itself. Every part is in bytes per device:

1. **params, grads, optimizer** (ZeRO, Rajbhandari et al. 2020, §3.1: 16 bytes/param for mixed
   precision Adam). eightfold's precision policy keeps fp32 master weights (4) and fp32 AdamW
   state (exp_avg + exp_avg_sq: 8) whatever the load dtype (``models.fp32_master_weights``), and
   fp32 gradients (4). DDP adds its gradient buckets (torch's reducer copies the gradients into
   flat buckets unless ``gradient_as_bucket_view=True``, which Lightning leaves off): 4 more.
   FSDP shards all three over the devices it shards on and adds the compute copies of the layers
   it has gathered (bf16 under mixed precision): the root (embeddings, head, final norm) and two
   decoder layers (the current one and the prefetched one), plus one layer's unsharded gradient.
2. **activations**: what autograd keeps for backward, per token per layer. The form follows
   Korthikanti et al. 2022 ("Reducing activation recomputation", §4.1: ``s*b*h*(34 + 5*a*s/h)``
   bytes per layer for a 16-bit GPT layer) but counts the tensors the Hugging Face layers actually
   save (tests/test_memory.py measures them): the residual stream and the norms stay fp32 under
   autocast (HF's RMSNorm upcasts), autocast casts a projection's input once per projection (q, k,
   v; gate, up), a gated MLP saves four ``I``-wide tensors, GPT-2's ``gelu_new`` five. With sdpa /
   flash attention the ``5*a*s/h`` score term is not stored (eager attention only). Activation
   checkpointing keeps each layer's input and recomputes one layer at a time.
3. **logits**: the [tokens, vocab] logits in the compute dtype, their fp32 upcast, the saved
   log-softmax and its gradient (``objectives.base.token_logps``): ``e + 4 + 8`` bytes per
   element (12 when the compute dtype is fp32 and the upcast is no copy);
   with ``perf.logits_chunk_size`` only one chunk of tokens at a time.

DPO-family objectives forward ``2 x`` their pair batch (chosen + rejected in one forward). They
keep no reference model during training: the reference log-probs are computed once before it
(``preference.cached_reference_logps``) and pi_sft is released (``PiSft.release``), so no frozen
copy is counted. The parts are summed although gradients and activations peak at different
moments of a step, so the estimate errs high; measured against PyTorch's peak on CPU and the H100
anchors in docs/sweeps-and-slurm.md#will-it-fit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

GIB = 2**30
TINY_VOCAB = 54  # len(models.char_tokenizer()): 4 specials + 50 characters (a test checks it)


class MemoryConfigError(ValueError):
    """A config the estimator cannot read (an unknown hub model name, a bad gpu_memory_gib)."""


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need of a causal LM; ``params()`` counts its parameters."""

    layers: int
    hidden: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int
    context: int
    gated: bool = True  # SiLU-gated MLP + RMSNorm (Llama, Qwen2, Mistral); False: GPT-2
    tied: bool = False  # lm_head shares the embedding matrix
    qkv_bias: bool = False  # Qwen2

    def layer_params(self) -> int:
        h, kv = self.hidden, self.hidden * self.kv_heads // self.heads
        if not self.gated:  # GPT-2 block: ln_1, c_attn, c_proj, ln_2, c_fc, c_proj (with biases)
            i = self.intermediate
            return 2 * h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * i + i) + (i * h + h)
        attn = 2 * h * h + 2 * h * kv + ((h + 2 * kv) if self.qkv_bias else 0)
        return attn + 3 * h * self.intermediate + 2 * h  # q, k, v, o; gate, up, down; two norms

    def params(self) -> int:
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        if not self.gated:  # + learned positions, final LayerNorm (weight, bias)
            return (
                embed
                + self.context * self.hidden
                + self.layers * self.layer_params()
                + 2 * self.hidden
            )
        return embed + self.layers * self.layer_params() + self.hidden


# Hub names whose config.json cannot be read here (no hub access): their published configs.
KNOWN_MODELS: dict[str, ModelShape] = {
    "deepseek-ai/deepseek-math-7b-base": ModelShape(30, 4096, 102400, 11008, 32, 32, 4096),
    "deepseek-ai/deepseek-math-7b-instruct": ModelShape(30, 4096, 102400, 11008, 32, 32, 4096),
    "deepseek-ai/deepseek-math-7b-rl": ModelShape(30, 4096, 102400, 11008, 32, 32, 4096),
    "meta-llama/Llama-2-7b-hf": ModelShape(32, 4096, 32000, 11008, 32, 32, 4096),
    "Qwen/Qwen2.5-0.5B": ModelShape(24, 896, 151936, 4864, 14, 2, 32768, tied=True, qkv_bias=True),
    "Qwen/Qwen2.5-1.5B": ModelShape(
        28, 1536, 151936, 8960, 12, 2, 131072, tied=True, qkv_bias=True
    ),
    "Qwen/Qwen2.5-7B": ModelShape(28, 3584, 152064, 18944, 28, 4, 131072, qkv_bias=True),
    "Qwen/Qwen2.5-Math-1.5B": ModelShape(
        28, 1536, 151936, 8960, 12, 2, 4096, tied=True, qkv_bias=True
    ),
    "Qwen/Qwen2.5-Math-7B": ModelShape(28, 3584, 152064, 18944, 28, 4, 4096, qkv_bias=True),
}
for _name in [n for n in KNOWN_MODELS if n.startswith("Qwen/Qwen2.5-") and "Math" not in n]:
    KNOWN_MODELS[_name + "-Instruct"] = KNOWN_MODELS[_name]


def shape_from_hf_config(config: Mapping[str, Any]) -> ModelShape:
    """A ``config.json`` of a Llama/Qwen2/Mistral-style or GPT-2 model."""
    if config.get("model_type") == "gpt2" or "n_embd" in config:
        h = int(config["n_embd"])
        return ModelShape(
            layers=int(config["n_layer"]),
            hidden=h,
            vocab=int(config["vocab_size"]),
            intermediate=int(config.get("n_inner") or 4 * h),
            heads=int(config["n_head"]),
            kv_heads=int(config["n_head"]),
            context=int(config.get("n_positions", 1024)),
            gated=False,
            tied=True,
        )
    heads = int(config["num_attention_heads"])
    return ModelShape(
        layers=int(config["num_hidden_layers"]),
        hidden=int(config["hidden_size"]),
        vocab=int(config["vocab_size"]),
        intermediate=int(config["intermediate_size"]),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        context=int(config.get("max_position_embeddings") or 4096),
        tied=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias")),
    )


def model_shape(model: Mapping[str, Any]) -> ModelShape:
    """The shape of ``cfg.model``: tiny_gpt from its keys, hf from ``<name>/config.json`` when
    ``name`` is a local directory, else from :data:`KNOWN_MODELS`."""
    target = str(model.get("_target_", ""))
    if target.endswith("tiny_gpt"):
        h = int(model.get("n_embd", 128))
        n_head = int(model.get("n_head", 4))
        return ModelShape(
            int(model.get("n_layer", 2)),
            h,
            TINY_VOCAB,
            4 * h,
            n_head,
            n_head,
            int(model.get("n_positions", 128)),
            gated=False,
            tied=True,
        )
    name = str(model.get("name"))
    local = Path(name).expanduser() / "config.json"
    if local.is_file():
        return shape_from_hf_config(json.loads(local.read_text()))
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name]
    raise MemoryConfigError(
        f"model.name={name!r}: no config.json there and not a known hub name, so its memory"
        f" cannot be estimated; use a local model directory or one of {', '.join(KNOWN_MODELS)}"
        " (or gpu_memory_gib=null to skip the check)"
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training step, by part; ``overlap`` is what two parts never hold
    at the same moment (with activation checkpointing, the logits and the recomputed layer)."""

    params: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    overlap: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts().values()) - self.overlap

    def parts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "overlap"}

    def largest(self) -> tuple[str, int]:
        return max(self.parts().items(), key=lambda kv: kv[1])

    def fits(self, gpu_gib: float) -> bool:
        return self.total <= gpu_gib * GIB

    def describe(self, gpu_gib: float | None = None) -> str:
        """``61.2/80 GiB`` (or ``61.2 GiB`` without a limit)."""
        limit = f"/{gpu_gib:g}" if gpu_gib is not None else ""
        return f"{self.total / GIB:.1f}{limit} GiB"


# Precision of trainer.precision -> (compute element bytes e, autocast: one cast per projection).
PRECISIONS = {
    "32-true": (4, False),
    "32": (4, False),
    "64-true": (8, False),
    "bf16-mixed": (2, True),
    "16-mixed": (2, True),
    "bf16-true": (2, False),
    "16-true": (2, False),
}
STRATEGIES = ("single", "ddp", "fsdp", "fsdp_grad_op", "fsdp_hybrid")


def layer_activation_bytes(
    shape: ModelShape, e: int, autocast: bool, eager: bool
) -> tuple[float, float]:
    """Bytes one layer saves for backward, per token, and per token per token of the sequence
    (eager attention's scores; 0 otherwise). See the module docstring, step 2.

    r = 4: the residual stream and the norms are fp32 under autocast and inside HF's RMSNorm;
    casts: autocast casts a projection's input for each projection, otherwise one shared copy.
    """
    h, i = shape.hidden, shape.intermediate
    kv = h * shape.kv_heads // shape.heads
    r = 4 if (autocast or shape.gated) else e
    if shape.gated:
        norms = 2 * (2 * r * h)  # each RMSNorm: its input and the normalised x (fp32)
        casts = (3 + 2) * e * h if autocast else 2 * e * h  # inputs of q,k,v and gate,up
        attn = e * (3 * h + 2 * kv)  # q, k, v after RoPE; sdpa output; o_proj input
        mlp = 4 * e * i  # gate, silu(gate), up, their product
    else:
        norms = 2 * r * h  # LayerNorm saves its input (mean / rstd are per token)
        casts = 2 * e * h  # c_attn and c_fc inputs (one copy each)
        attn = e * (3 * h + 2 * h)  # fused qkv, sdpa output, c_proj input
        mlp = 5 * e * i  # gelu_new's composite ops keep 4 I-wide tensors, c_proj's input one more
    scores = 5 * shape.heads * e / 2 if eager else 0  # Korthikanti's 5as/h term, per token per s
    return norms + casts + attn + mlp, scores


def estimate(
    shape: ModelShape,
    batch: int,
    seq_len: int,
    *,
    strategy: str = "single",
    shards: int = 1,
    precision: str = "bf16-mixed",
    checkpointing: bool = False,
    logits_chunk: int | None = None,
    eager_attention: bool = False,
    trainable: bool = True,
    load_bytes: int = 2,
) -> MemoryEstimate:
    """Memory per device of one optimizer step of ``batch`` sequences of ``seq_len`` tokens.

    ``strategy``: single / ddp (a full replica per device), fsdp (FULL_SHARD over ``shards``),
    fsdp_grad_op (SHARD_GRAD_OP: gathered params stay between forward and backward),
    fsdp_hybrid (sharded within a node: ``shards`` = devices per node). ``trainable=False``
    (LoRA): the base stays in its load dtype (``load_bytes``), no gradients or AdamW state
    (the adapters, < 1 %, are not counted).
    """
    if strategy not in STRATEGIES:
        raise MemoryConfigError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise MemoryConfigError(
            f"trainer.precision={precision!r}: expected one of {', '.join(PRECISIONS)}"
        )
    e, autocast = PRECISIONS[precision]
    p = shape.params()
    sharded = strategy.startswith("fsdp")
    n = max(1, shards) if sharded else 1
    # 1. states: fp32 master (4), fp32 grads (4), AdamW exp_avg + exp_avg_sq (8); ZeRO §3.1
    if trainable:
        params, grads, optimizer = 4 * p // n, 4 * p // n, 8 * p // n
    else:
        params, grads, optimizer = load_bytes * p // n, 0, 0
    if strategy == "ddp" and trainable:
        grads += 4 * p  # DDP's flat gradient buckets (gradient_as_bucket_view=False)
    if sharded:
        layer = shape.layer_params()
        root = p - shape.layers * layer
        gathered = p if strategy == "fsdp_grad_op" else root + 2 * layer
        params += e * gathered  # the compute copies FSDP all-gathers (param_dtype)
        grads += (e + 4) * layer if trainable else 0  # one unit's unsharded grad, fp32 for reduce
    # 2. activations (Korthikanti et al. 2022, counted for the HF layers; see the docstring)
    tokens = batch * seq_len
    per_token, scores = layer_activation_bytes(shape, e, autocast, eager_attention)
    per_layer = tokens * (per_token + scores * seq_len)
    r = 4 if (autocast or shape.gated) else e
    if checkpointing:  # each layer's input is kept, one layer is recomputed at a time
        activations = shape.layers * tokens * r * shape.hidden + per_layer
    else:
        activations = shape.layers * per_layer
    activations += tokens * (2 * r + e) * shape.hidden  # final norm and the head's input
    # 3. logits: compute dtype (e), their fp32 upcast (a copy unless e = 4), the saved
    # log-softmax and its gradient (token_logps; measured: tests/test_memory.py)
    scored = tokens if not logits_chunk else min(tokens, int(logits_chunk))
    logits = scored * shape.vocab * (e + (4 if e != 4 else 0) + 8)
    # with checkpointing the logits' gradient is gone before the first layer is recomputed
    overlap = int(min(per_layer, logits)) if checkpointing else 0
    return MemoryEstimate(params, grads, optimizer, int(activations), logits, overlap)


# ----------------------------------------------------------------------------- from a config
def _get(cfg: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(cfg, Mapping) and not hasattr(cfg, "get"):
            return default
        cfg = cfg.get(part)
        if cfg is None:
            return default
    return cfg


def on_accelerator(cfg: Mapping[str, Any]) -> bool:
    return str(_get(cfg, "trainer.accelerator", "cpu")) != "cpu"


def gpu_limit(cfg: Mapping[str, Any]) -> float | None:
    """``gpu_memory_gib`` (null: no check), checked to be a positive number."""
    value = _get(cfg, "gpu_memory_gib")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise MemoryConfigError(
            f"gpu_memory_gib={value!r} is not valid: the GPU's memory in GiB, e.g. 80, or null"
        )
    return float(value)


def strategy_of(trainer: Mapping[str, Any]) -> tuple[str, int, bool]:
    """(strategy, shards, activation checkpointing by the strategy) of ``cfg.trainer``."""
    devices = _get(trainer, "devices", 1)
    devices = int(devices) if isinstance(devices, int) else 1  # "auto": assume one
    world = devices * int(_get(trainer, "num_nodes", 1))
    strategy = _get(trainer, "strategy", "auto")
    if isinstance(strategy, Mapping) or hasattr(strategy, "keys"):
        target = str(_get(strategy, "_target_", ""))
        ckpt = bool(
            _get(strategy, "activation_checkpointing_policy")
            or _get(strategy, "activation_checkpointing")
        )
        if "FSDP" not in target:
            return ("ddp" if world > 1 else "single"), 1, ckpt
        mode = str(_get(strategy, "sharding_strategy", "FULL_SHARD")).upper()
        if mode == "NO_SHARD":
            return "ddp", 1, ckpt
        if mode.startswith("HYBRID"):
            return "fsdp_hybrid", devices, ckpt
        return ("fsdp_grad_op" if mode == "SHARD_GRAD_OP" else "fsdp"), world, ckpt
    name = str(strategy).lower()
    if "fsdp" in name:
        return "fsdp", world, False
    if "ddp" in name or world > 1:
        return "ddp", 1, False
    return "single", 1, False


def step_batch(cfg: Mapping[str, Any]) -> int:
    """Sequences in one forward: an objective's own batch (``objective.module.batch_size``;
    the DPO family counts pairs, 2 sequences each) or ``data.batch_size``."""
    module = _get(cfg, "objective.module", {})
    pairs = _get(module, "batch_size")
    if pairs is None:
        return int(_get(cfg, "data.batch_size", 1))
    preference = _get(module, "ref_batch_size") is not None  # DPOModuleConfig: pairs
    return int(pairs) * (2 if preference else 1)


def seq_len(cfg: Mapping[str, Any], shape: ModelShape) -> int:
    """Tokens per sequence: the answer budget (``data.max_new_tokens``) plus a prompt of at most
    as many tokens, capped by the model's context (and by ``perf.pack_length`` for packed rows).
    Longer teacher solutions make the estimate low."""
    length = 2 * int(_get(cfg, "data.max_new_tokens", shape.context // 2))
    cap = shape.context
    if _get(cfg, "perf.packing") and _get(cfg, "perf.pack_length"):
        cap = min(cap, int(_get(cfg, "perf.pack_length")))
    return max(1, min(length, cap))


def estimate_config(cfg: Mapping[str, Any]) -> MemoryEstimate:
    """:func:`estimate` for a composed run config (a dict or a DictConfig)."""
    shape = model_shape(_get(cfg, "model", {}))
    strategy, shards, strategy_ckpt = strategy_of(_get(cfg, "trainer", {}))
    precision = str(_get(cfg, "trainer.precision", "32-true"))
    dtype = str(_get(cfg, "model.dtype", "auto"))
    return estimate(
        shape,
        step_batch(cfg),
        seq_len(cfg, shape),
        strategy=strategy,
        shards=shards,
        precision=precision,
        checkpointing=bool(_get(cfg, "perf.gradient_checkpointing")) or strategy_ckpt,
        logits_chunk=_get(cfg, "perf.logits_chunk_size"),
        eager_attention=_get(cfg, "model.attn_implementation") == "eager",
        trainable=not _get(cfg, "model.lora"),
        load_bytes=4 if dtype in ("float32", "fp32") else 2,
    )


def refusal(est: MemoryEstimate, gpu_gib: float) -> str:
    """Why a run that does not fit is refused, in one line (the sweeper prefixes the run)."""
    part, size = est.largest()
    return (
        f"does not fit: it needs about {est.total / GIB:.1f} GiB per device, more than"
        f" gpu_memory_gib={gpu_gib:g} (largest part: {part} {size / GIB:.1f} GiB); shard it"
        " (trainer=fsdp), checkpoint activations (perf.gradient_checkpointing=true), chunk the"
        " logits (perf=gpu) or lower the batch"
    )


def summary(est: MemoryEstimate) -> str:
    return ", ".join(f"{k} {v / GIB:.1f}" for k, v in est.parts().items()) + " GiB"


__all__ = [
    "KNOWN_MODELS",
    "MemoryConfigError",
    "MemoryEstimate",
    "ModelShape",
    "estimate",
    "estimate_config",
    "gpu_limit",
    "model_shape",
    "on_accelerator",
    "refusal",
]
