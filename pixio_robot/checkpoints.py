"""Loading and saving Pixio encoders.

Readable layouts, detected from the keys (any `module.`/`model.`/`pixio.` prefix removed):

- official `.pth` (`pixio_<size>.pth`): flat encoder state dict, `cls_token` (1, n_cls, D),
  `blocks.{i}.attn.qkv`, ... ; decoder keys of a full pre-training checkpoint are dropped;
- transformers folders (`config.json` + `model.safetensors`, sharded or not, or
  `pytorch_model.bin`): the in-memory keys of current transformers
  (`layers.{i}.attention.q_proj`) and the on-disk ones (`encoder.layer.{i}.attention.attention.query`,
  with the MLP as `mlp.fc1` in the first release or `intermediate.dense` as transformers 5 saves it);
- the project format: one `.safetensors` file in timm's layout (`cls_token` + `reg_token`)
  with the architecture as JSON in the file's metadata. This is what the toolkit writes.

Every layout is first brought to the official one, the architecture is read off the tensors
(or taken from a config and checked against them), then split into timm's layout.
Pickled files are only ever read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .bundled import BUNDLED, resolve_weights, sha256_file  # noqa: F401 (sha256_file: re-exported)
from .encoder import PIXIO_SIZES, PixioViT, canonical_size, create_encoder
from .errors import PixioError

FORMAT = "pixio-robot/encoder"
_PREFIXES = ("module.", "model.", "pixio.", "backbone.", "encoder.")
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


# ---- public API -----------------------------------------------------------------------------


def load_encoder(source: str | os.PathLike, size: str | None = None, **overrides) -> PixioViT:
    """An encoder from a checkpoint path in any supported layout, the name of bundled weights
    ('sim_vitn16', checked against its SHA-256), or a size name ('vitb16', 'pixio_vits16', ...)
    for a random-initialised one.

    `size` (or `overrides` such as num_heads=...) states the architecture expected from a
    checkpoint; without it the architecture is read off the weights.
    """
    if isinstance(source, str) and not os.path.exists(source) and _is_size_name(source):
        return create_encoder(source, **overrides)
    path = resolve_weights(source)
    if not path.exists():
        raise PixioError(
            f"{path}: no such checkpoint: give a file (.pth, .safetensors), a transformers model "
            f"folder, bundled weights ({', '.join(BUNDLED)}) or a size name ({', '.join(PIXIO_SIZES)})"
        )
    state, config = read_checkpoint(path)
    if size is not None:
        config = _size_config(size) | {k: v for k, v in (config or {}).items() if k in ("img_size", "n_cls_tokens")}
    arch = infer_architecture(state, (config or {}) | overrides)
    model = PixioViT(**arch)
    _load_checked(model, to_timm_layout(state, arch["n_cls_tokens"]), path)
    return model.eval()


def save_encoder(model: PixioViT, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write `model` in the project format (safetensors + JSON architecture), atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise PixioError(f"{path}: the project format is a .safetensors file: name the output *.safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config)} | (metadata or {})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict in the official layout, architecture config or None) from any layout."""
    config = None
    if path.is_dir():
        path, config = _resolve_folder(path)
    if isinstance(path, list):  # sharded transformers checkpoint
        state: dict[str, torch.Tensor] = {}
        for shard in path:
            state |= _read_safetensors(shard)[0]
    elif path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
        if meta.get("format") == FORMAT:
            config = json.loads(meta["config"])
    elif path.suffix in _PICKLE_SUFFIXES:
        state = _read_pickle(path)
    else:
        raise PixioError(
            f"{path}: unknown checkpoint type {path.suffix!r}: expected .pth/.pt/.bin, .safetensors "
            "or a transformers model folder"
        )
    return to_official_layout(state, path), config


def guess_size(embed_dim: int, depth: int | None = None) -> str | None:
    """The named size with this width (and depth), if any."""
    for name, (d, n, _) in PIXIO_SIZES.items():
        if d == embed_dim and (depth is None or n == depth):
            return name
    return None


# ---- reading files --------------------------------------------------------------------------


