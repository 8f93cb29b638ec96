"""Offline stand-ins for the tiny ``hf-internal-testing/*`` hub repos that fixtures load.

Why: this machine has no network and no HF cache, yet most upstream fixtures call e.g.
``AutoTokenizer.from_pretrained("hf-internal-testing/tiny-random-t5")``. Only the transformer is under test
(cached vs uncached on the *same* pipeline), so text encoders/tokenizers merely need to produce well-formed
embeddings. We fabricate, once per process, local directories with byte-level tokenizers and tiny random
models whose sizes match the upstream repos' configs, and redirect ``from_pretrained`` for those ids only.
Rows that used a stand-in are marked in the report; ``--no-hub-standins`` turns this off (they then skip).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

_ROOT: Path | None = None
_ORIGINALS: dict[type, object] = {}  # class -> its own from_pretrained descriptor, for uninstall()
USED: set[str] = set()
REQUESTED: set[str] = set()  # every repo id asked for (hub skips name the ones without a stand-in)  # repo ids redirected since the last reset (the runner reports them per class)


# The real tiny Qwen2-VL repo ships a chat template; pipelines (Flux2-Klein, Z-Image, Ovis, HunyuanVideo-1.5)
# call apply_chat_template, so the stand-in has a minimal Qwen-style one.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% else %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chars() -> list[str]:
    """Printable ASCII: enough for the fixtures' English prompts and prompt templates."""
    return [chr(c) for c in range(33, 127)]


def _tokenizer(out: Path, cls_name: str, **kwargs) -> None:
    """Build with the tokenizer class itself (so a reload round-trips through the same class) and save."""
    import transformers

    kwargs.setdefault("model_max_length", 77 if cls_name == "CLIPTokenizer" else 512)  # upstream repos' values
    tok = getattr(transformers, cls_name)(**kwargs)
    tok.save_pretrained(out)


def _bytelevel_vocab(specials: list[str]) -> dict[str, int]:
    from tokenizers import pre_tokenizers

    vocab = {s: i for i, s in enumerate(specials)}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(ch, len(vocab))
    return vocab


def _metaspace_vocab(specials: list[str]) -> dict[str, int]:
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in ["\u2581", *_chars(), *("\u2581" + c for c in _chars())]:
        vocab.setdefault(ch, len(vocab))
    return vocab


def _model(out: Path, cls_name: str, cfg_cls_name: str, **cfg) -> None:
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, cfg_cls_name)(**cfg)
    getattr(transformers, cls_name)(config).save_pretrained(out)


