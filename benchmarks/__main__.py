"""``python -m benchmarks run|throughput|report`` (and the internal ``point``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from . import batch as batch_mod
from . import commands, gpu_check, machine, ranking_study, throughput
from . import compare as compare_mod
from . import followup as followup_mod
from . import layers as layers_mod
from . import million as million_mod
from . import passages as passages_mod
from . import recall as recall_mod
from . import serve_load as serve_load_mod
from .engine_args import add_arguments, from_arguments, load_engine
from .paths import REPO_ROOT, Paths, save_json
from .serve_load_report import serve_load_section
from .sizes import SIZES


def _add_task_set(parser: argparse.ArgumentParser) -> None:
    """``--task-set`` of the commands that read the passages samples (:func:`_set_samples`)."""
    parser.add_argument(
        "--task-set", choices=["realdocs", "standard", "long", "heatmap"], default="realdocs"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO_ROOT,
        help="where benchmarks/out, results, figures and BENCHMARKS.md go",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="accuracy of every system, sweep, speed; BENCHMARKS.md")
    run.add_argument("--size", choices=sorted(SIZES), default="quick")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--full-max-tokens",
        type=int,
        default=None,
        help="longest document run in full mode (default: the size's own)",
    )
    run.add_argument(
        "--point-timeout", type=float, default=3600.0, help="seconds allowed per speed/memory point"
    )
    add_arguments(run)

    compare = sub.add_parser(
        "compare", help="named engine configs on the same samples: paired table and frontier"
    )
    compare.add_argument("--size", choices=sorted(SIZES), default="standard")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument(
        "--systems",
        nargs="+",
        default=["qllm", "qllm-reread", "rag", "full"],
        help=f"run one after another, in this order; from {', '.join(compare_mod.SYSTEMS)}",
    )
    add_arguments(compare)

    recall = sub.add_parser(
        "recall", help="rank of the block holding each planted fact, per scoring (calibration)"
    )
    recall.add_argument("--tasks", nargs="+", default=["needle", "multi_needle", "two_hop"])
    recall.add_argument("--lengths", type=int, nargs="+", default=[16384])
    recall.add_argument("--samples", type=int, default=3)
    recall.add_argument("--seed", type=int, default=1000, help="calibration seed (not 0)")
    add_arguments(recall)

    passages = sub.add_parser(
        "passages",
        help="retrieval apart from reading: answer's block rank and re-read variants, one read",
    )
    _add_task_set(passages)
    passages.add_argument(
        "--variants",
        nargs="+",
        default=list(passages_mod.VARIANTS),
        help="answered besides the oracle: re-read variants "
        f"({', '.join(passages_mod.VARIANTS)}), rag, or {passages_mod.SINGLE_PASS} "
        "(the single pass, decoded from the read)",
    )
    passages.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=list(passages_mod.HEATMAP_LENGTHS),
        help="document lengths of the heatmap set (a needle at 0, 25, 50, 75 and 100%% depth)",
    )
    passages.add_argument(
        "--answers-only",
        action="store_true",
        help="read nothing: rag, or variants of samples read already",
    )
    add_arguments(passages)

    layers = sub.add_parser(
        "layers",
        help="per-layer block log mass of each sample's question, for offline ranking studies",
    )
    _add_task_set(layers)
    layers.add_argument(
        "--study-only", action="store_true", help="read nothing: score the dumps already there"
    )
    add_arguments(layers)

    batch = sub.add_parser(
        "batch", help="many questions at once: batched decoding vs one at a time, same requests"
    )
    batch.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    batch.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    batch.add_argument("--max-new-tokens", type=int, default=64)
    add_arguments(batch)

    serve_load = sub.add_parser(
        "serve-load",
        help="C clients on a real `quickllama serve` (and Ray Serve): req/s, latency, "
        "exactly-once; against the in-process provider",
    )
    defaults = serve_load_mod.Load()
    serve_load.add_argument(
        "--concurrency", type=int, nargs="+", default=list(defaults.concurrency)
    )
    serve_load.add_argument(
        "--requests", type=int, default=defaults.requests, help="requests per concurrency level"
    )
    serve_load.add_argument(
        "--length", type=int, default=defaults.length, help="document length in tokens"
    )
    serve_load.add_argument(
        "--documents",
        type=int,
        default=defaults.documents,
        help="documents posted to /v1/documents that the follow-ups ask about",
    )
    serve_load.add_argument(
        "--new-share",
        type=float,
        default=defaults.new_share,
        help="share of requests that bring a new document of their own",
    )
    serve_load.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    serve_load.add_argument(
        "--ray", action="store_true", help="also run the levels on Ray Serve (--replicas)"
    )
    serve_load.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas")
    serve_load.add_argument(
        "--max-queue", type=int, default=None, help="the servers' --max-queue (their default)"
    )
    add_arguments(serve_load)

    followup = sub.add_parser(
        "followup", help="read once: first question vs follow-up from memory, decode speed"
    )
    followup.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    followup.add_argument("--max-new-tokens", type=int, default=32)
    add_arguments(followup)

    million = sub.add_parser(
        "million",
        help="one document of a million tokens read once, a needle and a two_hop question "
        "answered from its memory (give --set offload_dir=DIR where RAM is short)",
    )
    million.add_argument("--tokens", type=int, default=million_mod.TOKENS)
    million.add_argument("--tasks", nargs="+", default=list(million_mod.TASKS))
    million.add_argument("--seed", type=int, default=0)
    million.add_argument(
        "--systems",
        nargs="+",
        default=list(million_mod.SYSTEMS),
        choices=list(million_mod.SYSTEMS),
        help="answer with these (resumes: what the results hold is not answered again, and "
        "the document is read only for the re-read and single pass)",
    )
    add_arguments(million)

    speed = sub.add_parser("throughput", help="prefill tokens/s and peak memory, qllm vs full")
    speed.add_argument("--lengths", type=int, nargs="+", default=list(commands.THROUGHPUT_LENGTHS))
    speed.add_argument("--modes", nargs="+", default=list(commands.THROUGHPUT_MODES))
    speed.add_argument("--timeout", type=float, default=3600.0, help="seconds per point")
    speed.add_argument(
        "--memory-fraction",
        type=float,
        default=0.75,
        help="cap each CPU point's address space at this share of RAM (0: none)",
    )
    add_arguments(speed)

    sub.add_parser("report", help="re-render BENCHMARKS.md from benchmarks/results")
    sub.add_parser(
        "gpu-check",
        help="set-up, Triton tests, triton/torch throughput on a GPU (make gpu-check); "
        "options after it go to python -m benchmarks.gpu_check",
    )

    point = sub.add_parser("point", help=argparse.SUPPRESS)
    point.add_argument("--mode", required=True)
    point.add_argument("--length", type=int, required=True)
    point.add_argument("--memory-fraction", type=float, default=0.75)
    add_arguments(point)
    return parser


def _set_samples(engine: Any, args: argparse.Namespace) -> list[Any]:
    """The samples of ``--task-set`` (``passages`` and ``layers``)."""
    if args.task_set == "realdocs":
        from .realdocs import real_samples

        return list(real_samples(engine.tokenizer))
    if args.task_set == passages_mod.HEATMAP:
        lengths = getattr(args, "lengths", passages_mod.HEATMAP_LENGTHS)
        return list(passages_mod.heatmap_samples(engine.tokenizer, lengths))
    return list(compare_mod.compare_samples(engine.tokenizer, SIZES[args.task_set], seed=0))


def main(argv: list[str] | None = None) -> int:
    """Run one command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu-check"]:
        return gpu_check.main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths = Paths(args.root.resolve())
    if args.command == "report":
        commands.rerender(paths)
        print(f"wrote {paths.report}")
        return 0
    spec = from_arguments(args)
    if args.command == "point":
        return throughput.point_main(spec, args.mode, args.length, args.memory_fraction)
    if args.command == "throughput":
        commands.run_throughput(
            spec,
            paths,
            modes=tuple(args.modes),
            lengths=tuple(args.lengths),
            timeout=args.timeout,
            memory_fraction=args.memory_fraction,
            command=machine.command_line(),
        )
    elif args.command == "recall":
        ranks = recall_mod.run_recall(
            load_engine(spec), args.tasks, args.lengths, args.samples, args.seed
        )
        table = recall_mod.recall_table(ranks)
        save_json(
            paths.results / "recall.json",
            {
                "meta": {"command": machine.command_line(), "date": machine.now()},
                "ranks": [dataclasses.asdict(r) for r in ranks],
                "table": table,
            },
        )
        print(table)
        return 0
    elif args.command == "layers":
        engine = load_engine(spec)
        samples = [] if args.study_only else _set_samples(engine, args)
        folder = layers_mod.dump_layers(engine, samples, paths, args.task_set)
        result = ranking_study.study(folder)
        meta = {
            "command": machine.command_line(),
            "date": machine.now(),
            "model": engine.model_name,
            "machine": machine.describe(str(engine.model.device)),
        }
        save_json(paths.results / f"ranking-{args.task_set}.json", {"meta": meta, "study": result})
        print(ranking_study.study_table(result))
        return 0
    elif args.command == "passages":
        engine = load_engine(spec)
        samples = _set_samples(engine, args)
        passages_mod.run_passages(
            engine,
            samples,
            paths,
            args.task_set,
            args.variants,
            command=machine.command_line(),
            answers_only=args.answers_only,
        )
        commands.rerender(paths)
        return 0
    elif args.command == "batch":
        batch_mod.run_batch(
            load_engine(spec),
            paths,
            args.lengths,
            args.concurrency,
            max_new_tokens=args.max_new_tokens,
            command=machine.command_line(),
        )
        commands.rerender(paths)
        print(batch_mod.batch_section(paths))
        return 0
    elif args.command == "serve-load":
        load = serve_load_mod.Load(
            concurrency=tuple(args.concurrency),
            requests=args.requests,
            length=args.length,
            documents=args.documents,
            new_share=args.new_share,
            max_new_tokens=args.max_new_tokens,
        )
        serve_load_mod.run_serve_load(
            spec,
            paths,
            load,
            replicas=args.replicas if args.ray else 0,
            max_queue=args.max_queue,
            command=machine.command_line(),
        )
        commands.rerender(paths)
        print(serve_load_section(paths))
        return 0
    elif args.command == "followup":
        followup_mod.run_followup(
            load_engine(spec),
            paths,
            args.lengths,
            max_new_tokens=args.max_new_tokens,
            command=machine.command_line(),
        )
        commands.rerender(paths)
        print(followup_mod.followup_section(paths))
        return 0
    elif args.command == "million":
        million_mod.run_million(
            load_engine(spec),
            paths,
            tokens=args.tokens,
            tasks=tuple(args.tasks),
            seed=args.seed,
            systems=tuple(args.systems),
            command=machine.command_line(),
        )
        commands.rerender(paths)
        print(million_mod.million_section(paths))
        return 0
    elif args.command == "compare":
        compare_mod.run_compare(
            load_engine(spec),
            SIZES[args.size],
            paths,
            args.systems,
            seed=args.seed,
            command=machine.command_line(),
        )
    else:
        engine = load_engine(spec)
        size = SIZES[args.size]
        if args.full_max_tokens is not None:
            size = dataclasses.replace(size, full_max_tokens=args.full_max_tokens)
        commands.run_suite(
            engine,
            spec,
            size,
            paths,
            seed=args.seed,
            point_timeout=args.point_timeout,
            command=machine.command_line(),
        )
    print(f"wrote {paths.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
