"""`pixio-robot compare`: eval-policy results side by side, as a table and a bar chart.

    pixio-robot compare results/push_* out=push.png

Prints a Markdown table (label, environment, episodes, success rate with its 95% Wilson
interval, mean episode length), writes it next to the chart (`push.md`), and draws the success
rates as bars with the intervals as error bars (`push.png`).
"""

from __future__ import annotations

import io
from pathlib import Path

from pixio_robot.atomic import write_bytes, write_text
from pixio_robot.errors import PixioError

from .commands import CompareConfig
from .evaluation import read_result


def table(results: list[dict]) -> str:
    lines = [
        "| policy | environment | episodes | success | 95% interval | mean length |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lo, hi = r["ci95"]
        lines.append(
            f"| {r['label']} | {r['env_name']} | {r['episodes']} | {r['success_rate']:.1%} | "
            f"{lo:.1%} - {hi:.1%} | {r['mean_length']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def bar_chart(results: list[dict], title: str | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['label']}\n{r['env_name']}" for r in results]
    rates = [100 * r["success_rate"] for r in results]
    lower = [100 * (r["success_rate"] - r["ci95"][0]) for r in results]
    upper = [100 * (r["ci95"][1] - r["success_rate"]) for r in results]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(results) + 1.5), 4.0), dpi=120)
    ax.bar(range(len(results)), rates, yerr=[lower, upper], capsize=4, color="#4C72B0")
    for i, r in enumerate(results):
        ax.text(i, rates[i] + upper[i] + 1.5, f"{r['successes']}/{r['episodes']}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(results)), labels, fontsize=8, rotation=30 if len(results) > 4 else 0, ha="center")
    ax.set_ylabel("success rate (%), 95% Wilson interval")
    ax.set_ylim(0, 112)
    ax.set_title(title or "eval-policy results")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run(cfg: CompareConfig) -> int:
    if not cfg.results:
        raise PixioError("no results given: pixio-robot compare RESULT.json ... out=chart.png")
    out = Path(cfg.out)
    if out.suffix != ".png":
        raise PixioError(f"out={out}: the chart is a PNG: name it *.png")
    results = [read_result(p) for p in cfg.results]
    text = table(results)
    write_bytes(out, bar_chart(results, cfg.title))
    write_text(out.with_suffix(".md"), text)
    print(text + f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0
