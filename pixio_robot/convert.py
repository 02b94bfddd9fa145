"""`pixio-robot convert` and `pixio-robot info`: checkpoints in, the project format out."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoints import guess_size, load_encoder, save_encoder, sha256_file
from .commands import ConvertConfig, InfoConfig
from .errors import PixioError


def convert(cfg: ConvertConfig) -> int:
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise PixioError(f"{out} exists: pass overwrite=true to replace it, or choose another out=")
    if out.resolve() == Path(cfg.source).resolve():
        raise PixioError("out= is the source file: write the converted checkpoint elsewhere")
    heads = {} if cfg.num_heads is None else {"num_heads": cfg.num_heads}
    model = load_encoder(cfg.source, size=cfg.size, **heads)
    save_encoder(model, out, metadata={"converted_from": Path(cfg.source).name})
    print(f"wrote {out} ({_describe(model)})")
    return 0


def info(cfg: InfoConfig) -> int:
    model = load_encoder(cfg.source)
    print(json.dumps(model.config | {"parameters": sum(p.numel() for p in model.parameters())}, indent=2))
    if Path(cfg.source).is_file():
        print(f"sha256: {sha256_file(cfg.source)}")
    return 0


def _describe(model) -> str:
    c = model.config
    name = guess_size(c["embed_dim"], c["depth"])
    return f"pixio_{name}" if name else f"embed_dim {c['embed_dim']}, {c['depth']} blocks"
