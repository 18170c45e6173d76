"""PiNI — Positive-incentive Noise Injector, in one file.

Reference: S. Huang, H. Zhang, X. Li, "Enhance Vision-Language Alignment with Noise",
AAAI 2025 (arXiv 2412.10817). Authors' code: github.com/hyzhang98/PiNI.

Read this module top to bottom, like a chapter of the paper:

  1. Loading a frozen CLIP ............ `load_clip`, `clip_activation` (GELU or QuickGELU),
                                          `freeze_in_dtype`, `train_transform`
  2. Prompts and the text tower ........ `build_prompts`, `encode_text_embeddings`,
                                          `encode_text_shared_prefix` (exact shortcut)
  3. Gaussian noise, reparameterised ... `Gaussian`, `gaussian_kl`
  4. The text noise injectors ......... `NoiseInjector` (what every injector declares),
                                          `TextNoiseInjector` (free μ, σ — the paper's),
                                          `ConditionedTextNoiseInjector` (a variant)
  5. The image noise injectors ........ `ImageNoiseInjector` (cross-attention — the paper's),
                                          `PatchNoiseInjector`, `MLPNoiseInjector`,
                                          `PixelNoiseInjector` (variants); `IMAGE_INJECTORS`
  6. The PiNI model ................... `PiNI`  (forward -> logits for K noise samples),
                                          `cosine_logits`
  7. The objective .................... `pini_objective`, `pi_noise_information`
  8. Inference ........................ `PiNI.predict`, `PiNI.predict_with_spread` (methods of
                                          `PiNI`, at the end of its class in section 6)

Notation (as in the paper): x an image, y its class, P the prompt set, ε the noise,
μ and σ the mean and standard deviation of the noise distribution p_θ(ε | x, P),
z ~ N(0, I) the standard normal sample of the reparameterisation ε = μ + σ ⊙ z,
τ CLIP's temperature (1/τ = exp(logit_scale)), K the number of Monte-Carlo noise samples.

Equation numbers (Eq. 1)–(Eq. 9) are this module's own, not the paper's (docs/theory.md says why).
Each lives where its code is:

  (Eq. 1) CLIP's classifier p(y | x, P) ................. `PiNI` (class docstring), `PiNI.forward`
  (Eq. 2) the paper's pi-noise reading, I(T, E) ......... `pini_objective`, `pi_noise_information`
  (Eq. 3) the random variables and their joint .......... `pini_objective`
  (Eq. 4) what the loss provably bounds, and its gap .... `pini_objective`
  (Eq. 5) the K-sample Monte-Carlo estimate ............. `pini_objective`, `PiNI.forward`
  (Eq. 6) the reparameterisation ε = μ + σ ⊙ z .......... `Gaussian.sample`
  (Eq. 7) the cross-attention image injector ............ `ImageNoiseInjector`
  (Eq. 8) KL to a fixed prior — this project's optional
          regulariser, not a term of the paper ......... `gaussian_kl`, `pini_objective(kl_weight=β)`
  (Eq. 9) the predictive distribution over the noise .... `PiNI.predict(mode="average")`

What is the paper's claim and what is proved is kept apart: `pini_objective` says which is which,
and marks reconstructions of the paper's text *inferred*.
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import socket
import sys
import warnings
from urllib.parse import urlparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.models.resnet import BasicBlock

# -----------------------------------------------------------------------------------------
# 1. Loading a frozen CLIP
# -----------------------------------------------------------------------------------------

NO_WEIGHTS = (None, "", "none", "None", "random")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be fetched (e.g. no internet): the message says what to do."""


class CUDAError(RuntimeError):
    """The GPU failed while the model was loaded (out of memory, a bad device, a broken driver)."""


def _cuda_failure(error: BaseException) -> bool:
    accelerator = getattr(torch, "AcceleratorError", ())
    return isinstance(error, (torch.OutOfMemoryError, accelerator)) or "CUDA" in str(error)


def load_clip(model: str = "ViT-B-16", pretrained: Optional[str] = "openai", device="cpu",
              activation: str = "auto"):
    """Create a frozen open_clip CLIP, its tokenizer and its train/eval image transforms.

    Args:
        model: an open_clip model name ("ViT-B-16"; the OpenAI spelling "ViT-B/16" is accepted)
            or the path of an open_clip model-config JSON file (registered under its file stem).
        pretrained: an open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...), the path
            of a local checkpoint file, or None / "none" for random weights (tests, CPU coursework).
        device: where to put the model.
        activation: the MLP activation of both towers — "auto" (the one the weights were trained
            with: see `clip_activation`), "gelu" or "quick-gelu".

    Returns:
        (clip, tokenizer, train_transform, eval_transform). `clip` is in eval mode and no
        parameter requires grad: PiNI never changes a CLIP weight, it only learns noise.

    Raises:
        ValueError / FileNotFoundError with a message that names what was given and what is
        accepted (unknown model name, unknown tag, missing checkpoint file); WeightsUnavailable
        when a tag's weights cannot be downloaded.
    """
    name = _resolve_model_name(model)
    weights = _resolve_pretrained(name, pretrained)
    quick_gelu = clip_activation(name, weights, activation) == "quick-gelu"
    if weights is not None and not os.path.isfile(weights):
        _check_weights_reachable(name, weights)
    try:
        with warnings.catch_warnings():  # open_clip compares the tag with the config before our override
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")
            clip, _, eval_transform = open_clip.create_model_and_transforms(
                name, pretrained=weights, device=device, **_activation_arguments(name, quick_gelu))
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, EOFError, pickle.UnpicklingError) as error:
        if _cuda_failure(error):  # the weights may be fine: say what the GPU said, not "not CLIP weights"
            what = "out of GPU memory" if isinstance(error, torch.OutOfMemoryError) else "a CUDA error"
            raise CUDAError(f"loading {name} onto {device} failed with {what}: "
                            f"{(str(error).strip().splitlines() or [''])[0][:200]}") from None
        if weights is not None and os.path.isfile(weights):  # a local file that is not CLIP weights for `name`
            reason = ("not a file of tensors that loads safely" if isinstance(error, pickle.UnpicklingError)
                      else f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}")
            raise ValueError(f"--pretrained {weights}: not {name} weights that open_clip can load ({reason})") from None
        if not isinstance(error, RuntimeError) or "download" not in str(error).lower():
            raise
        raise WeightsUnavailable(
            f"could not download the {pretrained!r} weights of {name} (no internet here?). Download them "
            f"where you can (open_clip.create_model_and_transforms({name!r}, pretrained={pretrained!r}) fills "
            "the Hugging Face cache; copy that cache here, or save the checkpoint file and pass its path "
            "as --pretrained), or use --pretrained none for random weights") from None
    if not hasattr(clip, "token_embedding"):
        raise ValueError(
            f"model {model!r} has a custom text tower (e.g. a Hugging Face encoder); PiNI's text "
            "injector needs open_clip's built-in CLIP text transformer (ViT-*/RN* CLIP models)."
        )
    clip.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    return clip, tokenizer, train_transform(clip.visual.preprocess_cfg), eval_transform


def freeze_in_dtype(clip, dtype: Optional[torch.dtype]):
    """Store the frozen CLIP's matrix weights in `dtype` (fp16/bf16) once, for use under autocast.

    Autocast casts a weight to the compute dtype at every use unless it is a leaf that requires
    grad (only those casts are cached), and CLIP's weights are frozen: an fp32 CLIP under fp16
    autocast costs one cast kernel per weight per use, every step (tests/test_precision.py counts
    them). The authors keep CLIP in fp16 (OpenAI's clip.model.convert_weights); open_clip's
    `convert_weights_to_lp` is the same conversion: convolution, linear and attention weights and
    the two projections go to `dtype`; LayerNorms, embeddings and logit_scale stay fp32. The
    residual stream then runs in `dtype`, as the authors'; LayerNorm statistics stay fp32 (CUDA
    autocast runs layer_norm in fp32; the CPU's bf16 layer_norm accumulates mean and variance in
    fp32: tests/test_precision.py). The injectors are not touched: their parameters stay fp32, and
    the logits are read in fp32 (`cosine_logits`).
    dtype None (fp32): nothing changes. Returns clip."""
    if dtype is not None and dtype != torch.float32:
        open_clip.model.convert_weights_to_lp(clip, dtype)
    return clip


ACTIVATIONS = ("auto", "gelu", "quick-gelu")