def _is_size_name(name: str) -> bool:
    try:
        canonical_size(name)
        return True
    except PixioError:
        return False


def _size_config(size: str) -> dict:
    d, depth, heads = PIXIO_SIZES[canonical_size(size)]
    return {"embed_dim": d, "depth": depth, "num_heads": heads}


def _resolve_folder(folder: Path) -> tuple[Path | list[Path], dict | None]:
    cfg_file = folder / "config.json"
    config = _hf_config(cfg_file) if cfg_file.exists() else None
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards], config
    for name in ("model.safetensors", "pytorch_model.bin", "encoder.safetensors"):
        if (folder / name).exists():
            return folder / name, config
    raise PixioError(
        f"{folder}: no weights found: a transformers folder needs model.safetensors or pytorch_model.bin "
        "next to config.json"
    )


def _hf_config(path: Path) -> dict:
    try:
        c = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PixioError(f"{path}: unreadable config ({e}): restore it or remove it to infer the architecture") from e
    if c.get("model_type") not in (None, "pixio"):
        raise PixioError(f"{path}: model_type is {c.get('model_type')!r}, not 'pixio': this is not a Pixio model")
    if c.get("hidden_act", "gelu") != "gelu" or c.get("layer_norm_eps", 1e-6) != 1e-6:
        raise PixioError(f"{path}: only GELU and LayerNorm eps 1e-6 are supported (as in every released Pixio)")
    img = c.get("image_size", 256)
    return {
        "embed_dim": c["hidden_size"],
        "depth": c["num_hidden_layers"],
        "num_heads": c["num_attention_heads"],
        "mlp_ratio": c.get("mlp_ratio", 4),
        "patch_size": c.get("patch_size", 16),
        "img_size": list(img) if isinstance(img, (list, tuple)) else [img, img],
        "n_cls_tokens": c.get("n_cls_tokens", 8),
    }


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise PixioError(f"{path}: truncated or corrupt safetensors file ({e}): download or convert it again") from e


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    if path.stat().st_size == 0:
        raise PixioError(f"{path}: empty file (0 bytes): the download or copy did not finish: fetch it again")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PixioError(
            f"{path}: refused: the file needs arbitrary unpickling (it stores Python objects, not only "
            "tensors), which can run any code. If you trust it, re-save its state_dict with torch.save "
            "or convert it to safetensors"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, IndexError) as e:
        raise PixioError(
            f"{path}: truncated or corrupt checkpoint ({str(e).splitlines()[0]}): download it again"
        ) from e
    for key in ("model", "state_dict", "encoder"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and "cls_token" not in obj:
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PixioError(f"{path}: not a state dict of tensors: save the encoder's state_dict()")
    return obj


# ---- layouts --------------------------------------------------------------------------------

_HF_NEW = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^layernorm\.", "norm."),
]
_HF_OLD = _HF_NEW[:3] + [
    (r"^encoder\.layer\.(\d+)\.norm1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.norm2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    # transformers >= 5 saves the MLP under ViT's names
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
]
_HF_QKV = {
    "new": (r"^layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$", "qkv"),
    "old": (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", "qkv"),
}


def _detect(state: dict) -> str | None:
    if "blocks.0.attn.qkv.weight" in state or ("cls_token" in state and "pos_embed" in state):
        return "timm" if "reg_token" in state else "official"
    if "layers.0.attention.q_proj.weight" in state:
        return "new"
    if "encoder.layer.0.attention.attention.query.weight" in state:
        return "old"
    return None


def to_official_layout(state: dict[str, torch.Tensor], path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    layout = _detect(state)
    while layout is None:
        prefix = next((p for p in _PREFIXES if any(k.startswith(p) for k in state)), None)
        if prefix is None:
            first = ", ".join(list(state)[:4]) or "nothing"
            raise PixioError(
                f"{path}: no Pixio encoder weights found (keys start with {first}): is this the right file?"
            )
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        layout = _detect(state)
    if layout == "timm":
        state = dict(state)
        state["cls_token"] = torch.cat([state["cls_token"], state.pop("reg_token")], dim=1)
    if layout in ("official", "timm"):
        return {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
    return _from_transformers(state, layout)


def _from_transformers(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    renames = _HF_NEW if layout == "new" else _HF_OLD
    qkv_re = re.compile(_HF_QKV[layout][0])
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := qkv_re.match(key):
            block, which, kind = m.groups()
            qkv.setdefault((block, kind), {})[which[0]] = value
            continue
        for pattern, repl in renames:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            out[key] = value  # reported as unexpected when the weights are loaded
    for (block, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_timm_layout(state: dict[str, torch.Tensor], n_cls_tokens: int) -> dict[str, torch.Tensor]:
    state = dict(state)
    cls = state.pop("cls_token")
    state["cls_token"] = cls[:, :1]
    if n_cls_tokens > 1:
        state["reg_token"] = cls[:, 1:]
    return state


def infer_architecture(state: dict[str, torch.Tensor], config: dict | None = None) -> dict:
    """Architecture from the official-layout tensors; a given config wins where it says more.

    Widths are the value most tensors agree on, so that one damaged tensor is reported as the
    one that does not fit instead of making every other tensor look wrong. The head count is
    not in the weights: it comes from the config, or from the named size of that width."""
    try:
        cls, pos, proj = state["cls_token"], state["pos_embed"], state["patch_embed.proj.weight"]
    except KeyError as e:
        raise PixioError(f"checkpoint lacks {e.args[0]}: it is not a complete Pixio encoder") from e
    config = config or {}
    embed_dim = _embed_dim(state)
    hidden = [t.shape[0] for k, t in state.items() if re.fullmatch(r"blocks\.\d+\.mlp\.fc1\.weight", k) and t.ndim == 2]
    n_cls, patch = cls.shape[1], proj.shape[-1]
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    grid = round(max(pos.shape[1] - n_cls, 0) ** 0.5)
    name = guess_size(embed_dim, depth) or guess_size(embed_dim)
    if name is None and "num_heads" not in config:
        raise PixioError(
            f"width {embed_dim} is none of the named sizes, and the weights do not tell the number of "
            "attention heads: pass num_heads= (load_encoder(..., num_heads=N), `convert ... num_heads=N`) "
            "or use a checkpoint with its config (project .safetensors or a transformers folder)"
        )
    arch = {
        "img_size": [grid * patch, grid * patch],
        "patch_size": patch,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": PIXIO_SIZES[name][2] if name else None,
        "mlp_ratio": _most_common(hidden) / embed_dim if hidden else 4.0,
        "n_cls_tokens": n_cls,
    }
    return arch | config


def _embed_dim(state: dict[str, torch.Tensor]) -> int:
    """The width most of the tensors that carry it agree on."""
    norms = [t for k, t in state.items() if re.fullmatch(r"(blocks\.\d+\.norm[12]|norm)\.weight", k) and t.ndim]
    widths = [t.shape[-1] for k in ("cls_token", "pos_embed") if (t := state.get(k)) is not None]
    widths += [t.shape[0] for t in norms]
    if (proj := state.get("patch_embed.proj.weight")) is not None:
        widths.append(proj.shape[0])
    return _most_common(widths)


def _most_common(values: list[int]) -> int:
    return max(set(values), key=values.count)


def _load_checked(model: PixioViT, state: dict[str, torch.Tensor], path: Path) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise PixioError(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({_few(bad)}): the training that wrote "
            "them diverged; use an earlier checkpoint"
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} wrongly shaped ({k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
            )
        raise PixioError(f"{path}: keys do not fit the encoder: {'; '.join(parts)}; {_looks_like(state)}")
    model.load_state_dict(state)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def _looks_like(state: dict[str, torch.Tensor]) -> str:
    if state.get("cls_token") is None:
        return "the file has no class token: it is not a Pixio encoder"
    d = _embed_dim(state)
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    name = guess_size(d, depth)
    what = f"pixio_{name}" if name else "no named size"
    return f"the weights look like {what} (embed_dim {d}, {depth} blocks): load without size= or pass the matching one"
