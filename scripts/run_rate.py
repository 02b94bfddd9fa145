"""The rate of a run from its metrics.csv, for the GPU scripts (gpu_encoder_v2.sh, gpu_recon.sh).

    python3 scripts/run_rate.py RUN/metrics.csv images          # "images/s (median ...): N; final loss L"
    python3 scripts/run_rate.py RUN/metrics.csv --steps-in 240 --batch 24   # steps that fit 240 s

The median of `samples_per_s` past the first fifth of the rows (the warm-up and first compiles).
`--steps-in` keeps 10 % of the time for checkpoints and the val loss, and at least 20 steps.
"""

import argparse
import csv

parser = argparse.ArgumentParser()
parser.add_argument("metrics")
parser.add_argument("unit", nargs="?", default="samples")
parser.add_argument("--steps-in", type=float, help="seconds of training to fit")
parser.add_argument("--batch", type=int, default=1, help="samples per step")
args = parser.parse_args()

rows = list(csv.DictReader(open(args.metrics)))
rates = sorted(float(r["samples_per_s"]) for r in rows[len(rows) // 5 :])
rate = rates[len(rates) // 2]
if args.steps_in is not None:
    print(max(20, int(rate / args.batch * args.steps_in * 0.9)))
else:
    print(f"{args.unit}/s (median after the first fifth): {rate:.0f}; final loss {rows[-1]['loss']}")