def clip_activation(name: str, weights: Optional[str], activation: str = "auto") -> str:
    """The MLP activation ("gelu" or "quick-gelu") of the CLIP that `load_clip` builds.

    Weights only give the network they were trained with if the architecture around them is that
    network. OpenAI's CLIP uses QuickGELU, x·σ(1.702x), not GELU; open_clip's plain "ViT-B-16"
    config uses GELU, and loading OpenAI's weights into it runs a different function (open_clip
    only warns). So the activation comes from where the weights come from:

      a tag       its metadata (`open_clip.get_pretrained_cfg(name, tag)["quick_gelu"]`); asking
                  for the other activation is refused, naming both;
      a file      `activation` if given, else the file's own record (a "quick_gelu" entry of a
                  checkpoint dict, or of a .safetensors file's metadata), else the model config's,
                  with a warning; a flag that contradicts the file's record is refused;
      no weights  `activation` if given, else the model config's.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
    config = "quick-gelu" if (open_clip.get_model_config(name) or {}).get("quick_gelu") else "gelu"
    if weights is None:
        return config if activation == "auto" else activation
    if not os.path.isfile(weights):  # an open_clip tag
        tagged = "quick-gelu" if open_clip.get_pretrained_cfg(name, weights).get("quick_gelu") else "gelu"
        if activation not in ("auto", tagged):
            raise ValueError(f"--activation {activation}: the {weights!r} weights of {name} were trained with "
                             f"{tagged} (open_clip's tag metadata); a {activation} network would compute a "
                             "different function with them")
        return tagged
    recorded = _recorded_activation(weights)
    if activation != "auto":
        if recorded not in (None, activation):
            raise ValueError(f"--activation {activation}, but {weights} records that its weights were trained "
                             f"with {recorded}")
        return activation
    if recorded is not None:
        return recorded
    print(f"warning: {weights} does not record its activation: building {name} with {config} (its model "
          "config's). OpenAI's CLIP weights need --activation quick-gelu", file=sys.stderr)
    return config


def _recorded_activation(path: str) -> Optional[str]:
    """The activation a checkpoint file records about itself, or None (see `clip_activation`)."""
    value = None
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(path, framework="pt") as f:
                value = (f.metadata() or {}).get("quick_gelu")
            value = None if value is None else value.lower() in ("1", "true", "yes")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            value = state.get("quick_gelu") if isinstance(state, dict) else None
    except Exception:  # not readable here: load_clip reports what open_clip makes of the file
        return None
    return None if value is None else "quick-gelu" if value else "gelu"


def _activation_arguments(name: str, quick_gelu: bool) -> dict:
    """open_clip's arguments that build `name` with (or without) QuickGELU."""
    if quick_gelu:
        return {"force_quick_gelu": True}
    if (open_clip.get_model_config(name) or {}).get("quick_gelu"):
        return {"quick_gelu": False}  # a "-quickgelu" config with GELU weights: override the config
    return {}


def activation_of(clip) -> str:
    """"quick-gelu" or "gelu": the activation the built CLIP's text-tower MLPs use."""
    return "quick-gelu" if any(isinstance(m, open_clip.transformer.QuickGELU) for m in clip.transformer.modules()) \
        else "gelu"


def _resolve_model_name(model: str) -> str:
    """Register a config JSON if `model` is a path; return an open_clip model name."""
    if model.endswith(".json") or os.path.sep in model and os.path.exists(model):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"model config file not found: {model}")
        open_clip.add_model_config(path)
        return path.stem
    name = model.replace("/", "-")  # OpenAI's "ViT-B/16" is open_clip's "ViT-B-16"
    if name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model!r}: give a model name (e.g. ViT-B-16, ViT-B-32, RN50, "
            "RN101, ViT-L-14; all: open_clip.list_models()) or the path of a model-config .json file"
        )
    return name


def _resolve_pretrained(name: str, pretrained: Optional[str]) -> Optional[str]:
    """Map `pretrained` to what open_clip expects: None, a file path, or a known tag."""
    if pretrained in NO_WEIGHTS:
        return None
    if os.path.isfile(pretrained):
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return pretrained
    if os.path.sep in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        raise FileNotFoundError(f"checkpoint file not found: {pretrained}")
    raise ValueError(
        f"unknown pretrained weights {pretrained!r} for {name}: give a local checkpoint file, "
        f"'none' for random weights, or one of the open_clip tags {tags or '(none for this model)'}"
    )


WEIGHTS_TIMEOUT = 5.0  # seconds to wait for a connection before saying there is no network


def _check_weights_reachable(name: str, tag: str):
    """Fail within seconds, not minutes, when a tag's weights are neither cached nor reachable.

    open_clip fetches a tag from the Hugging Face Hub (or a URL) and, offline, retries for
    close to a minute before it gives up. So look in the local caches first, and otherwise
    open one connection to the host with a short timeout."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache
        repo = hub.rstrip("/").split("/")
        repo_id, filenames = "/".join(repo[:2]), [repo[2]] if len(repo) > 2 else [
            "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=constants.HF_HUB_CACHE), str)
               for f in filenames):
            return
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        offline = constants.HF_HUB_OFFLINE
    else:
        if url and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))):
            return
        host, offline = urlparse(url).hostname, False
    try:
        if offline:
            raise OSError("HF_HUB_OFFLINE is set")
        socket.create_connection((host, 443), timeout=WEIGHTS_TIMEOUT).close()
    except OSError as error:
        raise WeightsUnavailable(
            f"the {tag!r} weights of {name} are not in the local cache and {host} cannot be reached "
            f"({error}). Download them where there is a network (open_clip.create_model_and_transforms("
            f"{name!r}, pretrained={tag!r}) fills the cache; copy the cache here, or save the checkpoint "
            "file and pass its path as --pretrained), or use --pretrained none for random weights") from None


def train_transform(preprocess_cfg: dict) -> v2.Compose:
    """The few-shot training augmentation of CoOp and the authors' code, sized for this CLIP.

    Random resized crop (scale 0.08–1, the torchvision default Dassl uses) and a horizontal
    flip, then CLIP's own normalisation. open_clip's training transform has no flip and a
    milder crop (0.9–1), so we build this one ourselves from the model's preprocessing config.

    One torchvision (v2) transform serves both data paths of train.py (`--augment`): given a
    PIL image it crops and resizes with PIL, as the authors' (v1) transform does (to 1e-5); given
    a (3, H, W) uint8 tensor — on the CPU or a GPU — it draws the same crop box and flip from
    torch's CPU generator and resizes with torch's antialiased kernel of the config's
    interpolation (bicubic for CLIP). Same boxes, same flips, same kernel; PIL's fixed-point
    arithmetic and torch's differ by a fraction of a grey level per pixel on average, at most 3
    levels of 255 in tests/test_image_data.py's measurement.
    """
    size = preprocess_cfg["size"]
    size = size if isinstance(size, int) else tuple(size)
    bilinear = preprocess_cfg.get("interpolation") == "bilinear"
    interpolation = v2.InterpolationMode.BILINEAR if bilinear else v2.InterpolationMode.BICUBIC
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(),                           # PIL image -> (3, H, W) uint8 (a tensor stays one)
        v2.ToDtype(torch.float32, scale=True),  # uint8 -> [0, 1], as ToTensor
        v2.Normalize(preprocess_cfg["mean"], preprocess_cfg["std"]),
        v2.ToPureTensor(),
    ])


# -----------------------------------------------------------------------------------------
# 2. Prompts and the text tower
# -----------------------------------------------------------------------------------------

@dataclass
class Prompts:
    """The tokenised prompts "X X … X <template> <class name>." for C classes.

    tokens:      (C, L) token ids, L = the tokenizer's context length (77 for CLIP)
    noise_start: first token position that receives text noise (1: right after SOS)
    noise_end:   one past the last one; positions [noise_start, noise_end) hold the
                 n_ctx placeholders and the template, identical for every class
    """
    tokens: torch.Tensor
    noise_start: int
    noise_end: int

    @property
    def n_noise_tokens(self) -> int:
        return self.noise_end - self.noise_start


def build_prompts(tokenizer, classnames, template: str = "a photo of a", n_ctx: int = 16,
                  placeholder: str = "X") -> Prompts:
    """Tokenise "X X … X <template> <class name>." (n_ctx placeholders) for every class.

    The placeholders are the 16 "context" positions of prompt learning (CoOp); PiNI does not
    learn them as vectors, it learns a noise distribution over them *and* over the template's
    tokens. Class name, "." and the end-of-text token stay noise-free.
    """
    prefix = " ".join([placeholder] * n_ctx + ([template] if template else []))
    classnames = [name.replace("_", " ") for name in classnames]
    texts = [f"{prefix} {name}." for name in classnames]
    tokens = tokenizer(texts)  # (C, L)
    # The prefix alone is "SOS p_1 … p_n EOT": its EOT index is 1 + number of prefix tokens.
    # (CLIP's EOT has the largest id of the vocabulary, hence argmax, as open_clip pools.)
    noise_end = int(tokenizer([prefix])[0].argmax())
    if not torch.equal(tokens[:, :noise_end], tokens[:1, :noise_end].expand(len(classnames), -1)):
        raise ValueError(f"template {template!r} does not tokenise identically before every class name")
    # The tokenizer silently truncates; tokenise once more with room to spare to catch that.
    longest = int(tokenizer(texts, context_length=4 * tokens.shape[1]).argmax(dim=-1).max())
    if longest >= tokens.shape[1]:
        raise ValueError(f"the longest prompt has {longest + 1} tokens, more than the text encoder's "
                         f"context of {tokens.shape[1]}; shorten the template or use fewer context tokens")
    return Prompts(tokens=tokens, noise_start=1, noise_end=noise_end)


def encode_text_embeddings(clip, embeddings: torch.Tensor, tokens: torch.Tensor,
                           length: Optional[int] = None) -> torch.Tensor:
    """Run CLIP's text tower on token *embeddings* instead of token ids.

    This is `clip.encode_text(tokens)` with its first line (the embedding lookup) taken out,
    so noise can be added to the embeddings first:
        positional embedding -> transformer (causal mask) -> final LayerNorm
        -> features at the EOT token -> text projection.

    Context truncation: with CLIP's causal mask, position i only attends to positions ≤ i, so the
    features at the EOT token do not depend on anything after it. We therefore run the
    transformer only up to the longest prompt's EOT, not the full 77 positions — same output,
    a fraction of the work (usually 25–35 tokens instead of 77).

    embeddings: (N, L, W) token embeddings; tokens: (N, L) their ids (to find EOT); length:
    `needed_context(clip, tokens)` when known (finding it reads a value on the host: a device sync).
    Returns (N, D) text features, not normalised.
    """
    cast_dtype = clip.transformer.get_cast_dtype()
    length = needed_context(clip, tokens) if length is None else length
    x = embeddings[:, :length].to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)
    mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=mask)  # (N, length, W)
    x = clip.ln_final(x)
    x = open_clip.transformer.text_global_pool(x, tokens[:, :length], clip.text_pool_type,
                                               eos_token_id=getattr(clip, "text_eos_id", None))  # (N, W)
    return _project_text(clip, x)


def needed_context(clip, tokens: torch.Tensor) -> int:
    """How many leading positions of `tokens` (N, L) the text features depend on: up to the
    longest prompt's EOT for CLIP's causal, EOT-pooled tower; all L otherwise."""
    if clip.text_pool_type == "argmax" and clip.attn_mask is not None:
        return int(tokens.argmax(dim=-1).max()) + 1
    return tokens.shape[1]


def _project_text(clip, pooled: torch.Tensor) -> torch.Tensor:
    """CLIP's text projection: (..., W) -> (..., D)."""
    if isinstance(clip.text_projection, nn.Linear):
        return clip.text_projection(pooled)
    return pooled @ clip.text_projection if clip.text_projection is not None else pooled


