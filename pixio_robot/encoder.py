"""The Pixio encoder: timm's VisionTransformer with 8 class tokens and exact resampling.

Pixio (Yang et al., 2025) is a ViT whose `n_cls_tokens` class tokens all carry positional
embeddings and whose mean is the global image embedding. In timm terms that is one class
token plus `n_cls_tokens - 1` register tokens with `no_embed_class=False`; this module adds

- positional-embedding resampling done the way the official code does it (bicubic, no
  antialiasing), because timm's own antialiased resampling drifts from the released models;
- one features API (`features`, `global_embedding`, `dense_features`, `knn_embedding`) that
  runs only the blocks it needs and applies the final norm only to what is asked for;
- a registry of the released sizes plus small ones for CPU work, also reachable as
  `timm.create_model("pixio_vitb16")`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import resample_abs_pos_embed
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .errors import PixioError

# name -> (embed_dim, depth, num_heads). The first three are small sizes for CPU work and tests;
# the rest are the released checkpoints (patch 16, trained at 256x256).
PIXIO_SIZES: dict[str, tuple[int, int, int]] = {
    "vitn16": (128, 6, 4),
    "vitt16": (192, 12, 3),
    "vits16": (384, 12, 6),
    "vitb16": (768, 12, 12),
    "vitl16": (1024, 24, 16),
    "vith16": (1280, 32, 16),
    "vit1b16": (1536, 48, 24),
    "vit5b16": (3072, 48, 32),
}
RELEASED_SIZES = ("vitb16", "vitl16", "vith16", "vit1b16", "vit5b16")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BlockTokens:
    """The tokens of one block. Fields that were not asked for are None.

    `cls` is (B, n_cls, D); `patches` is (B, h, w, D) in row-major patch order. The plain fields
    are after the encoder's final LayerNorm, the `_raw` ones before it.
    """

    block: int
    cls: torch.Tensor | None = None
    patches: torch.Tensor | None = None
    cls_raw: torch.Tensor | None = None
    patches_raw: torch.Tensor | None = None


def run_block(block: nn.Module, x: torch.Tensor, checkpointing: bool, **kwargs) -> torch.Tensor:
    """One transformer block; with `checkpointing` (and gradients on) its activations are not
    kept but recomputed in the backward pass: memory per block drops to its input."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, **kwargs)
    return block(x, **kwargs)


