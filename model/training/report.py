"""The training report: Markdown + JSON, with training curves and confusion matrices as PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from model.bundle import Bundle  # noqa: E402

BRANCHES = ("fused", "text", "audio")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(metrics: dict) -> list[str]:
    """One row per evaluation set and branch: accuracy, weighted F1, n, and regression metrics if any."""
    # Only evaluation sets: other entries (such as the demo's checks) are not tables of branches.
    metrics = {k: v for k, v in metrics.items() if isinstance(v, dict) and isinstance(v.get("fused"), dict)}
    has_reg = any("regression" in b for m in metrics.values() for b in m.values())
    head = "| set | branch | n | accuracy | weighted F1 |" + (" Has0 Acc-2 | Non0 Acc-2 | Acc-7 | MAE | Corr |" if has_reg else "")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, branches in metrics.items():
        for branch in BRANCHES:
            if branch not in branches:
                continue
            m = branches[branch]
            row = f"| {name} | {branch} | {m['n']} | {_fmt(m['accuracy'])} | {_fmt(m['weighted_f1'])} |"
            if has_reg:
                r = m.get("regression", {})
                row += "".join(f" {_fmt(r.get(k))} |" for k in ("has0_acc2", "non0_acc2", "acc7", "mae", "corr"))
            rows.append(row)
    return rows


def plot_curves(history: dict, path: Path) -> Path:
    fusion = history["fusion"]
    finetune = history.get("finetune", {})
    n_plots = 2 + len(finetune)
    fig, axes = plt.subplots(1, n_plots, figsize=(4.5 * n_plots, 3.6))
    ax = axes[0]
    ax.plot(fusion["epoch"], fusion["train_loss"], marker="o", label="train loss (with aux)")
    ax.plot(fusion["epoch"], fusion["valid_loss"], marker="o", label="valid loss (fused)")
    if fusion.get("best_epoch"):
        ax.axvline(fusion["best_epoch"], color="grey", linestyle="--", label="best epoch")
    ax.set_title("fusion head: loss")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(fusion["epoch"], fusion["valid_accuracy"], marker="o", label="valid accuracy")
    ax.plot(fusion["epoch"], fusion["valid_weighted_f1"], marker="o", label="valid weighted F1")
    ax.set_title("fusion head: valid metrics")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    for ax, (kind, h) in zip(axes[2:], finetune.items()):
        ax.plot(h["epoch"], h["train_loss"], marker="o", label="train loss")
        ax.plot(h["epoch"], h["valid_accuracy"], marker="o", label="valid accuracy")
        ax.set_title(f"{kind} encoder fine-tuning")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(matrix: list[list[int]], labels: list[str], title: str, path: Path) -> Path:
    m = np.asarray(matrix)
    size = max(3.2, 0.9 * len(labels) + 1.8)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    peak = m.max() if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(folder: Path, bundle: Bundle, history: dict, extra_sections: list[str] | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    curves = plot_curves(history, folder / "training_curves.png")
    confusion_files = {}
    for name, branches in bundle.metrics.items():
        if isinstance(branches, dict) and isinstance(branches.get("fused"), dict):
            confusion_files[name] = plot_confusion(
                branches["fused"]["confusion_matrix"], bundle.labels, f"{name}: fused", folder / f"confusion_{name}.png")
    data = bundle.data
    lines = [
        f"# Training report: {bundle.name} {bundle.version}",
        "",
        f"Labels: {', '.join(bundle.labels)}. Regression trained: {bundle.regression_trained}.",
        f"Text encoder: `{bundle.text_encoder}`. Audio encoder: `{bundle.audio_encoder}`.",
        "",
    ]
    if bundle.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in bundle.notes] + [""]
    lines += ["## Metrics", "",
              "Fused uses both modalities where present; text and audio are the unimodal heads "
              "on the items that have that modality.", ""]
    lines += metrics_table(bundle.metrics) + [""]
    if extra_sections:
        lines += extra_sections + [""]
    lines += ["## Data", "", "| set | items | with audio | with score |", "|---|---|---|---|"]
    for name, n in data.get("counts", {}).items():
        lines.append(f"| {name} | {n} | {data.get('with_audio', {}).get(name, '–')} | {data.get('with_score', {}).get(name, '–')} |")
    if any(data.get("transcribed", {}).values()):
        lines += ["", "Items with audio but no text that read their audio's transcript (the audio encoder's CTC "
                  f"head) as their text: {', '.join(f'{k} {v}' for k, v in data['transcribed'].items())}."]
    validation = data.get("validation", {})
    lines += ["", f"Manifest: `{data.get('manifest')}` (sha256 {str(data.get('manifest_sha256', ''))[:16]}…).",
              f"Validation errors by kind: {validation.get('problem_counts') or 'none'}; "
              f"items dropped: {validation.get('dropped', 0)}.",
              f"Labels derived from score: {data.get('labels_derived_from_score', 0)}."]
    for warning in validation.get("warnings", []):
        lines.append(f"Warning: {warning}.")
    for name, info in data.get("extra_eval", {}).items():
        v = info["validation"]
        lines.append(f"Extra evaluation set `{name}`: `{info['manifest']}` split {info['split']}; "
                     f"errors {v.get('problem_counts') or 'none'}; dropped {v.get('dropped', 0)}.")
    fusion = history["fusion"]
    lines += ["", "## Training", "",
              f"Fusion head: {len(fusion['epoch'])} epoch(s), best epoch {fusion.get('best_epoch')} by valid loss; "
              f"seed {data.get('training', {}).get('seed')}. Timings (s): {data.get('timings_s')}.", "",
              f"![training curves]({curves.name})", ""]
    lines += ["## Confusion matrices (fused)", ""]
    lines += [f"![{name}]({path.name})" for name, path in confusion_files.items()]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "report.json").write_text(json.dumps({
        "bundle": bundle.metadata(), "history": history,
        "plots": {"curves": curves.name, "confusion": {k: v.name for k, v in confusion_files.items()}},
    }, indent=2, default=str) + "\n", encoding="utf-8")
    return folder
