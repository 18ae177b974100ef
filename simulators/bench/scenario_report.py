"""`--report DIR`: a Markdown page and PNG plots for one scenario run.

matplotlib is optional (imported lazily): without it the Markdown is still
written, without plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulators.bench.scenario_figures import shed_events
from simulators.bench.scenario_runner import RunResult
from simulators.bench.scenario_spec import Scenario


def _plot(path: Path, run: RunResult, naive: RunResult | None, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    hours = [t / 3600.0 for t in run.t]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(hours, [b / 1000 for b in run.budget], label="grant (truth)", color="green", lw=1.2)
    ax.plot(hours, [d / 1000 for d in run.draw], label="hashgov true draw", color="tab:blue", lw=1)
    if run.planned:
        ax.step([p[0] / 3600 for p in run.planned], [p[1] / 1000 for p in run.planned],
                where="post", label="hashgov planned", color="tab:orange", lw=0.8, alpha=0.8)
    if naive is not None:
        ax.plot([t / 3600 for t in naive.t], [d / 1000 for d in naive.draw],
                label="naive true draw", color="grey", lw=0.8, alpha=0.7)
    for event in shed_events(run):
        ax.axvline(event.t_sim / 3600, color="red", lw=0.4, alpha=0.4)
    ax.set_ylabel("kW")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    over = [max(0.0, d - b) / 1000 for d, b in zip(run.draw, run.budget, strict=True)]
    ax2.fill_between(hours, over, color="red", step="post")
    ax2.set_ylabel("over grant, kW")
    ax2.set_xlabel("simulated hours")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_sheds(path: Path, run: RunResult) -> bool:
    events = shed_events(run)
    if not events:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.scatter([e.floor_s for e in events], [e.shed_s for e in events], s=10)
    top = max(max(e.shed_s for e in events), 1.0)
    ax.plot([0, top], [0, top], color="grey", lw=0.8, label="shed = physical floor")
    ax.set_xlabel("physical floor, simulated s")
    ax.set_ylabel("time to draw ≤ grant, simulated s")
    ax.set_title("shed events")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(
    out_dir: Path, sc: Scenario, figs: dict[str, Any], run: RunResult, naive: RunResult | None
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    power = _plot(out_dir / f"{sc.name}-power.png", run, naive,
                  f"{sc.name}: {run.miners} miners, K={sc.time_scale:g}")
    sheds = _plot_sheds(out_dir / f"{sc.name}-sheds.png", run)
    lines = [
        f"# Scenario `{sc.name}`",
        "",
        sc.description,
        "",
        f"{run.miners} miners, {sc.duration_s:g} s simulated at K = {sc.time_scale:g} "
        f"({sc.real_duration_s:g} s real per run).",
        "",
    ]
    verdicts = figs.get("goals")
    if isinstance(verdicts, dict):  # the answer first: which goals this run met
        lines += [f"## Goals: {verdicts.get('met')} met (times in {verdicts.get('time_basis')})",
                  "", "| goal | want | got | met |", "|---|---|---|---|"]
        for name, verdict in verdicts.items():
            if isinstance(verdict, dict):
                mark = {True: "yes", False: "**no**", None: "not measured"}[verdict["met"]]
                lines.append(f"| {name} | {verdict['want']} | {verdict['got']} | {mark} |")
        lines.append("")
    lines += ["## Figures", "", "| figure | value |", "|---|---|"]
    for key, value in figs.items():
        if key == "goals":
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                lines.append(f"| {key}.{sub} | {v} |")
        else:
            lines.append(f"| {key} | {value} |")
    lines.append("")
    if power:
        lines += [f"![budget, true and planned draw]({sc.name}-power.png)", ""]
    if sheds:
        lines += [f"![shed events]({sc.name}-sheds.png)", ""]
    if not power:
        lines += ["(matplotlib is not installed: no plots)", ""]
    path = out_dir / f"{sc.name}.md"
    path.write_text("\n".join(lines))
    return path