class PixioViT(VisionTransformer):
    """Pixio encoder. Called on a normalised (B, 3, H, W) batch it returns the final-normed
    tokens (B, n_cls + h*w, D), class tokens first, like transformers' `last_hidden_state`."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 256,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        n_cls_tokens: int = 8,
        num_classes: int = 0,
        **kwargs,
    ):
        if n_cls_tokens < 1:
            raise PixioError(f"n_cls_tokens must be at least 1, got {n_cls_tokens}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            class_token=True,
            reg_tokens=n_cls_tokens - 1,
            no_embed_class=False,
            global_pool="",
            num_classes=num_classes,
            dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            weight_init="skip",
            **kwargs,
        )
        self.n_cls_tokens = n_cls_tokens
        self.patch_size = patch_size
        self.reset_parameters()

    @property
    def config(self) -> dict:
        """Everything needed to rebuild this architecture (saved next to the weights)."""
        gh, gw = self.patch_embed.grid_size
        return {
            "img_size": [gh * self.patch_size, gw * self.patch_size],
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": len(self.blocks),
            "num_heads": self.blocks[0].attn.num_heads,
            "mlp_ratio": self.blocks[0].mlp.fc1.out_features / self.embed_dim,
            "n_cls_tokens": self.n_cls_tokens,
        }

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The Pixio/MAE initialisation: trunc-normal(0.02) embeddings and tokens,
        xavier-uniform Linear layers, the patch projection initialised like a Linear."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.reg_token is not None:
            nn.init.trunc_normal_(self.reg_token, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---- embedding -------------------------------------------------------------------------

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise PixioError(
                f"image size {height}x{width} is not a multiple of the patch size {p}: "
                f"resize to e.g. {max(p, int(height / p + 0.5) * p)}x{max(p, int(width / p + 0.5) * p)} "
                "(pixio_robot.Preprocess does this)"
            )
        return height // p, width // p

    def resampled_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding for an h x w patch grid, class-token rows first: timm's
        resampling, bicubic without antialiasing like the official code (antialiasing changes
        the final tokens of the released models by about 0.02)."""
        return resample_abs_pos_embed(
            self.pos_embed,
            (h, w),
            old_size=self.patch_embed.grid_size,
            num_prefix_tokens=self.num_prefix_tokens,
            interpolation="bicubic",
            antialias=False,
        )

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, h, w, D) from the patch embedding (dynamic_img_size gives NHWC).
        b, h, w, d = x.shape
        prefix = self.cls_token if self.reg_token is None else torch.cat([self.cls_token, self.reg_token], 1)
        x = torch.cat([prefix.expand(b, -1, -1), x.reshape(b, h * w, d)], dim=1)
        return self.pos_drop(x + self.resampled_pos_embed(h, w))

    def check_images(self, x: torch.Tensor) -> tuple[int, int]:
        """One clear line for what the encoder cannot take; the patch grid (h, w) otherwise."""
        if x.ndim != 4 or x.shape[1] != self.patch_embed.proj.in_channels:
            raise PixioError(
                f"expected a (B, {self.patch_embed.proj.in_channels}, H, W) image batch, got shape "
                f"{tuple(x.shape)}: pass images through pixio_robot.Preprocess first"
            )
        if not torch.is_floating_point(x):
            raise PixioError(
                f"the encoder takes normalised float images, got {x.dtype}: pass images through "
                "pixio_robot.Preprocess (uint8 -> [0, 1] -> ImageNet mean/std)"
            )
        # Checked in eval mode only (feature extraction, policies): in training it would cost a
        # device sync per step, and the trainers' loss guard catches NaN there.
        if not self.training and not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
            raise PixioError("the image batch holds NaN or infinite values: check the images and their preprocessing")
        return self.grid_size(x.shape[-2], x.shape[-1])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> tokens (B, n_cls + h*w, D) with positions, before any block."""
        self.check_images(x)
        x = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))
        return self.norm_pre(self.patch_drop(self._pos_embed(x)))

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:  # timm's set_grad_checkpointing(True) switches checkpointing on
            x = run_block(blk, x, self.grad_checkpointing, attn_mask=attn_mask, is_causal=is_causal)
        return self.norm(x)

    # ---- features API ----------------------------------------------------------------------

    def block_indices(self, blocks: int | Sequence[int]) -> list[int]:
        """Normalise block indices (negative counts from the end) and check their range."""
        depth = len(self.blocks)
        out = []
        for b in [blocks] if isinstance(blocks, int) else blocks:
            i = int(b) + depth if int(b) < 0 else int(b)
            if not 0 <= i < depth:
                raise PixioError(f"block {b} does not exist: this encoder has blocks 0..{depth - 1}")
            out.append(i)
        if not out:
            raise PixioError("no blocks requested: pass at least one block index, e.g. blocks=-1")
        return out

    def dense_block_indices(self, n_taps: int = 4) -> list[int]:
        """The blocks DPT heads tap: depth//4*(i+1)-1, e.g. 7, 15, 23, 31 for ViT-H."""
        depth = len(self.blocks)
        return [depth // n_taps * (i + 1) - 1 for i in range(n_taps)]

    def features(
        self,
        x: torch.Tensor,
        blocks: int | Sequence[int] = -1,
        *,
        norm: bool = True,
        raw: bool = False,
        cls: bool = True,
        patches: bool = True,
    ) -> list[BlockTokens]:
        """Tokens of the chosen blocks, in the order asked.

        Runs the blocks up to the deepest one requested, and applies the final norm (`norm`)
        only to the requested blocks and token kinds; `raw` also returns them before the norm.
        """
        idx = self.block_indices(blocks)
        h, w = self.check_images(x)
        taps = sorted(set(idx))
        tokens = self.forward_intermediates(  # timm's: the blocks up to the deepest one asked
            x.to(self.patch_embed.proj.weight.dtype),
            taps,
            return_prefix_tokens=True,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        found: dict[int, BlockTokens] = {}
        for i, (grid, prefix) in zip(taps, tokens, strict=True):
            out = BlockTokens(block=i)
            if norm:
                out.cls = self.norm(prefix) if cls else None
                out.patches = self.norm(grid).unflatten(1, (h, w)) if patches else None
            if raw:
                out.cls_raw = prefix if cls else None
                out.patches_raw = grid.unflatten(1, (h, w)) if patches else None
            found[i] = out
        return [found[i] for i in idx]

    def global_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the last block's normed class tokens, (B, D): transformers' `pooler_output`
        and the embedding CortexBench feeds to policies."""
        return self.features(x, -1, patches=False)[0].cls.mean(1)

    def knn_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the last block's class tokens before the final norm, L2-normalised (B, D)."""
        cls = self.features(x, -1, norm=False, raw=True, patches=False)[0].cls_raw
        return F.normalize(cls.mean(1), dim=-1)

    def dense_features(self, x: torch.Tensor, n_taps: int = 4) -> list[torch.Tensor]:
        """DPT taps: per tapped block, normed patch tokens concatenated along channels with the
        mean of the normed class tokens, each (B, h, w, 2D)."""
        taps = self.features(x, self.dense_block_indices(n_taps))
        return [torch.cat([t.patches, t.cls.mean(1)[:, None, None].expand_as(t.patches)], dim=-1) for t in taps]


def canonical_size(name: str) -> str:
    """'pixio_vitb16', 'vitb16' and 'ViT-B/16'-style spellings -> 'vitb16'."""
    key = name.lower().removeprefix("pixio_").replace("-", "").replace("/", "")
    if key not in PIXIO_SIZES:
        raise PixioError(f"unknown encoder size {name!r}: choose one of {', '.join(PIXIO_SIZES)}")
    return key


def create_encoder(size: str = "vitb16", **kwargs) -> PixioViT:
    """A random-initialised Pixio encoder of a named size; kwargs override the architecture
    (e.g. img_size=128, n_cls_tokens=4)."""
    embed_dim, depth, num_heads = PIXIO_SIZES[canonical_size(size)]
    arch = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads} | kwargs
    return PixioViT(**arch)


def _register(size: str) -> None:
    def entrypoint(pretrained: bool = False, **kwargs) -> PixioViT:
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        if pretrained:
            raise PixioError(
                "pixio-robot downloads nothing: build with pretrained=False and load weights with "
                "pixio_robot.load_encoder(path)"
            )
        return create_encoder(size, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = f"pixio_{size}"
    entrypoint.__module__ = __name__
    register_model(entrypoint)


for _size in PIXIO_SIZES:
    _register(_size)
