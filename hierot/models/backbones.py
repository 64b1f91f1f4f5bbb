"""Backbones through timm: pooled features (``num_classes=0``) and optional small-image stems.

A stem is one registered function that rewrites a freshly created model in place, so a new
stem is one decorated function (timm's ``register_model`` pattern).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import timm
from omegaconf import DictConfig
from torch import nn

from hierot.checks import config_check
from hierot.errors import ConfigError, user_message

log = logging.getLogger(__name__)

StemFn = Callable[[nn.Module], None]
_STEMS: dict[str, StemFn] = {}


def register_stem(name: str) -> Callable[[StemFn], StemFn]:
    def add(fn: StemFn) -> StemFn:
        _STEMS[name] = fn
        return fn

    return add


def list_stems() -> list[str]:
    return sorted(_STEMS)


def _resnet_parts(model: nn.Module) -> tuple[nn.Conv2d, int]:
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ConfigError(
            f"backbone.stem applies to ResNets (a conv1 + maxpool stem); "
            f"{type(model).__name__} has none; leave backbone.stem unset"
        )
    return conv, conv.out_channels


@register_stem("standard")
def _standard(model: nn.Module) -> None:
    """timm's ImageNet stem (7x7 stride-2 conv + max-pool): 32 px inputs leave 8 px maps."""
    _resnet_parts(model)


@register_stem("small")
def _small(model: nn.Module) -> None:
    """3x3 stride-2 conv, no max-pool: 32 px inputs leave 16 px maps (about 2x the cost)."""
    conv, width = _resnet_parts(model)
    model.conv1 = nn.Conv2d(conv.in_channels, width, 3, stride=2, padding=1, bias=False)
    model.maxpool = nn.Identity()


