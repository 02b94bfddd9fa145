"""Pixio pre-training: the `pixio_robot` encoder on visible patches + a deep pixel decoder.

The method, as in the paper and its official code (docs/DESIGN.md section 3):

- grid masking: the h x w patch grid is cut into cells of `mask_grid x mask_grid` patches;
  per sample the cells are shuffled and `int(cells * (1 - mask_ratio))` are kept;
- the encoder (`pixio_robot.PixioViT`, the very model users load later) sees its class tokens
  and the kept patches only, with their positional embeddings;
- the decoder maps the encoder tokens to its width, puts a learned mask token at every masked
  patch, adds its own learned positional embedding over class tokens + patches, and runs
  `decoder_depth` blocks over all of them (class tokens included);
- loss: MSE between predicted and true pixels of the masked patches only, each target patch
  normalised by its own mean and variance (`norm_pix_loss`).

Plain MAE is the same model with mask_grid=1, one class token and a shallow decoder.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn

from pixio_robot.encoder import PixioViT, create_encoder, run_block

from .configuration_pixio import ModelConfig


@dataclass
class PixioOutput:
    loss: torch.Tensor  # scalar, float32
    pred: torch.Tensor  # (B, n_masked, p*p*3) predicted (normalised) pixels of the masked patches
    ids_keep: torch.Tensor  # (B, n_keep) indices of the visible patches, row-major in the patch grid
    ids_mask: torch.Tensor  # (B, n_masked) indices of the masked patches, in the order of `pred`


def grid_mask(noise: torch.Tensor, h: int, w: int, grid: int, n_keep_cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample grid masking from uniform noise (B, cells): the cells with the lowest noise
    are kept. Returns patch indices (ids_keep (B, n_keep_cells*grid^2), ids_mask (B, rest))."""
    cells = cell_patches(h, w, grid, noise.device)  # (cells, grid*grid)
    order = noise.argsort(dim=1)
    b = noise.shape[0]
    return cells[order[:, :n_keep_cells]].reshape(b, -1), cells[order[:, n_keep_cells:]].reshape(b, -1)


