"""Pre-training Pixio encoders by masked pixel reconstruction, and distilling them.

- `configuration_pixio` / `configuration_distill`: the options (dataclasses; presets in
  `configs/pretrain/` and `configs/distill/`);
- `modeling_pixio`: the method in one file (grid masking, the `pixio_robot` encoder on visible
  patches, the deep decoder, the loss); `modeling_distill`: teacher -> student;
- `data`: image folders, WebDataset shards and LeRobot frames -> reproducible batches;
  `curation`: loss-based self-curation and `pixio-robot curate`;
- `train`: the loop (AdamW, warm-up + cosine, accumulation, autocast, torchrun/DDP, logs),
  `checkpointing`: resumable checkpoints, `distributed`: torchrun helpers, `optim`;
- `view`: `pixio-robot pretrain-view` and `pixio-robot pretrain-export`;
- `commands`: the CLI commands; `python -m pretrain` runs them under torchrun.
"""
