"""The ``compare`` command's section of BENCHMARKS.md: accuracy, paired table, frontier."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from . import figures, tables
from .pairing import frontier_points, outcomes, paired_rows, speed_rows
from .paths import Paths

BASELINE = "qllm"
"""The paper's method: every other system is compared with it sample by sample."""
DEFAULT = "qllm-reread"
"""The mean-ranked re-read, the embedded model's default until the passages benchmark
chose the peak ranking (``qllm-reread-peak``): compared with every system as well."""


def compare_section(data: dict[str, Any], paths: Paths) -> str:
    """Markdown for one saved ``compare`` summary (drawing its frontier figure)."""
    meta, records = data["meta"], data["records"]
    size = meta["size"]
    systems = tables.system_order(records)
    variants = "\n".join(
        f"- `{name}`: {_changes(changes)}" for name, changes in meta["variants"].items()
    )
    out = [
        f"## Paired comparison (size `{size['name']}`)\n",
        _meta(meta),
        f"Tasks {', '.join(f'`{t}`' for t in size['tasks'])} at "
        f"{', '.join(tables.k_tokens(n) for n in size['task_lengths'])} document tokens, "
        f"{size['task_samples']} samples each (seed {meta['seed']}); `full` is not run over "
        f'{size["full_max_tokens"]:,} document tokens. `two_hop`: "the X office is run by P" '
        'and "the badge number of P is N" planted apart; the question names only X. '
        "Systems, as config fields set on the engine's own config:\n",
        variants + "\n- `rag`: chunk-and-embed RAG answered by the same model in `full` mode\n",
        "### Accuracy\n",
    ]
    for task in dict.fromkeys(r["task"] for r in records):
        out += [f"#### {task}\n", tables.accuracy_table(records, task) + "\n"]
    correct = outcomes(records)
    for baseline, what in (
        (BASELINE, "the paper's method"),
        (DEFAULT, "the mean-ranked re-read, the default until issue 28"),
    ):
        paired = paired_rows(correct, baseline, systems)
        if paired:
            out += [
                f"### Paired with `{baseline}` ({what}), sample by sample\n",
                f"win: this system right and `{baseline}` wrong; loss: the reverse.\n",
                tabulate(
                    paired,
                    ["system", "wins", "losses", "both right", "both wrong", "samples"],
                    tablefmt="github",
                )
                + "\n",
            ]
    out += [
        "### Was the fact retrieved?\n",
        "For the single-pass modes: a memory block retrieved while answering overlapped a "
        "planted fact. For the re-read variants: a planted fact lies inside the re-read "
        "passages. For `rag`: a retrieved chunk contains one.\n",
        tables.evidence_table(records) + "\n",
        "### Speed\n",
        "Per system, over the samples it ran. Systems added by a later invocation of the "
        "command ran under another load: compare speeds within one invocation.\n",
        tabulate(
            speed_rows(records, systems),
            ["system", "length", "samples", "prefill tok/s", "decode tok/s"],
            tablefmt="github",
        )
        + "\n",
    ]
    frontier = frontier_points(records)
    figure = figures.frontier(frontier, paths.figures / f"frontier-{size['name']}.png")
    out += [
        "### Accuracy against speed\n",
        f"On the {frontier.samples} samples at "
        f"{' and '.join(tables.k_tokens(n) for n in frontier.lengths)} that every system ran; "
        f"tokens/s at {tables.k_tokens(frontier.longest)}.\n",
        tabulate(
            [
                [p.system, f"{p.accuracy:.0%}", round(p.prefill), round(p.decode, 1)]
                for p in frontier.points
            ],
            ["system", "accuracy", "prefill tok/s", "decode tok/s"],
            tablefmt="github",
        )
        + "\n",
        f"![accuracy against speed]({paths.link(figure)})\n",
    ]
    return "\n".join(out)


def _changes(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "the engine's config"


def _meta(meta: dict[str, Any]) -> str:
    machine = meta["machine"]
    config = meta["base_config"]
    base = ", ".join(
        f"{k}={config[k]}"
        for k in ("n_init", "n_local", "block_size", "topk", "exec_block_size", "question_weight")
    )
    return (
        f"- Command: `{meta['command']}` (last written {meta['date']}; its last invocation "
        f"ran {meta['wall_seconds'] / 60:.0f} min, resuming the records of earlier ones)\n"
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM; "
        f"device `{machine['device']}`; torch {machine['torch']}, transformers "
        f"{machine['transformers']}\n"
        f"- Model: {meta['model']}; engine config: `{base}`\n" + _load_line(meta)
    )


def _load_line(meta: dict[str, Any]) -> str:
    """The machine's load while the run went on: speeds compare within a run, not across."""
    load = meta.get("load_average")
    if not load:
        return ""
    return (
        f"- 1-minute load average during its last invocation: {load['min']}-{load['max']} on "
        f"{meta['machine']['cores']} cores (speeds compare within this run, not with others)\n"
    )