def cell_patches(h: int, w: int, grid: int, device=None) -> torch.Tensor:
    """(cells, grid*grid): the row-major patch indices covered by each cell, cells row-major."""
    idx = torch.arange(h * w, device=device).view(h // grid, grid, w // grid, grid)
    return idx.permute(0, 2, 1, 3).reshape(-1, grid * grid)


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, h*w, p*p*3), pixels of a patch ordered (row, column, channel) as in
    MAE and the official Pixio code."""
    b, c, hh, ww = images.shape
    x = images.reshape(b, c, hh // p, p, ww // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (hh // p) * (ww // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """(B, h*w, p*p*3) -> (B, 3, h*p, w*p): the inverse of `patchify`."""
    b = patches.shape[0]
    x = patches.reshape(b, h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, -1, h * p, w * p)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), ids (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch to zero mean and unit variance (unbiased variance, as the official code)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


def encode_visible(encoder: PixioViT, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """Class tokens + the visible patches through the encoder: (B, n_cls + n_keep, D), normed."""
    n = encoder.n_cls_tokens
    # oneDNN's bfloat16 kernel for the 16x16/stride-16 patch projection is ~10x slower on CPU
    # than its float32 one (6% of a ViT-S training step), so the embedding stays float32 there.
    with torch.autocast("cpu", enabled=False) if images.device.type == "cpu" else contextlib.nullcontext():
        tokens = encoder.embed(images)  # positions are added before the gather, so order is free
    x = torch.cat([tokens[:, :n], gather_tokens(tokens[:, n:], ids_keep)], dim=1)
    for blk in encoder.blocks:
        x = run_block(blk, x, encoder.grad_checkpointing)
    return encoder.norm(x)


class PixioDecoder(nn.Module):
    """Encoder tokens (class tokens + visible patches) -> pixels of the masked patches."""

    def __init__(
        self,
        embed_dim: int,
        grid_size: tuple[int, int],
        n_cls_tokens: int,
        decoder_dim: int = 512,
        depth: int = 32,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        in_chans: int = 3,
    ):
        super().__init__()
        self.grid_size = grid_size
        self.n_cls_tokens = n_cls_tokens
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_cls_tokens + grid_size[0] * grid_size[1], decoder_dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        )
        self.norm = norm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, patch_size * patch_size * in_chans)
        self.grad_checkpointing = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, ids_keep: torch.Tensor, ids_mask: torch.Tensor) -> torch.Tensor:
        n = self.n_cls_tokens
        x = self.embed(tokens)
        b, _, d = x.shape
        num_patches = self.grid_size[0] * self.grid_size[1]
        # One scatter puts every visible token at its place in a sequence of mask tokens. The
        # sequence keeps the parameters' dtype, so under autocast the residual stream of the
        # decoder stays float32 as in the official code (only the matmuls run in bfloat16).
        seq = self.mask_token.expand(b, n + num_patches, d)
        idx = torch.cat([_prefix_ids(b, n, ids_keep), ids_keep + n], 1)[..., None].expand(-1, -1, d)
        x = seq.scatter(1, idx, x.to(seq.dtype)) + self.pos_embed
        for blk in self.blocks:
            x = run_block(blk, x, self.grad_checkpointing)
        # Only the masked patches are predicted: the rest of the sequence has no loss.
        x = gather_tokens(x, ids_mask + n)
        return self.pred(self.norm(x))


def _prefix_ids(b: int, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, device=like.device).expand(b, n)


class PixioPretrainModel(nn.Module):
    """Encoder + decoder + grid masking + loss. `model(images)` -> `PixioOutput`."""

    def __init__(self, cfg: ModelConfig, encoder: PixioViT | None = None):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.encoder = encoder or create_encoder(
            cfg.encoder, img_size=cfg.image_size, n_cls_tokens=cfg.n_cls_tokens, drop_path_rate=cfg.drop_path
        )
        self.patch_size = self.encoder.patch_size
        self.grid_size = (cfg.image_size // self.patch_size,) * 2
        self.n_cls_tokens = self.encoder.n_cls_tokens
        self.decoder = PixioDecoder(
            self.encoder.embed_dim,
            self.grid_size,
            self.n_cls_tokens,
            cfg.decoder_dim,
            cfg.decoder_depth,
            cfg.decoder_heads,
            patch_size=self.patch_size,
        )
        self.set_grad_checkpointing(cfg.grad_checkpointing)
        h, w = self.grid_size
        self.num_cells = (h // cfg.mask_grid) * (w // cfg.mask_grid)
        self.n_keep_cells = int(self.num_cells * (1 - cfg.mask_ratio))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block, encoder and decoder (timm's switch name)."""
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    def random_noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.rand(batch, self.num_cells, generator=generator, device=device)

    def mask(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grid_mask(noise, *self.grid_size, self.cfg.mask_grid, self.n_keep_cells)

    def forward_encoder(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        return encode_visible(self.encoder, images, ids_keep)

    def targets(self, images: torch.Tensor, ids_mask: torch.Tensor) -> torch.Tensor:
        target = gather_tokens(patchify(images.float(), self.patch_size), ids_mask)
        return normalize_patches(target) if self.cfg.norm_pix_loss else target

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> PixioOutput:
        """images: normalised (B, 3, S, S); noise: (B, num_cells) uniform masking noise (drawn
        here when None; the trainer passes noise derived from each sample's identity)."""
        if noise is None:
            noise = self.random_noise(images.shape[0], device=images.device)
        ids_keep, ids_mask = self.mask(noise)
        pred = self.decoder(self.forward_encoder(images, ids_keep), ids_keep, ids_mask)
        loss = F.mse_loss(pred.float(), self.targets(images, ids_mask))
        return PixioOutput(loss, pred, ids_keep, ids_mask)


def set_attention(model: nn.Module, mode: str, device: torch.device, dtype: torch.dtype) -> str:
    """Choose timm's attention kernel for every block: 'fused' (scaled_dot_product_attention)
    or 'math' (two matmuls and a softmax). 'auto' takes math on CPU under bfloat16, where
    PyTorch's fused CPU kernel runs the backward pass several times slower than two matmuls
    (see benchmarks/pretrain.py), and the fused kernel everywhere else."""
    if mode == "auto":
        mode = "math" if device.type == "cpu" and dtype == torch.bfloat16 else "fused"
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = mode == "fused"
    return mode