def _build(root: Path) -> dict[str, Path]:
    """Fabricate each repo; sizes follow the upstream tiny repos' configs that fixtures' models depend on."""
    repos: dict[str, Path] = {}

    def t5_like(name: str, cfg_cls: str, model_cls: str) -> None:
        d = root / name
        vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
        vocab += [(c, -3.0) for c in _chars()] + [("\u2581" + c, -2.5) for c in _chars()]
        vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
        _tokenizer(d, "T5Tokenizer", vocab=vocab)
        _model(d, model_cls, cfg_cls, vocab_size=1000, d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=5,
               relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        repos[f"hf-internal-testing/{name}"] = d

    t5_like("tiny-random-t5", "T5Config", "T5EncoderModel")
    t5_like("tiny-random-umt5", "UMT5Config", "UMT5EncoderModel")
    d = root / "tiny-random-clip"
    _tokenizer(d, "CLIPTokenizer", vocab=_bytelevel_vocab(["<|startoftext|>", "<|endoftext|>"]), merges=[])
    repos["hf-internal-testing/tiny-random-clip"] = d
    d = root / "tiny-random-Qwen2VL"
    qwen = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
    _tokenizer(d, "Qwen2Tokenizer", vocab=_bytelevel_vocab(qwen), merges=[], pad_token="<|endoftext|>",
               eos_token="<|im_end|>", chat_template=QWEN_CHAT_TEMPLATE)
    repos["hf-internal-testing/tiny-random-Qwen2VLForConditionalGeneration"] = d
    d = root / "dummy-gemma"
    _tokenizer(d, "GemmaTokenizer")  # default vocab: <pad> <eos> <bos> <unk> only (the fixtures' Gemma has 8)
    repos["hf-internal-testing/dummy-gemma"] = d
    for name in ("llama-tokenizer", "dummy-hunyaunvideo", "tiny-random-LlamaForCausalLM"):
        d = root / name
        for sub in (d, d / "tokenizer") if name == "dummy-hunyaunvideo" else (d,):
            _tokenizer(sub, "LlamaTokenizer", vocab=_metaspace_vocab(["<unk>", "<s>", "</s>"]), merges=[],
                       pad_token="<unk>")
    repos["hf-internal-testing/llama-tokenizer"] = root / "llama-tokenizer"
    repos["finetrainers/dummy-hunyaunvideo"] = root / "dummy-hunyaunvideo"
    d = root / "tiny-random-LlamaForCausalLM"
    _model(d, "LlamaForCausalLM", "LlamaConfig", vocab_size=1000, hidden_size=16, intermediate_size=64,
           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2)
    repos["hf-internal-testing/tiny-random-LlamaForCausalLM"] = d
    d = root / "tiny-random-BertModel"
    bert = {s: i for i, s in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for c in _chars():
        bert.setdefault(c, len(bert))
        bert.setdefault("##" + c, len(bert))
    _tokenizer(d, "BertTokenizer", vocab=bert)
    _model(d, "BertModel", "BertConfig", vocab_size=1000, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
           intermediate_size=37, max_position_embeddings=512, type_vocab_size=16)
    repos["hf-internal-testing/tiny-random-BertModel"] = d
    return repos


@functools.cache
def repos() -> dict[str, Path]:
    """Build the stand-in directories (a few seconds, once per process)."""
    global _ROOT
    _ROOT = Path(tempfile.mkdtemp(prefix="dcp_hub_standins_"))
    return _build(_ROOT)


def _wrap(cls) -> None:
    fn = cls.__dict__.get("from_pretrained")
    if fn is None or getattr(fn, "_dcp_standin", False):
        return
    orig = fn.__func__
    _ORIGINALS[cls] = fn

    def from_pretrained(klass, name, *args, **kwargs):
        key = str(name)
        if not Path(key).exists():
            REQUESTED.add(key)
        if key in repos():
            USED.add(key)
            name = str(repos()[key])
        return orig(klass, name, *args, **kwargs)

    wrapped = classmethod(from_pretrained)
    wrapped._dcp_standin = True  # type: ignore[attr-defined]
    setattr(cls, "from_pretrained", wrapped)


def install() -> None:
    """Redirect ``from_pretrained`` of transformers' base/Auto classes for the stand-in repo ids only."""
    import transformers
    from transformers import (AutoConfig, AutoModel, AutoProcessor, AutoTokenizer, PretrainedConfig,
                              PreTrainedModel, ProcessorMixin)
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    classes = [AutoConfig, AutoModel, AutoProcessor, AutoTokenizer, PretrainedConfig, PreTrainedModel,
               ProcessorMixin, PreTrainedTokenizerBase]
    # tokenizer/config/model subclasses that override from_pretrained themselves
    for name in dir(transformers):
        if name.endswith(("Tokenizer", "TokenizerFast", "Config", "Model", "ForCausalLM", "Processor")):
            try:
                obj = getattr(transformers, name)
            except Exception:
                continue
            if isinstance(obj, type) and "from_pretrained" in obj.__dict__:
                classes.append(obj)
    for cls in classes:
        _wrap(cls)


def uninstall() -> None:
    """Restore every patched ``from_pretrained`` (tests call this so other test modules see stock transformers)."""
    for cls, fn in _ORIGINALS.items():
        setattr(cls, "from_pretrained", fn)
    _ORIGINALS.clear()


def patch_ftfy(pipeline_class: type) -> bool:
    """ftfy is not installed here and several diffusers pipelines call ``ftfy.fix_text`` in prompt cleaning
    unguarded (NameError). An identity stand-in is injected into the pipeline's module (prompt text only; the
    transformer is unaffected). Returns whether it was needed."""
    import sys
    import types

    mod = sys.modules.get(pipeline_class.__module__)
    if mod is None or hasattr(mod, "ftfy"):
        return False
    try:
        import ftfy  # noqa: F401
        return False
    except ImportError:
        pass
    src = Path(getattr(mod, "__file__", "") or "")
    if not src.is_file() or "ftfy." not in src.read_text():
        return False
    mod.ftfy = types.SimpleNamespace(fix_text=lambda text: text)
    return True
