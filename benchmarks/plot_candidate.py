"""Plot a train_candidate.py run: training loss per logging interval, held-out loss and class agreement at
each measured checkpoint, against optimizer steps.

    python3 benchmarks/plot_candidate.py benchmarks/results/default_model/train_candidate.json \
        benchmarks/results/default_model/candidate_losses.json benchmarks/results/default_model/candidate_curve.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(record_path: str, losses_path: str, out: str) -> None:
    record = json.loads(Path(record_path).read_text())
    losses = json.loads(Path(losses_path).read_text())["losses"]  # the run folder's losses.json: every log
    segments = record["segments"]
    steps = [s["step"] for s in segments]
    cfgs = sorted({k[3:] for s in segments for k in s if k.startswith("cfg")}, key=float)
    fig, (ax_loss, ax_agree) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_loss.plot(
        [e["step"] for e in losses], [e["loss"] for e in losses], lw=1, label="training loss (50-step means)"
    )
    ax_loss.plot(
        steps, [s["heldout"]["loss"] for s in segments], "o-", label="held-out loss, EMA (2,000 test images)"
    )
    ax_loss.set_ylim(0.025, 0.06)
    ax_loss.set_xlabel("optimizer step (batch 512)")
    ax_loss.set_ylabel("DiT loss (ε-MSE + vb)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for cfg in cfgs:
        ax_agree.plot(steps, [s[f"cfg{cfg}"]["class_agreement"] for s in segments], "o-", label=f"CFG {cfg}")
    ax_agree.axhline(0.85, color="gray", ls="--", lw=1, label="issue 18 target (CFG 1.5)")
    ax_agree.set_xlabel("optimizer step (batch 512)")
    ax_agree.set_ylabel("class agreement (project classifier)")
    ax_agree.set_ylim(0, 1)
    ax_agree.legend()
    ax_agree.grid(alpha=0.3)
    fig.suptitle("candidate base 7×192×4, H200; 1,000 samples, 250 DDPM steps, budget 1.0, bf16")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:4])
