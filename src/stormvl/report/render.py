"""Tables, PNG figures and the HTML page of a report.

Pure formatting: functions take plain data (the contents of ``results.json``) and return
strings or write one file each; no numbers are computed here, so the markdown, the HTML and
the JSON can never disagree.

Figures are sized for a page about 1,000 px wide (10 in at 100 dpi at most), so they are
shown near their own size: text in them stays readable without zooming.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the demo runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

DPI = 100
PAGE_IN = 10.0  # the widest figure, in inches (= 1,000 px at DPI)
# one colour and marker per method on every figure of a report
METHOD_STYLE = {
    "direct": ("#7f7f7f", "o"),
    "textcot": ("#ff7f0e", "s"),
    "latent": ("#9467bd", "^"),
    "storm": ("#d62728", "D"),
    "oracle": ("#1f77b4", "v"),
}
_OTHER = ("#2ca02c", "P")
CHANCE_STYLE = {"color": "#444444", "linestyle": "--", "linewidth": 1}


def style(method: str) -> tuple[str, str]:
    """(colour, marker) of a method (``"storm seed 2"`` is styled as storm)."""
    return METHOD_STYLE.get(method.split()[0], _OTHER)


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    out = ["| " + " | ".join(str(h) for h in header) + " |"]
    out.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with aligned columns, for a terminal."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def accuracy_panels(path: Path, panels: Sequence[tuple[str, dict]], methods: Sequence[str],
                    chance: float | None) -> None:
    """Small multiples: one panel per group, one horizontal bar per method with its interval.

    ``panels[i] = (title, {method: (mean, lo, hi) or None})``. Every bar also gets a marker
    at its mean and its value as text, so a bar of zero height still shows.
    """
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    height = 0.3 * len(methods) + 0.9
    # a lone panel (one family, one split) as wide as two: its labels need the room
    fig, axes = plt.subplots(nrows, ncols, figsize=(PAGE_IN * max(2, ncols) / 3, height * nrows),
                             sharex=True, sharey=True, squeeze=False)
    ys = list(range(len(methods)))[::-1]  # first method on top
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.axis("off")
            continue
        title, vals = panels[i]
        for y, m in zip(ys, methods, strict=True):
            v = vals.get(m)
            if v is None:
                continue
            colour, marker = style(m)
            mean, lo, hi = v
            ax.barh(y, mean, height=0.7, color=colour, alpha=0.55)
            ax.errorbar(mean, y, xerr=[[mean - lo], [hi - mean]], fmt=marker, color=colour,
                        markersize=4, capsize=2, linewidth=1)
            ax.text(min(hi, 100) + 2, y, f"{mean:.1f}", va="center", fontsize=7)
        if chance is not None:
            ax.axvline(chance, **CHANCE_STYLE)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlim(0, 112)
        ax.set_yticks(ys, methods, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("accuracy (%)", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def curves_plot(path: Path, accuracy: dict, loss: dict, chance: float | None,
                accuracy_label: str) -> None:
    """Two panels: validation accuracy at each checkpoint, and training cross-entropy.

    ``accuracy[method][seed] = [[step, acc], ...]``, ``loss`` likewise with [step, ce].
    Markers are hollow and shrink with the method's rank, so points of methods that
    coincide nest instead of hiding each other.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(PAGE_IN, 3.6))
    for rank, (m, per_seed) in enumerate(accuracy.items()):
        colour, marker = style(m)
        for j, pts in enumerate(per_seed.values()):
            if not pts:
                continue
            left.plot([p[0] for p in pts], [p[1] if p[1] is not None else math.nan for p in pts],
                      color=colour, marker=marker, markersize=9 - 1.2 * rank, fillstyle="none",
                      linewidth=1.2, alpha=1.0 if j == 0 else 0.5, label=m if j == 0 else None)
    if chance is not None:
        left.axhline(chance, label="chance", **CHANCE_STYLE)
    left.set_ylim(-3, 103)
    left.set_xlabel("optimizer step", fontsize=8)
    left.set_ylabel(accuracy_label, fontsize=8)
    left.set_title("validation accuracy", fontsize=9, loc="left")
    for m, per_seed in loss.items():
        colour, _ = style(m)
        for j, pts in enumerate(per_seed.values()):
            if pts:
                right.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, linewidth=1.2,
                           alpha=1.0 if j == 0 else 0.5, label=m if j == 0 else None)
    right.set_xlabel("optimizer step", fontsize=8)
    right.set_ylabel("cross-entropy (nats per token)", fontsize=8)
    right.set_title("training loss", fontsize=9, loc="left")
    for ax in (left, right):
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def alignment_plot(path: Path, series: dict[str, dict[int, tuple[Sequence[float], Sequence[float]]]],
                   stage1_end: float | None) -> None:
    """Alignment cosine per latent step over training; a vertical line where Stage I ends.

    ``series[seed][k] = (steps, cosines)``: one colour per latent step k, seeds after the
    first fainter.
    """
    fig, ax = plt.subplots(figsize=(PAGE_IN * 0.7, 3.4))
    colours = plt.get_cmap("viridis")
    for j, per_step in enumerate(series.values()):
        for k, (xs, ys) in per_step.items():
            ax.plot(list(xs), list(ys), marker="o", markersize=3.5, linewidth=1.2,
                    color=colours(k / max(1, len(per_step))), alpha=1.0 if j == 0 else 0.4,
                    label=f"latent {k + 1}" if j == 0 else None)
    if stage1_end is not None:
        ax.axvline(stage1_end, color="#444444", linestyle=":", linewidth=1.2)
        ax.annotate("Stage I ends", (stage1_end, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(4, -12), textcoords="offset points", fontsize=8)
    ax.axhline(0, color="#999999", linewidth=0.8)
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.set_ylabel("cosine to the thought-video target", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    _save(fig, path)


def stacked_bars(path: Path, methods: Sequence[str], parts: dict[str, Sequence[float]],
                 xlabel: str) -> None:
    """One horizontal bar per method, cut into ``parts`` (``parts[name][i]`` for methods[i]),
    with the total written at its end."""
    fig, ax = plt.subplots(figsize=(PAGE_IN * 0.7, 0.4 * len(methods) + 1.2))
    ys = list(range(len(methods)))[::-1]
    left = [0.0] * len(methods)
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    for (name, vals), colour in zip(parts.items(), colours, strict=False):
        ax.barh(ys, vals, left=left, height=0.6, label=name, color=colour)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    for y, total in zip(ys, left, strict=True):
        ax.text(total, y, f" {total:.1f}", va="center", fontsize=7)
    ax.set_yticks(ys, methods, fontsize=8)
    ax.set_xlim(0, max(left + [1e-9]) * 1.15)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(parts), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)
    fig.tight_layout()
    _save(fig, path)


def image_grid(path: Path, rows: Sequence[Sequence], row_titles: Sequence[str], title: str,
               col_titles: Sequence[str] | None = None,
               labels: Sequence[Sequence[str]] | None = None) -> None:
    """A grid of small RGB images (numpy uint8 (H, W, 3)); rows may differ in length.

    ``col_titles``: one heading per column, above the first row; ``labels[i][j]``: a line
    under image j of row i.
    """
    n_cols = max(len(r) for r in rows)
    cell = min(1.25, PAGE_IN / n_cols)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(cell * n_cols, (cell + 0.3) * len(rows) + 0.5),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(row[j])
            if labels is not None and j < len(labels[i]):
                ax.set_xlabel(labels[i][j], fontsize=7)
            if i == 0 and col_titles is not None and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=7)
        axes[i][0].set_ylabel(row_titles[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=DPI)
    plt.close(fig)
    os.replace(tmp, path)


def html_page(title: str, sections: Sequence, intro: str = "") -> str:
    """The report as one self-contained HTML page (``templates/page.html``, Jinja2).

    ``sections``: objects with ``title``, ``id`` and ``blocks`` (markdown paragraphs,
    tables, figures: ``demo_report``); images are referenced by relative path so the folder
    can be copied as a whole.
    """
    import jinja2
    import markdown
    from markupsafe import Markup

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["md"] = lambda text: Markup(markdown.markdown(text, extensions=["tables"]))
    env.tests["numeric"] = _numeric
    env.tests["text"] = lambda block: isinstance(block, str)
    return env.get_template("page.html").render(title=title, intro=intro, sections=sections)


def _numeric(cell: object) -> bool:
    """Whether a table cell reads as a number (it is then right-aligned)."""
    text = str(cell).lstrip("+-−")
    return bool(text) and (text[0].isdigit() or text.startswith("nan"))