def supports_shared_prefix(clip) -> bool:
    """Whether `encode_text_shared_prefix` applies: CLIP's causal, EOT-pooled text transformer
    built from open_clip's standard blocks (nn.MultiheadAttention without dropout)."""
    blocks = clip.transformer.resblocks
    return (clip.text_pool_type == "argmax" and clip.attn_mask is not None and clip.transformer.batch_first
            and all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and b.attn.dropout == 0
                    and b.attn._qkv_same_embed_dim and not hasattr(b, "ln_1_kv") for b in blocks))


def encode_text_shared_prefix(clip, prefix: torch.Tensor, suffix: torch.Tensor, suffix_tokens: torch.Tensor,
                              groups: Optional[tuple] = None):
    """The text tower for prompts that share their first P token embeddings — exactly.

    Every PiNI prompt starts with the same P tokens (SOS, the placeholders, the template, and the
    shared text noise on them); only the last S tokens (class name, ".", EOT, padding) differ.
    Under the causal mask a token only sees earlier tokens, so the hidden states of the prefix are
    the same for every class at every layer. We therefore run the prefix once per noise sample
    and run each class's suffix with attention to [prefix; own earlier tokens]:

        prefix tokens:  K·C·P·L  ->  K·P·L   transformer-token evaluations (L layers)
        suffix tokens:  each attends to the P prefix keys/values, computed once

    For the same reason nothing after a class's EOT reaches its feature, so each class's suffix
    stops at its own EOT: classes run in groups of equal suffix length instead of all padded to
    the longest name (with ImageNet's names a suffix is 4.2 tokens on average and 13 at most:
    benchmarks/text_side.py measures a text forward + backward 2.5–3× faster at 1000 classes,
    small CLIP on a CPU).

    The output equals `encode_text_embeddings` on the concatenated prompts up to float rounding
    (tested, with gradients). The first P positions must hold no padding.

    prefix: (K, P, W) embeddings; suffix: (C, S, W) embeddings (shared by the K samples);
    suffix_tokens: (C, S) their ids (to find EOT); groups: `suffix_groups(suffix_tokens)`, computed
    here when not given (with a device sync). Returns (K, C, D).
    """
    K, P, W = prefix.shape
    cast_dtype = clip.transformer.get_cast_dtype()
    positions = clip.positional_embedding.to(cast_dtype)
    x_p = prefix.to(cast_dtype) + positions[:P]  # (K, P, W)
    order, restore, sizes = groups if groups is not None else suffix_groups(suffix_tokens)
    suffix = suffix.index_select(0, order)  # (C, S, W), classes in order of suffix length
    starts = [0, *itertools.accumulate(count for _, count in sizes)]
    xs = [(suffix[start:start + count, :n].to(cast_dtype) + positions[P:P + n]).expand(K, count, n, W)
          for start, (n, count) in zip(starts, sizes)]  # (K, C_g, n, W) for each suffix length n
    # suffix row i may see columns j ≤ P + i: the whole prefix and its own suffix up to i
    masks = [torch.ones(n, P + n, dtype=torch.bool, device=prefix.device).tril(P) for n, _ in sizes]
    for block in clip.transformer.resblocks:
        q_p, k_p, v_p = _attention_inputs(block, x_p)  # (K, H, P, W/H) each
        x_p = _finish_block(block, x_p, F.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True))
        for i, (x_s, mask) in enumerate(zip(xs, masks)):
            C_g = x_s.shape[1]
            q_s, k_s, v_s = _attention_inputs(block, x_s)  # (K, C_g, H, n, W/H) each
            k_all = torch.cat([k_p.unsqueeze(1).expand(K, C_g, *k_p.shape[1:]), k_s], dim=-2)  # (K, C_g, H, P+n, W/H)
            v_all = torch.cat([v_p.unsqueeze(1).expand(K, C_g, *v_p.shape[1:]), v_s], dim=-2)
            xs[i] = _finish_block(block, x_s, F.scaled_dot_product_attention(q_s, k_all, v_all, attn_mask=mask))
    pooled = torch.cat([x_s[:, :, -1] for x_s in xs], dim=1)  # (K, C, W): EOT, the last of each suffix
    return _project_text(clip, clip.ln_final(pooled.index_select(1, restore)))  # (K, C, D), class order


def suffix_groups(suffix_tokens: torch.Tensor) -> tuple:
    """(order, restore, sizes): how `encode_text_shared_prefix` groups the classes by suffix length.

    order (C,): the classes sorted by suffix length (stable: by class within a length);
    restore (C,): its inverse permutation; sizes: [(n, C_n)] the distinct lengths n, ascending,
    and how many classes have each. Finding them reads tensor values on the host (a device sync),
    so PiNI computes them once, when it registers the prompts, not on every forward."""
    lengths = suffix_tokens.argmax(dim=-1) + 1  # (C,) each suffix up to and including its EOT
    order = lengths.argsort(stable=True)
    values, counts = lengths.unique(return_counts=True)  # ascending
    return order, order.argsort(), list(zip(values.tolist(), counts.tolist()))