@register_stem("cifar")
def _cifar(model: nn.Module) -> None:
    """3x3 stride-1 conv, no max-pool, the CIFAR ResNet stem: full-resolution maps, ~6x cost."""
    conv, width = _resnet_parts(model)
    model.conv1 = nn.Conv2d(conv.in_channels, width, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _vit_patch_embed(model: nn.Module) -> nn.Module:
    embed = getattr(model, "patch_embed", None)
    if embed is None or not isinstance(getattr(embed, "proj", None), nn.Conv2d):
        raise ConfigError(
            f"backbone.stem: patch and conv apply to ViTs (a patch_embed.proj convolution); "
            f"{type(model).__name__} has none; use standard, small or cifar for ResNets"
        )
    return embed


@register_stem("patch")
def _patch(model: nn.Module) -> None:
    """timm's ViT stem: one p x p stride-p convolution (patchify)."""
    _vit_patch_embed(model)


@register_stem("conv")
def _conv(model: nn.Module) -> None:
    """A convolutional ViT stem (Xiao et al., "Early convolutions help transformers see
    better", NeurIPS 2021): log2(p) 3x3 stride-2 convolutions with batch norm and ReLU,
    widths doubling up to embed_dim / 2, then a 1x1 projection to embed_dim. Same tokens
    as patchify, at a few percent of the model's cost; it trains from scratch far faster
    and with less sensitivity to the learning rate (measured numbers in the README)."""
    embed = _vit_patch_embed(model)
    proj: nn.Conv2d = embed.proj
    patch = proj.stride[0]
    steps = patch.bit_length() - 1
    if patch != 2**steps or proj.stride[0] != proj.stride[1] or steps < 1:
        raise ConfigError(f"backbone.stem=conv needs a square power-of-two patch, got {patch}")
    size = tuple(getattr(embed, "img_size", None) or ())
    if any(s % patch for s in size):
        # Its stride-2 convolutions round up where patchify rounds down: the token grids
        # would differ from the position embeddings.
        raise ConfigError(
            f"backbone.stem=conv needs an image size divisible by the patch ({patch} px), got "
            f"{'x'.join(map(str, size))}: set data.image_size, or backbone.stem=patch"
        )
    dim = proj.out_channels
    widths = [max(dim >> (steps - i), 16) for i in range(steps)]
    layers: list[nn.Module] = []
    channels = proj.in_channels
    for width in widths:
        layers += [
            nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
    layers.append(nn.Conv2d(channels, dim, 1))
    embed.proj = nn.Sequential(*layers)


def _stored_tensors(weights: str) -> set[str]:
    """The tensor names in a weights file, read as timm reads it, before timm gets it: what
    timm raises for a file it cannot read says nothing of the file (``KeyError: 101``)."""
    try:
        return set(timm.models.load_state_dict(weights))
    except Exception as e:  # a file torch cannot read at all
        raise ConfigError(
            f"backbone.weights: cannot read {weights} as a PyTorch or safetensors weights "
            f"file ({type(e).__name__}: {user_message(e)})"
        ) from None


def _check_loaded(model: nn.Module, name: str, weights: str, stored: set[str]) -> None:
    # With num_classes=0 timm loads non-strictly and only logs what it skipped.
    wanted = list(model.state_dict())
    missing = [k for k in wanted if k not in stored]
    if len(missing) == len(wanted):
        raise ConfigError(
            f"backbone.weights: {weights} does not fit {name}: none of its {len(wanted)} "
            f"tensors (e.g. '{wanted[0]}') is in the file"
        )
    if missing:
        log.warning(
            "backbone.weights: %d tensors of %s are not in %s (first: %s); they start from scratch",
            len(missing),
            name,
            weights,
            missing[0],
        )


def _from_hub(error: Exception) -> bool:
    """A download failure (no network, offline mode with an empty cache, hub errors)."""
    package = type(error).__module__.split(".")[0]
    return isinstance(error, OSError) or package in ("huggingface_hub", "httpx", "requests")


def _hub_error(name: str, error: Exception) -> ConfigError:
    source = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(source, "hf_hub_id", None) if source is not None else None
    where = f" ({hub_id} on the Hugging Face hub)" if hub_id else ""
    if type(error).__name__ == "LocalEntryNotFoundError":
        why = "not in the local cache (HF_HOME), and the hub is offline or unreachable"
    else:
        why = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(
        f"backbone.pretrained: no pretrained weights for {name}{where}: {why}; fetch them "
        f"once where the hub is reachable (same HF_HOME), or give a file with backbone.weights=FILE"
    )


def check_backbone(name: object, stem: object = None, weights: object = None) -> None:
    """A ``ConfigError`` naming the first bad value: ``name`` not a timm model, an unknown
    ``stem``, a ``weights`` file that does not exist. The config check and the builder both
    call it."""
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{str(name).split('_')[0]}*")[:8] if name else []
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(f"backbone.name: {name!r} is not a timm model{hint}")
    if stem is not None and stem not in _STEMS:
        raise ConfigError(f"backbone.stem: unknown stem {stem!r}; available: {list_stems()}")
    if weights is not None and not Path(str(weights)).expanduser().is_file():
        raise ConfigError(f"backbone.weights: no such file: {Path(str(weights)).expanduser()}")


@config_check
def check_backbone_config(cfg: DictConfig) -> None:
    """The ``backbone`` group's model name, stem and weights file."""
    node = cfg.backbone
    check_backbone(node.get("name"), node.get("stem"), node.get("weights"))


def create_backbone(
    name: str,
    *,
    stem: str | None = None,
    weights: str | None = None,
    pretrained: bool = False,
    drop_rate: float = 0.0,
    **kwargs: object,
) -> nn.Module:
    """A timm model returning (B, num_features) pooled features.

    Args:
        name: a timm model name (``resnet18``, ``vit_base_patch16_224``, ...).
        stem: ResNets only: ``standard``, ``small`` or ``cifar`` (see the stem functions).
        weights: a local checkpoint file (timm or plain ``state_dict`` format); no hub access.
            A replaced stem starts from scratch; every other layer is loaded.
        pretrained: timm's pretrained weights for ``name`` from the Hugging Face hub, through
            its cache (``HF_HOME``; ``HF_HUB_OFFLINE=1`` reads only the cache). Ignored when
            ``weights`` is given.
        drop_rate: dropout before the (absent) classifier, as timm applies it.
        kwargs: passed to ``timm.create_model`` (``img_size`` for ViTs, ...).
    """
    check_backbone(name, stem, weights)
    extra: dict[str, object] = {}
    stored = None
    if weights is not None:
        weights = str(Path(weights).expanduser())
        stored = _stored_tensors(weights)
        # timm only reads an overlaid file when pretrained=True.
        extra = {"pretrained": True, "pretrained_cfg_overlay": {"file": weights}}
    elif pretrained:
        extra = {"pretrained": True}
    try:
        model = timm.create_model(name, num_classes=0, drop_rate=drop_rate, **extra, **kwargs)
    except TypeError as e:
        raise ConfigError(f"backbone: {name}: {e}") from None
    except Exception as e:
        if weights is not None:  # readable, but not as this model's weights (shapes)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"backbone.weights: {weights} does not fit {name}: {first}") from None
        if not pretrained or not _from_hub(e):
            raise
        raise _hub_error(name, e) from None
    if weights is not None and stored is not None:
        _check_loaded(model, name, weights, stored)
    if stem is not None:
        if (weights is not None or pretrained) and stem != "standard":
            log.warning(
                "backbone.stem=%s replaces the stem; its pretrained weights are unused", stem
            )
        _STEMS[stem](model)
    return model
