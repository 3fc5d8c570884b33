"""Markdown tables, PNG plots and a one-page HTML report.

Pure formatting: functions take plain data (the contents of ``results.json``) and return
strings or write one file each; no numbers are computed here, so the markdown, the HTML and
the JSON can never disagree.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the demo runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    out = ["| " + " | ".join(str(h) for h in header) + " |"]
    out.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)


def bar_plot(
    path: Path,
    groups: Sequence[str],
    series: dict[str, Sequence[tuple[float, float, float]]],
    title: str,
    ylabel: str = "accuracy (%)",
    chance: float | None = None,
) -> None:
    """Grouped bars with error bars; ``series[name][i] = (mean, lo, hi)`` for groups[i]."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) * max(1, len(series)) / 2), 3.6))
    width = 0.8 / max(1, len(series))
    for j, (name, vals) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        means = [v[0] for v in vals]
        err = [[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]]
        ax.bar(xs, means, width, yerr=err, label=name, capsize=2)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    _save(fig, path)


def line_plot(
    path: Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> None:
    """One line per series; ``series[name] = (xs, ys)``."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def image_grid(path: Path, rows: Sequence[Sequence], row_titles: Sequence[str], title: str) -> None:
    """A grid of small RGB images (numpy uint8 (H, W, 3)); rows may differ in length."""
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.3 * n_cols, 1.4 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j])
        axes[i][0].set_title(row_titles[i], fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def html_page(title: str, markdown_text: str, images: Sequence[str]) -> str:
    """A self-contained page: the report's markdown as preformatted tables plus the plots.

    Markdown is shown verbatim (no markdown library needed offline); images are referenced
    by relative path so the folder can be copied as a whole.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"
        "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<pre>{html.escape(markdown_text)}</pre>",
    ]
    for img in images:
        parts.append(f"<h3>{html.escape(img)}</h3><img src='{html.escape(img)}' alt='{html.escape(img)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