def _attention_inputs(block, x: torch.Tensor):
    """A residual block's queries, keys and values for x (..., L, W), split into heads (..., H, L, W/H)."""
    attn = block.attn
    heads, W = attn.num_heads, x.shape[-1]
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    return [t.unflatten(-1, (heads, W // heads)).transpose(-3, -2) for t in qkv]


def _finish_block(block, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The rest of a residual block, given its attention output per head (..., H, L, W/H)."""
    x = x + block.ls_1(block.attn.out_proj(attended.transpose(-3, -2).flatten(-2)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


# -----------------------------------------------------------------------------------------
# 3. Gaussian noise, reparameterised
# -----------------------------------------------------------------------------------------

@dataclass
class Gaussian:
    """A diagonal Gaussian p_θ(ε) = N(μ, diag σ²) with the reparameterised sampler.

    mu, sigma:  same shape; sigma ≥ 0
    batch_dims: how many leading dims index examples (or noise samples) rather than the
                noise itself — the KL term averages over them and sums over the rest.
    """
    mu: torch.Tensor
    sigma: torch.Tensor
    batch_dims: int = 0

    def sample(self, num_samples: int, use_mean: bool = False) -> torch.Tensor:
        """ε_k = μ + σ ⊙ z_k, z_k ~ N(0, I), k = 1..K                               (Eq. 6)

        The reparameterisation trick: the randomness lives in z, which does not depend on θ,
        so ∂ε/∂μ = 1 and ∂ε/∂σ = z and gradients flow through the sample. `use_mean` sets
        z = 0 (ε = μ), the deterministic noise used for inference by default.
        Returns (K, *mu.shape).
        """
        mu = self.mu.unsqueeze(0).expand(num_samples, *self.mu.shape)
        if use_mean:
            return mu
        return mu + self.sigma * torch.randn_like(mu)


KL_SIGMA_FLOOR = 1e-2  # δ / s: the smallest σ the KL term sees (see gaussian_kl)


def gaussian_kl(noise: Gaussian, prior_std: float = 1.0) -> torch.Tensor:
    """KL( N(μ, diag σ²) ‖ N(0, s² I) ) in closed form, s = prior_std               (Eq. 8)

        KL = Σ_j [ log(s / σ_j) + (σ_j² + μ_j²) / (2 s²) − 1/2 ]

    summed over the noise dimensions j and averaged over the leading `batch_dims`.

    The floor (this project's own, not the authors' — their code has no KL): the injectors make
    σ = |Linear(·)|, which passes through 0, where −log σ and its gradient −1/σ explode (a tiny
    CLIP at lr 1e-3, β = 1 reaches NaN within 20 steps). The KL therefore reads σ as
    σ̃ = √(σ² + δ²), δ = KL_SIGMA_FLOOR · s: equal to σ up to δ²/(2σ) where σ ≫ δ, at least δ, and
    its −log σ̃ has a gradient of at most 1/(2δ). The noise itself is still drawn with σ.
    """
    floor = KL_SIGMA_FLOOR * prior_std
    sigma = (noise.sigma.float().square() + floor**2).sqrt()
    mu = noise.mu.float()
    kl = math.log(prior_std) - sigma.log() + (sigma.square() + mu.square()) / (2 * prior_std**2) - 0.5
    per_example = kl.flatten(noise.batch_dims).sum(-1) if noise.batch_dims else kl.sum()
    return per_example.mean()


# -----------------------------------------------------------------------------------------
# 4. The text noise injectors
# -----------------------------------------------------------------------------------------

class NoiseInjector(nn.Module):
    """What every injector declares about itself, so that no code has to test its name.

    needs_images:       it needs the images themselves, not cached image features
    needs_patch_tokens: it needs a ViT's patch tokens (a ViT image tower)
    per_class:          its parameters belong to the training classes (it cannot be used
                        on another class set)
    mu_part, sigma_part: the parameters (or sub-modules) that produce μ and σ only — what the
                        controls σ = 0 and μ = 0 keep fixed
    spatial:            how its noise is drawn over the image: None (one noise per feature
                        vector, no map), "patch" (μ, σ per ViT patch token) or "pixel" (μ, σ
                        per input pixel) — what a noise map of it shows
    """
    needs_images = False
    needs_patch_tokens = False
    per_class = False
    spatial = None
    mu_part, sigma_part = "to_mu", "to_sigma"

    def parameters_of(self, part: str) -> list:
        """The parameters of `self.<part>` (a parameter or a module)."""
        owner = getattr(self, part)
        return [owner] if isinstance(owner, nn.Parameter) else list(owner.parameters())


class TextNoiseInjector(NoiseInjector):
    """Learned p_θ(ε_t) = N(μ_t, diag σ_t²), free parameters — the authors' text injector.

    At the token position (the default) μ_t, σ_t have shape (n_tokens, W): one row per noised
    token position (placeholders + template), initialised N(0, 0.02²) as in the authors' code. The
    noise is not conditioned on the image: one sample ε_t is drawn per forward pass and shared by
    all C class prompts, so it perturbs the *context* the classes are described in, never a class
    name. At the feature position (a variant the paper compares) the shape is (C, D): one noise
    per class text feature, added after the encoder.

    σ_t is stored as a free parameter and used as |σ_t|: the authors multiply z by the raw
    parameter, which gives the same distribution (z and −z are equally likely); the absolute
    value only matters for the KL term, where σ must be positive.
    """

    mu_part, sigma_part = "mu", "sigma"

    def __init__(self, *shape: int, init_std: float = 0.02, per_class: bool = False):
        super().__init__()
        self.per_class = per_class  # the feature position: one row of μ, σ per training class
        self.mu = nn.Parameter(torch.randn(*shape) * init_std)
        self.sigma = nn.Parameter(torch.randn(*shape) * init_std)

    def forward(self, class_features: Optional[torch.Tensor] = None) -> Gaussian:
        """`class_features` is ignored: this noise is not conditioned on anything."""
        return Gaussian(self.mu, self.sigma.abs())


class ConditionedTextNoiseInjector(NoiseInjector):
    """p_θ(ε_t | c) from a small network conditioned on each class's text feature.

    The paper's overview figure draws the text noise as the output of a network rather than free
    parameters. Here a two-layer MLP maps the (noise-free, frozen) text feature f_c of each class to
    the μ and σ of that class's noise, of shape `out_shape`: (n_tokens, W) at the token position
    (then every class has its own noised context, so prompts no longer share a prefix) or (D,) at
    the feature position. The heads start small (std `init_std`), like the free injector.
    """

    def __init__(self, dim: int, *out_shape: int, hidden: int = 64, init_std: float = 0.02):
        super().__init__()
        self.out_shape = out_shape
        size = math.prod(out_shape)
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.to_mu, self.to_sigma = nn.Linear(hidden, size), nn.Linear(hidden, size)
        for head in (self.to_mu, self.to_sigma):
            nn.init.normal_(head.weight, std=init_std / math.sqrt(hidden))
            nn.init.normal_(head.bias, std=init_std)

    def forward(self, class_features: torch.Tensor) -> Gaussian:
        """class_features (C, D) -> Gaussian (C, *out_shape)."""
        h = self.body(class_features)  # (C, hidden)
        shape = (len(class_features), *self.out_shape)
        return Gaussian(self.to_mu(h).view(shape), self.to_sigma(h).abs().view(shape))


# -----------------------------------------------------------------------------------------
# 5. The image noise injectors
# -----------------------------------------------------------------------------------------

def hidden_size(dim: int, reduction: int) -> int:
    """The injectors' hidden width h = D / reduction, refused when nothing would be left."""
    if reduction < 1 or dim // reduction < 1:
        raise ValueError(f"reduction {reduction} leaves a hidden size of {max(dim // max(reduction, 1), 0)} for "
                         f"features of size {dim}: use a reduction between 1 and {dim}")
    return dim // reduction


class ImageNoiseInjector(NoiseInjector):
    """Feature-level image noise: p_θ(ε_v | x, P) = N(μ_v, diag σ_v²) from cross-attention.

    The image embedding asks (query) the class text embeddings (keys, values) which classes it
    resembles, and the answer is mapped to the noise's mean and std:

        q = W_q f_v,  k_c = W_k f_c,  v_c = W_v f_c,  a = softmax_c(q · k_c)        (Eq. 7)
        μ_v = W_μ Σ_c a_c v_c,    σ_v = | W_σ Σ_c a_c v_c |

    The logits q · k_c are not divided by √h: the authors' code does not, and we keep its
    behaviour (`scaled=True` adds the usual 1/√h). h = D / reduction.

    The query may also be a set of patch tokens (B, N, D) instead of the global feature (B, D):
    the patch-query variant, with one μ and σ per patch.
    """

    def __init__(self, dim: int, reduction: int = 1, scaled: bool = False):
        super().__init__()
        hidden = hidden_size(dim, reduction)
        self.query, self.key, self.value = (nn.Linear(dim, hidden) for _ in range(3))
        self.to_mu, self.to_sigma = nn.Linear(hidden, dim), nn.Linear(hidden, dim)
        self.scale = hidden**-0.5 if scaled else 1.0

    @classmethod
    def build(cls, dim: int, reduction: int, pixel_level: float):
        return cls(dim, reduction)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor):
        """image_features (B, D) or patch tokens (B, N, D); text_features (K, C, D)
        -> Gaussian (K, B, D) or (K, B, N, D), attention (K, B, C) or (K, B, N, C)."""
        q = self.query(image_features)  # (B, [N,] h)
        k, v = self.key(text_features), self.value(text_features)  # (K, C, h)
        logits = torch.einsum("...h,kch->k...c", q, k)  # (K, B, [N,] C)
        attention = logits.mul(self.scale).softmax(dim=-1)
        attended = torch.einsum("k...c,kch->k...h", attention, v)  # (K, B, [N,] h)
        return Gaussian(self.to_mu(attended), self.to_sigma(attended).abs(), batch_dims=2), attention

    def perturb(self, model: "PiNI", images, image_features, text_features, K: int, use_mean: bool):
        """The image side of PiNI (every image injector has this method):
        -> noisy image features (K, B, D) and the noise distribution.

        The injector reads the text features *with* their noise, and its gradient flows back
        into the text injector, as in the authors' code. One image noise per text sample k."""
        image = model.encode_images(images) if image_features is None else image_features  # (B, D)
        noise = model.controlled(self(image, text_features.expand(K, -1, -1))[0])  # (K, B, D)
        return image + noise.sample(1, use_mean)[0], noise


class PatchNoiseInjector(ImageNoiseInjector):
    """The same cross-attention, queried by each patch token: one μ and σ per patch.

    The sampled per-patch noise is averaged into the global image feature — *inferred*: the
    paper's figure shows per-patch noise maps, not how they are pooled. ViT towers only."""
    needs_images = needs_patch_tokens = True
    spatial = "patch"

    def perturb(self, model, images, image_features, text_features, K: int, use_mean: bool):
        image, patches = model.encode_images(images, patch_tokens=True)  # (B, D), (B, N, D)
        noise = model.controlled(self(patches, text_features.expand(K, -1, -1))[0])  # (K, B, N, D)
        return image + noise.sample(1, use_mean)[0].mean(-2), noise  # pooled over patches: (K, B, D)


class MLPNoiseInjector(NoiseInjector):
    """Feature-level image noise from the image feature alone: μ_v, σ_v = MLP(f_v).

    The generator the paper compares with cross-attention: it sees the image but not the classes.
    """

    def __init__(self, dim: int, reduction: int = 1):
        super().__init__()
        hidden = hidden_size(dim, reduction)
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.to_mu, self.to_sigma = nn.Linear(hidden, dim), nn.Linear(hidden, dim)

    @classmethod
    def build(cls, dim: int, reduction: int, pixel_level: float):
        return cls(dim, reduction)

    def forward(self, image_features: torch.Tensor) -> Gaussian:
        """image_features (B, D) -> Gaussian (B, D)."""
        h = self.body(image_features)
        return Gaussian(self.to_mu(h), self.to_sigma(h).abs(), batch_dims=1)

    def perturb(self, model: "PiNI", images, image_features, text_features, K: int, use_mean: bool):
        image = model.encode_images(images) if image_features is None else image_features  # (B, D)
        noise = model.controlled(self(image))  # (B, D)
        return image + noise.sample(K, use_mean), noise  # (K, B, D)


class PixelNoiseInjector(NoiseInjector):
    """Pixel-level image noise: a small CNN predicts per-pixel μ and σ maps for the input image.

    Architecture of the authors' `clip_vpn_cnn_image.py`: conv3×3 (3→64) + BN + ReLU, ResNet
    basic blocks [64, 64, 128, 64], and two conv3×3 heads to 3-channel μ and σ maps. Each map
    is rescaled so that its root-mean-square over the H×W pixels of each channel equals
    `level` (0.1 in the authors' code): the CNN chooses the *pattern*, `level` fixes the noise
    *strength* relative to the normalised image (which has unit variance per channel).
    """

    needs_images = True
    spatial = "pixel"

    def __init__(self, channels: int = 3, level: float = 0.1):
        super().__init__()
        self.level = level
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.blocks = nn.Sequential(
            BasicBlock(64, 64), BasicBlock(64, 64),
            BasicBlock(64, 128, downsample=_projection(64, 128)),
            BasicBlock(128, 64, downsample=_projection(128, 64)),
        )
        self.to_mu = nn.Conv2d(64, channels, 3, padding=1, bias=False)
        self.to_sigma = nn.Conv2d(64, channels, 3, padding=1, bias=False)

    @classmethod
    def build(cls, dim: int, reduction: int, pixel_level: float):
        return cls(level=pixel_level)

    def _rescale(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> same, each channel scaled to RMS `level` over its H×W pixels."""
        flat = maps.flatten(2)  # (B, 3, H·W)
        return (F.normalize(flat, dim=-1) * math.sqrt(flat.shape[-1]) * self.level).view_as(maps)

    def forward(self, images: torch.Tensor) -> Gaussian:
        """images (B, 3, H, W) -> Gaussian with μ, σ of shape (B, 3, H, W)."""
        h = self.blocks(self.stem(images))  # (B, 64, H, W)
        return Gaussian(self._rescale(self.to_mu(h)), self._rescale(self.to_sigma(h)).abs(), batch_dims=1)

    def perturb(self, model: "PiNI", images, image_features, text_features, K: int, use_mean: bool):
        noise = model.controlled(self(images))  # (B, 3, H, W)
        noisy = images + noise.sample(K, use_mean)  # (K, B, 3, H, W)
        # Gradients must reach the injector through the frozen image tower: no no_grad here.
        return model.clip.encode_image(noisy.flatten(0, 1)).unflatten(0, (K, -1)), noise  # (K, B, D)


def _projection(cin: int, cout: int) -> nn.Sequential:
    """1×1 conv + BN shortcut for a basic block that changes the channel count."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


# -----------------------------------------------------------------------------------------
# 6. The PiNI model
# -----------------------------------------------------------------------------------------

@dataclass
class PiNIOutput:
    """logits: (K, B, C) scaled cosine similarities, one slice per noise sample.
    noise: the noise distributions that produced them, by injector name ("text", "image")."""
    logits: torch.Tensor
    noise: dict


# Every option has one spelling, used by PiNI's arguments and train.py's command line alike.
# The image injectors by name, the paper's first; each is built by `cls.build(D, reduction, pixel level)`.
IMAGE_INJECTORS = {"cross-attention": ImageNoiseInjector, "patch": PatchNoiseInjector,
                   "mlp": MLPNoiseInjector, "pixel": PixelNoiseInjector}
TEXT_NOISE = ("tokens", "feature", "none")
TEXT_GENERATORS = ("free", "conditioned")
IMAGE_NOISE = (*IMAGE_INJECTORS, "none")
CONTROLS = ("none", "no-sigma", "no-mu")


def needs_images(image_noise: str) -> bool:
    """Whether an image injector needs the images (so no cached image features will do)."""
    return image_noise != "none" and IMAGE_INJECTORS[image_noise].needs_images


def fits(clip, image_noise: str) -> bool:
    """Whether this CLIP can host the image injector (the patch injector needs a ViT)."""
    return image_noise == "none" or not IMAGE_INJECTORS[image_noise].needs_patch_tokens \
        or hasattr(clip.visual, "output_tokens")


def _check_options(clip, text_noise, image_noise, text_generator, control):
    for name, value, allowed in [("text_noise", text_noise, TEXT_NOISE), ("image_noise", image_noise, IMAGE_NOISE),
                                 ("text_generator", text_generator, TEXT_GENERATORS), ("control", control, CONTROLS)]:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
    if not fits(clip, image_noise):
        raise ValueError(f"the {image_noise!r} image injector needs a ViT image tower (patch tokens); "
                         f"this CLIP has a {type(clip.visual).__name__}")


class PiNI(nn.Module):
    """A frozen CLIP classifier whose text and/or image side is perturbed by learned noise.

    The classifier of CLIP with prompt set P (Eq. 1):

        p(y = c | x, P) = exp(cos(V(x), T(ρ_c)) / τ) / Σ_i exp(cos(V(x), T(ρ_i)) / τ)

    PiNI keeps V (image tower) and T (text tower) frozen and replaces the inputs by noisy ones:
    T(ρ_c + ε_t) with text noise on the prompt embeddings, and V(x) + ε_v (then L2-normalised)
    with feature-level image noise, or V(x + ε_x) with pixel-level image noise.

    Args:
        clip, tokenizer: from `load_clip`.
        classnames: the C class names.
        template: the per-dataset prompt template, e.g. "a photo of a".
        n_ctx: number of placeholder context tokens before the template (16).
        text_noise: where the text noise enters — "tokens" (the prompt's placeholder + template
            embeddings, the paper's PiNI), "feature" (each class's text feature, after the
            encoder), or "none".
        text_generator: "free" (learned μ, σ — the authors' code) or "conditioned" (an MLP on
            each class's text feature).
        image_noise: the image injector — "cross-attention" (global image feature queries the
            class text features; the paper's PiNI), "patch" (each patch token queries them: per-patch
            μ/σ, the sampled per-patch noise averaged into the global feature — *inferred*: the
            paper's figure shows per-patch maps, not how they are pooled; ViT towers only),
            "mlp" (from the image feature alone),
            "pixel" (a CNN's per-pixel μ/σ maps added to the input image), or "none".
            The names are the keys of IMAGE_INJECTORS.
        control: "none", "no-sigma" (σ fixed at 0: a deterministic learned shift, prompt-tuning-like)
            or "no-mu" (μ fixed at 0: pure, zero-mean noise of learned scale) — the controls that
            ask whether it is the noise or only its mean that helps.
        reduction: hidden size of the image injector = D / reduction.
        pixel_level: RMS strength of the pixel noise maps (0.1).
        init_std: std of the normal initialisation of the text μ and σ (0.02).
        shared_prefix: encode the prompts' common prefix once per step
            (`encode_text_shared_prefix`, exact); False runs every full prompt (slower, same output).

    With text_noise="none" and image_noise="none" this is zero-shot CLIP on the same prompts.
    """

    def __init__(self, clip, tokenizer, classnames, template: str = "a photo of a", n_ctx: int = 16,
                 text_noise: str = "tokens", image_noise: str = "cross-attention", text_generator: str = "free",
                 control: str = "none", reduction: int = 1, pixel_level: float = 0.1, init_std: float = 0.02,
                 shared_prefix: bool = True):
        super().__init__()
        _check_options(clip, text_noise, image_noise, text_generator, control)
        self.clip = clip.eval().requires_grad_(False)
        self.classnames = list(classnames)
        self.text_noise, self.image_noise, self.control = text_noise, image_noise, control
        self._register_prompts(tokenizer, template, n_ctx, shared_prefix)
        self.text_injector = self._text_injector(text_noise, text_generator, init_std)
        self.image_injector = (None if image_noise == "none" else IMAGE_INJECTORS[image_noise].build(
            self.clean_text_features.shape[-1], reduction, pixel_level))
        self._apply_control(control)
        self.to(clip.logit_scale.device)

    def _register_prompts(self, tokenizer, template: str, n_ctx: int, shared_prefix: bool):
        """The tokenised prompts, their frozen embeddings and their noise-free text features."""
        prompts = build_prompts(tokenizer, self.classnames, template, n_ctx)
        self.noise_start, self.noise_end = prompts.noise_start, prompts.noise_end
        self.shared_prefix = shared_prefix and supports_shared_prefix(self.clip)
        # nothing after the last EOT affects any output (causal mask), so it is never stored
        tokens = prompts.tokens[:, :needed_context(self.clip, prompts.tokens)]
        self.register_buffer("prompt_tokens", tokens.to(self.clip.logit_scale.device), persistent=False)  # (C, L)
        with torch.no_grad():
            self.register_buffer("prompt_embeddings", self.clip.token_embedding(self.prompt_tokens), persistent=False)
            # The classes grouped by suffix length, found once: a forward then reads no value on the host.
            order, restore, self.suffix_sizes = suffix_groups(self.prompt_tokens[:, self.noise_end:])
            self.register_buffer("suffix_order", order, persistent=False)  # (C,)
            self.register_buffer("suffix_restore", restore, persistent=False)  # (C,)
            # CLIP is frozen and the prompts fixed: the noise-free text features are a constant.
            self.register_buffer("clean_text_features", self.text_features(None)[0], persistent=False)  # (C, D)

    def _text_injector(self, position: str, generator: str, init_std: float):
        """Free μ, σ over the noised tokens (the paper's) or per class feature; or a network."""
        width, dim = self.prompt_embeddings.shape[-1], self.clean_text_features.shape[-1]
        shape = (self.noise_end - self.noise_start, width) if position == "tokens" else (dim,)
        if position == "none":
            return None
        if generator == "conditioned":
            return ConditionedTextNoiseInjector(dim, *shape, init_std=init_std)
        if position == "feature":  # one noise per class text feature
            return TextNoiseInjector(len(self.classnames), dim, init_std=init_std, per_class=True)
        return TextNoiseInjector(*shape, init_std=init_std)  # one context noise shared by all classes

    def _apply_control(self, control: str):
        """σ = 0 or μ = 0: the parameters that only make the fixed part are not trained."""
        for injector in self.injectors:
            if control != "none":
                part = injector.sigma_part if control == "no-sigma" else injector.mu_part
                for p in injector.parameters_of(part):
                    p.requires_grad_(False)

    @property
    def injectors(self) -> list:
        return [i for i in (self.text_injector, self.image_injector) if i is not None]

    @property
    def per_class(self) -> bool:
        """Whether some injector's parameters belong to the training classes (no new classes)."""
        return any(injector.per_class for injector in self.injectors)

    def train(self, mode: bool = True):
        """Switch the injectors' mode only: CLIP stays in eval mode (a ResNet CLIP has
        BatchNorm layers whose running statistics must not drift while we train noise)."""
        super().train(mode)
        self.clip.eval()
        return self

    def trainable_parameters(self):
        """The injectors' trainable parameters — everything the optimiser may touch."""
        return [p for n, p in self.named_parameters() if not n.startswith("clip.") and p.requires_grad]

    # --- the two towers ------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, patch_tokens: bool = False):
        """(B, 3, H, W) -> (B, D) frozen image features (no grad: the tower is frozen and the
        feature-level noise enters after it, so nothing upstream needs a gradient).
        With patch_tokens=True (ViT): also the patch tokens in the joint space, (B, N, D)."""
        if not patch_tokens:
            return self.clip.encode_image(images)
        visual = self.clip.visual
        visual.output_tokens = True
        try:
            pooled, tokens = visual(images)  # tokens: (B, N, W_v), after the final LayerNorm
        finally:
            visual.output_tokens = False
        return pooled, tokens @ visual.proj if visual.proj is not None else tokens  # (B, D), (B, N, D)

    def text_features(self, noise: Optional[torch.Tensor]) -> torch.Tensor:
        """Token-level text noise -> (K, C, D) text features (K = 1 without noise).

        noise: (K, n_noise_tokens, W), shared by all classes (free injector), or
               (K, C, n_noise_tokens, W), one per class (conditioned injector), or None."""
        per_class = noise is not None and noise.dim() == 4
        if self.shared_prefix and not per_class:
            P = self.noise_end  # SOS + placeholders + template: the same tokens for every class
            prefix = self.prompt_embeddings[:1, :P]  # (1, P, W)
            if noise is not None:
                prefix = prefix + F.pad(noise, (0, 0, self.noise_start, 0))  # (K, P, W)
            groups = (self.suffix_order, self.suffix_restore, self.suffix_sizes)
            return encode_text_shared_prefix(self.clip, prefix, self.prompt_embeddings[:, P:],
                                             self.prompt_tokens[:, P:], groups)
        embeddings = self.prompt_embeddings.unsqueeze(0)  # (1, C, L, W)
        if noise is not None:
            pad = F.pad(noise, (0, 0, self.noise_start, embeddings.shape[2] - self.noise_end))
            embeddings = embeddings + (pad if per_class else pad.unsqueeze(1))  # (K, C, L, W)
        K, C = embeddings.shape[:2]
        tokens = self.prompt_tokens.repeat(K, 1)  # (K·C, L)
        features = encode_text_embeddings(self.clip, embeddings.flatten(0, 1), tokens, length=tokens.shape[1])
        return features.view(K, C, -1)

    def controlled(self, noise: Gaussian) -> Gaussian:
        """Apply the control: σ = 0 (a deterministic shift) or μ = 0 (zero-mean noise)."""
        if self.control == "no-sigma":
            return Gaussian(noise.mu, torch.zeros_like(noise.sigma), noise.batch_dims)
        if self.control == "no-mu":
            return Gaussian(torch.zeros_like(noise.mu), noise.sigma, noise.batch_dims)
        return noise

    # --- forward ---------------------------------------------------------------------------

    def _noisy_text(self, K: int, use_mean: bool):
        """Text features for K noise samples (K or 1, C, D), and the text noise distribution."""
        if self.text_injector is None:
            return self.clean_text_features.unsqueeze(0), None
        noise = self.controlled(self.text_injector(self.clean_text_features))
        eps = noise.sample(K, use_mean)  # (K, n, W), (K, C, n, W) or (K, C, D)
        text = self.text_features(eps) if self.text_noise == "tokens" else self.clean_text_features + eps
        return text, noise

    def _noisy_image(self, images, image_features, text, K: int, use_mean: bool):
        """Image features, (B, D) without image noise or (K, B, D) with it, and the image noise."""
        if self.image_injector is None:
            return (self.encode_images(images) if image_features is None else image_features), None
        if self.image_injector.needs_images and images is None:
            raise ValueError(f"the {self.image_noise!r} image injector needs the images, not cached features")
        return self.image_injector.perturb(self, images, image_features, text, K, use_mean)

    @torch.no_grad()
    def mean_text_features(self) -> torch.Tensor:
        """(1, C, D) text features under the noise mean — constant at test time, so evaluation
        computes them once and passes them to every `predict(..., text_features=...)` call."""
        return self._noisy_text(1, use_mean=True)[0]

    def forward(self, images: Optional[torch.Tensor], num_samples: int = 1, use_mean: bool = False,
                image_features: Optional[torch.Tensor] = None,
                text_features: Optional[torch.Tensor] = None) -> PiNIOutput:
        """Logits of the noisy classifier for K noise samples.

        images: (B, 3, H, W) normalised images (may be None when `image_features` are given).
        num_samples: K, the number of Monte-Carlo samples of the noise (Eq. 5).
        use_mean: use ε = μ instead of sampling (deterministic inference).
        image_features: (B, D) precomputed `encode_images(images)`, to skip the frozen image
            tower (not for injectors that need the images: patch and pixel).
        text_features: (K or 1, C, D) precomputed text features (e.g. `mean_text_features()`),
            to skip the text side; the text noise is then not resampled.
        Returns PiNIOutput(logits (K, B, C), noise distributions by name).
        """
        K, text_noise = num_samples, None
        if text_features is None:
            text_features, text_noise = self._noisy_text(K, use_mean)  # (K or 1, C, D)
        image, image_noise = self._noisy_image(images, image_features, text_features, K, use_mean)
        if image.dim() == 2:
            image = image.unsqueeze(0)  # (1, B, D)
        logits = cosine_logits(image, text_features, self.clip.logit_scale)  # (K', B, C), float32
        noise = {name: n for name, n in (("text", text_noise), ("image", image_noise)) if n is not None}
        return PiNIOutput(logits.expand(K, -1, -1), noise)

    # --- inference (section 8) -------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: Optional[torch.Tensor], mode: str = "mean", num_samples: int = 8,
                image_features: Optional[torch.Tensor] = None,
                text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class log-probabilities (B, C) for test images, in one of three modes:

        "mean":    ε = μ, no sampling — the default, so a reported accuracy does not depend on the
                   random state of the test pass. This deploys a *deterministic* model: the noise
                   is replaced by its mean, σ plays no part at test time, and what is evaluated is
                   CLIP with a learned shift of its inputs (notebook 06 asks whether σ mattered in
                   training).
        "sample":  one stochastic noise sample — what the authors' code does at test time
                   (Dassl calls the training forward), so accuracy varies from run to run.
        "average": the model's predictive distribution over the noise (Eq. 9)
                   p(y | x, P) = E_{ε ~ p_θ}[ q(y | x, ε, P) ] ≈ (1/K) Σ_k q(y | x, ε_k, P),
                   at K times the cost of the noisy parts.

        `text_features` (from `mean_text_features()`) may be given in "mean" mode only: the other
        modes draw fresh text noise for every call.
        """
        if text_features is not None and mode != "mean":
            raise ValueError(f"precomputed text features hold the noise mean: use them with mode 'mean', not {mode!r}")
        if mode == "sample":
            logits = self(images, 1, image_features=image_features).logits[0]
        elif mode == "mean":
            logits = self(images, 1, use_mean=True, image_features=image_features,
                          text_features=text_features).logits[0]
        elif mode == "average":
            logits = self(images, num_samples, image_features=image_features).logits  # (K, B, C)
            return logits.log_softmax(-1).logsumexp(0) - math.log(num_samples)
        else:
            raise ValueError(f"inference mode must be one of 'sample', 'mean', 'average', not {mode!r}")
        return logits.log_softmax(-1)

    @torch.no_grad()
    def predict_with_spread(self, images: torch.Tensor, mode: str = "mean", num_samples: int = 8,
                            text_features: Optional[torch.Tensor] = None) -> "Prediction":
        """`predict`, with what its noise samples disagree about (what `train.py --classify` prints).

        The class probabilities are `predict(images, mode, num_samples).exp()`, computed the same
        way. In "average" mode each of the K samples ε_k also gives its own q(y | x, ε_k, P); their
        standard deviation per class (over the K, population form: 0 for K = 1) and the number of
        samples whose top-1 class is not the averaged prediction's say how much the answer
        depends on the draw. "mean" and "sample" use one ε: their spread is 0 by definition.
        """
        if mode != "average":
            log_probs = self.predict(images, mode, num_samples, text_features=text_features).unsqueeze(0)  # (1, B, C)
        else:
            log_probs = self(images, num_samples).logits.log_softmax(-1)  # (K, B, C)
        averaged = log_probs.logsumexp(0) - math.log(len(log_probs))  # (B, C), as `predict`
        per_sample = log_probs.exp()
        changes = (per_sample.argmax(-1) != averaged.argmax(-1)).sum(0)  # (B,)
        return Prediction(averaged.exp(), per_sample.std(0, correction=0), changes, per_sample)

    @torch.no_grad()
    def image_noise_samples(self, images: torch.Tensor, num_samples: int = 8):
        """What K samples of the image noise do to the image feature: (clean features (B, D),
        noisy minus clean (K, B, D)). For a feature-level injector the difference is the sampled
        ε_v itself; for the pixel injector it is the feature change that ε_x causes. None without
        an image injector."""
        if self.image_injector is None:
            return None
        text = self._noisy_text(num_samples, use_mean=False)[0]  # the injector reads noisy text features
        clean = self.encode_images(images)  # (B, D)
        noisy = self._noisy_image(images, None, text, num_samples, use_mean=False)[0]  # (K, B, D)
        return clean, noisy - clean


@dataclass
class Prediction:
    """`PiNI.predict_with_spread`: probabilities (B, C) under the inference mode; std (B, C) of each
    class probability over the noise samples; top1_changes (B,) how many samples' top-1 class is not
    the prediction's; samples (K, B, C) the per-sample probabilities (K = 1 outside "average")."""
    probabilities: torch.Tensor
    std: torch.Tensor
    top1_changes: torch.Tensor
    samples: torch.Tensor


def cosine_logits(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) · cos(image, text), in float32 whatever autocast is on.

    image (..., B, D), text (..., C, D) -> (..., B, C). Under fp16/bf16 autocast the product
    would be rounded to 8 (bf16) or 11 (fp16) significant bits: logits 100·cos in [16, 64) fall
    on steps of 0.125–0.25 in bf16, so near-tied classes tie or swap and the argmax changes
    (tests/test_precision.py). The towers may run in low precision; the answer is read in fp32."""
    with torch.autocast(image.device.type, enabled=False):
        image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
        return logit_scale.float().exp() * image @ text.transpose(-1, -2)


# -----------------------------------------------------------------------------------------
# 7. The objective
# -----------------------------------------------------------------------------------------

def pini_objective(output: PiNIOutput, labels: torch.Tensor, ce_weight: float = 1.0,
                   kl_weight: float = 0.0, prior_std: float = 1.0) -> dict:
    """The PiNI training loss and its named parts.

    The loss is what the authors' code trains: the cross-entropy of the frozen CLIP on noisy inputs,
    averaged over K noise samples. What it means is argued in five steps; the paper's reading is
    labelled as such, and every other step holds under the definitions it states.

    (Eq. 3) The random variables. X an image, Y its class, E the noise; the prompt set P is fixed.
        The data give p(x, y); the injector draws ε ~ p_θ(ε | x, P), seeing the image (the text
        noise not even that) but never the label. The joint is therefore
            p_θ(x, y, ε) = p(x, y) · p_θ(ε | x, P),
        and under it Y and E are independent given X:  p(y | x, ε) = p(y | x).
        The frozen CLIP fed with noisy inputs (Eq. 1 with noise) is a *model*, not a conditional
        of this joint:
            q(y = c | x, ε, P) = softmax_c( cos(V(x) + ε_v, T(ρ_c + ε_t)) / τ ).

    (Eq. 2) The paper's reading (pi-noise, Li 2022; PiNI follows its predecessor VPN, arXiv
        2306.07651 — the exact equations are *inferred*, only the abstract and introduction could
        be read here). A noise E is positive-incentive for a task T iff I(T, E) = H(T) − H(T | E) > 0.
        The task's uncertainty is measured through CLIP's own predictive distribution, with the
        prompt — and so the noise — a random variable:
            H(T) ≈ E_{x,y}[ −log p(y | x, P) ],   H(T | E) ≈ E_{x,y} E_{ε~p_θ}[ −log q(y | x, ε, P) ],
        which the noise does change; learning θ to lower H(T | E) is learning pi-noise.

    (Eq. 4) What is provably true of the trained loss. For *any* classifier q, by Gibbs' inequality,
            E_{x,y} E_{ε~p_θ}[ −log q(y | x, ε, P) ]
              = H(Y | X, E) + E_{x,ε}[ KL( p(· | x, ε) ‖ q(· | x, ε, P) ) ]  ≥  H(Y | X, E),
        expanding −log q = −log p(y | x, ε) + log[p(y | x, ε) / q(y | x, ε, P)] and averaging over
        y ~ p(y | x, ε). The loss is an upper bound on the conditional entropy of the labels given
        (x, ε), and its gap is an expected KL. Under Eq. 3, H(Y | X, E) = H(Y | X) does not depend
        on θ: training moves only the gap, making the noisy frozen classifier's predictions closer
        to the data's.

    (Eq. 5) The Monte-Carlo estimate, with K reparameterised samples ε_k = μ + σ ⊙ z_k (Eq. 6),
            L_CE = (1/B) Σ_b (1/K) Σ_k −log q(y_b | x_b, ε_k, P),
        is an *unbiased estimate* of the left side of Eq. 4 (its expectation over the batch and the
        z_k is exactly that), not itself a bound: one batch can fall below H(Y | X). On a few-shot
        training set the expectation over (x, y) is the empirical one, so what is bounded is the
        empirical conditional entropy — 0 when every training image appears once, with one label —
        and nothing is said about test data.

    Where the paper's framing is loose, and why:
      * With Shannon quantities of the joint of Eq. 3, the noise carries no information about y
        beyond x: I(Y; E | X) = 0 for every θ, and "max_θ I(T, E) ⇔ min_θ H(T | E)" is empty.
      * Mixing the two — H(T) the clean classifier's cross-entropy, H(T | E) the true H(Y | X, E) —
        gives H(T) − H(T | E) = H(T) − H(Y | X) ≥ 0 for *every* noise (Gibbs), plain N(0, I)
        included (notebook 01), so its sign certifies nothing.
      * The paper's H(T) and H(T | E) are cross-entropies between the data and CLIP's predictions,
        not entropies: their difference is not a mutual information (it is negative for a noise
        that blurs the classifier), and lowering H(T | E) means "the noisy classifier fits the
        labels better". The loss *is* that H(T | E) (up to Monte-Carlo error); what it upper-bounds
        is the true H(Y | X, E), by Eq. 4.

    (Eq. 8) This project's optional regulariser — not a term of the paper, not in the authors'
        code: β · KL( p_θ(ε | x, P) ‖ N(0, s² I) ), VIB/ELBO-style. Its inequality (Jensen:
        −log E_{p_θ}[q · p/p_θ] ≤ E_{p_θ}[−log(q · p/p_θ)]) holds for every θ:
            −log ∫ q(y | x, ε, P) N(ε; 0, s² I) dε  ≤  E_{ε~p_θ}[ −log q(y | x, ε, P) ] + KL(p_θ ‖ N(0, s² I)).
        Its left side is the NLL of the predictive of a classifier whose noise comes from the fixed
        prior: it does not depend on θ, and is neither H(Y | X, E) nor what PiNI predicts with
        (Eq. 9). So β = 1 bounds a fixed number; β > 0 is a regulariser that penalises |μ| and pulls
        σ towards s (∂KL/∂σ = −1/σ + σ/s², so σ cannot collapse to 0).

    The defaults (ce_weight = 1, kl_weight = 0) train exactly what the authors' code trains: L_CE,
    K = 1 (their NOISE_NUM), no KL.

    Args:
        output: `PiNI.forward` output, logits (K, B, C) and the noise distributions.
        labels: (B,) class indices.
        ce_weight: weight of L_CE (0 switches it off — e.g. to look at the KL alone).
        kl_weight: β, weight of Σ_injectors KL(p_θ ‖ N(0, s² I)) (Eq. 8).
            The text noise is shared by the whole data set, so a dataset-level ELBO would weight it
            β/N per example; the image noise is per example, weight β. One β for both keeps the
            switch simple; scale it to taste.
        prior_std: s, the prior's standard deviation.
    Returns:
        {"loss", "cross_entropy", "kl"} — scalar tensors; "kl" is computed (and differentiable)
        only when kl_weight ≠ 0, else 0.
    """
    K, B, C = output.logits.shape
    cross_entropy = F.cross_entropy(output.logits.reshape(K * B, C).float(), labels.repeat(K))
    kl = output.logits.new_zeros((), dtype=torch.float32)
    if kl_weight:
        kl = sum((gaussian_kl(noise, prior_std) for noise in output.noise.values()), kl)
    return {"loss": ce_weight * cross_entropy + kl_weight * kl, "cross_entropy": cross_entropy, "kl": kl}


def pi_noise_information(clean_logits: torch.Tensor, noisy_logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """The quantities of the paper's pi-noise reading (Eq. 2, *inferred*), estimated on a batch, in nats:

    task_entropy          Ĥ(T) = mean −log p(y | x, P)          the clean frozen classifier's cross-entropy
    conditional_estimate  mean over K of −log q(y | x, ε_k, P)  the loss, Eq. 5: a Monte-Carlo estimate whose
                                                                expectation is the upper bound of Eq. 4 on
                                                                H(Y | X, E); one draw is not a bound
    information_estimate  Ĥ(T) − conditional_estimate           the cross-entropy the noise removes

    A positive information_estimate says that the noisy classifier predicts these labels better than the
    clean one — pi-noise in the paper's model-based sense, up to sampling error. It does *not* certify
    pi-noise in Shannon's sense: in expectation it is at most H(T) − H(Y | X, E) = H(T) − H(Y | X),
    which is ≥ 0 for every noise (Gibbs; plain N(0, I) noise gives about +0.39 nats in notebook 01), and
    the true I(Y; E | X) is 0 for any noise drawn without seeing y (Eq. 3).

    clean_logits (B, C); noisy_logits (K, B, C).
    """
    K, B, C = noisy_logits.shape
    task_entropy = F.cross_entropy(clean_logits.float(), labels)
    estimate = F.cross_entropy(noisy_logits.reshape(K * B, C).float(), labels.repeat(K))
    return {"task_entropy": task_entropy, "conditional_estimate": estimate, "information_estimate": task_entropy - estimate}
