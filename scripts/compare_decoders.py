"""Compare the post-hoc decoders and node rules with argmax on trained runs, over paired seeds.

A decoder reads a trained model's scores differently; the model is the same. Every completed
job of a sweep written by ``scripts/compare_methods.py`` (or trained here, flat CE by
default) is evaluated once by ``python -m hierot.evaluate`` with ``decode=[argmax,crm,hie]
metrics=[nodes]`` into ``<job>/decoders``, and each method gains the rows ``<method> + crm``
(conditional risk minimisation), ``<method> + hie`` (hierarchical ensembles' post-hoc
adjustment, the parents' probabilities from the same model), and one per node rule of
``metrics=[nodes]`` (``top_down``, ``majority``, ``plurality``: a prediction that may stop
at an inner node). ``leaf`` is argmax itself, so the method's own row shows its node scores.
The script prints two tables and writes them to ``<out>/decoders.md`` and as results CSVs
``<out>/decoders_means.csv`` and ``<out>/decoders_paired.csv``: every row's mean +- std over
its seeds, and every decoder against its method's argmax on the same seeds (mean difference,
95 % t interval, paired t-test p, ``*`` where the interval excludes 0). A decoder leaves the
features, hence TestCPCC, unchanged: the tables give it once, in a note.

    python scripts/compare_decoders.py -- data.modes=4 data.split=source   # train ce, seeds 0-4
    python scripts/compare_decoders.py --runs multirun/compare_methods/<date>  # reuse its runs
    python scripts/compare_decoders.py --runs DIR --evaluate crm_cost=path    # evaluate options

``--runs`` evaluates only the jobs without ``<job>/decoders/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from hierot.metrics.node_rules import NODE_RULES
from hierot.results import command_line, environment, rows_from_markdown, write_results
from hierot.writes import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_methods as methods  # the sibling script: its sweeps, summaries and t test

DECODERS = ("crm", "hie")
# leaf is the most probable class, argmax's prediction: the method's own row
RULES = tuple(rule for rule in NODE_RULES if rule != "leaf")
EVALUATE = ["decode=[argmax,crm,hie]", "metrics=[nodes]", "figures=false"]
# column: the key of a decoding's metrics.json (under test/, test/crm/ or test/hie/)
CLASS_COLUMNS = {
    "acc_fine": "acc_top1",
    "mistake_severity": "severity_path",
    "ahd@5": "hdist_path@5",
    "ahd@20": "hdist_path@20",
    "hops": "hops",
}
# node-rule columns, test/nodes/<rule>/<column>
NODE_COLUMNS = ("correct", "exact", "hf1", "wup", "depth")
COLUMNS = [*CLASS_COLUMNS, *NODE_COLUMNS]
MEANS_NOTE = (
    "Mean ± std over seeds. A method's argmax row has the leaf rule's node columns (the same "
    "prediction); a node rule predicts a node, not a ranking of the classes, so acc_fine to "
    "hops do not apply to it; hierot.evaluate reports no node columns for crm and hie."
)
PAIRED_NOTE = (
    "Paired differences against each method's argmax (decoder minus argmax, same seeds; 95 % "
    "t interval, paired t-test p; * where the interval excludes 0)."
)


def evaluate_command(job: Path, extra: Sequence[str] = ()) -> list[str]:
    """``hierot.evaluate`` of a job's best checkpoint (``last.ckpt`` without one) under every
    decoding and node rule, into ``<job>/decoders``."""
    record = json.loads((job / "metrics.json").read_text())
    ckpt = record.get("best_checkpoint") or str(job / "checkpoints" / "last.ckpt")
    return [
        sys.executable, "-m", "hierot.evaluate", f"ckpt={ckpt}", *EVALUATE,
        f"hydra.run.dir={job / 'decoders'}", *extra,
    ]  # fmt: skip


def evaluate_jobs(summary: Path, rows: Sequence[Mapping[str, str]], extra: Sequence[str]) -> None:
    """Evaluate every completed job of ``summary`` that has no ``decoders/metrics.json``."""
    for row in rows:
        job = summary.parent / row["job"]
        if row["status"] == "completed" and not (job / "decoders" / "metrics.json").is_file():
            command = evaluate_command(job, extra)
            print(" ".join(command[1:]), flush=True)
            subprocess.run(command, check=False)


def decoder_rows(base: str, seed: str, metrics: Mapping[str, object]) -> list[dict[str, str]]:
    """One row per way of reading a job's ``metrics.json``: ``base`` (argmax, with the leaf
    rule's node scores), ``base + crm``, ``base + hie`` and ``base + <rule>``; a row holds
    the columns the evaluation reported, and a way it did not report has no row."""

    def row(label: str, keys: Mapping[str, str]) -> dict[str, str]:
        found = {c: str(metrics[k]) for c, k in keys.items() if metrics.get(k) is not None}
        return {"method": label, "base": base, "seed": seed, **found}

    nodes = {c: f"test/nodes/leaf/{c}" for c in NODE_COLUMNS}
    rows = [row(base, {**{c: f"test/{k}" for c, k in CLASS_COLUMNS.items()}, **nodes})]
    rows += [
        row(f"{base} + {way}", {c: f"test/{way}/{k}" for c, k in CLASS_COLUMNS.items()})
        for way in DECODERS
    ]
    rows += [
        row(f"{base} + {rule}", {c: f"test/nodes/{rule}/{c}" for c in NODE_COLUMNS})
        for rule in RULES
    ]
    return [r for r in rows if set(r) & set(COLUMNS)]


def read_runs(files: Sequence[Path]) -> tuple[list[dict[str, str]], dict[str, list[float]]]:
    """Every evaluated job's ``decoder_rows`` (a job labelled by its method and the other
    settings its summaries vary, ``compare_methods.group_keys``) and each label's TestCPCC
    over its jobs."""
    jobs = [(f, row) for f in files for row in methods.read_rows(f)]
    keys = methods.group_keys([row for _, row in jobs])
    rows: list[dict[str, str]] = []
    cpcc: dict[str, list[float]] = {}
    for summary, job in jobs:
        path = summary.parent / job["job"] / "decoders" / "metrics.json"
        if job["status"] != "completed" or not path.is_file():
            continue
        base = job["method"] + "".join(f" {k}={job.get(k, '')}" for k in keys[1:])
        metrics = json.loads(path.read_text())
        rows += decoder_rows(base, job["seed"], metrics)
        if metrics.get("test/cpcc") is not None:
            cpcc.setdefault(base, []).append(float(metrics["test/cpcc"]))
    return rows, cpcc


def _labels(rows: Sequence[Mapping[str, str]]) -> list[str]:
    """The rows' labels: methods in ``compare_methods.METHODS`` order, each followed by its
    decoders and rules."""
    bases = sorted(
        dict.fromkeys(r["base"] for r in rows),
        key=lambda b: (methods.METHODS.index(b.split()[0]) if b.split()[0] in methods.METHODS
                       else len(methods.METHODS), b),
    )  # fmt: skip
    return [f"{b}{way}" for b in bases for way in ["", *(f" + {w}" for w in (*DECODERS, *RULES))]]


def _values(rows: Sequence[Mapping[str, str]], label: str) -> dict[str, dict[str, float]]:
    """``{seed: {column: value}}`` of the rows labelled ``label``."""
    return {
        r["seed"]: {c: float(r[c]) for c in COLUMNS if r.get(c)}
        for r in rows
        if r["method"] == label
    }


def means_table(rows: Sequence[Mapping[str, str]]) -> str:
    """Markdown table: one line per method and decoder, mean ± sample std over its seeds
    (``—`` where a column does not apply)."""
    lines = ["| method | runs | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for label in _labels(rows):
        seeds = _values(rows, label)
        if not seeds:
            continue
        cells = [methods.mean_std([v[c] for v in seeds.values() if c in v]) for c in COLUMNS]
        shown = label if " + " in label else f"{label} (argmax)"
        lines.append(f"| {shown} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(rows: Sequence[Mapping[str, str]]) -> str:
    """Markdown table: every decoder and rule against its method's argmax on the seeds both
    have, ``mean difference [95 % CI] p``, ``*`` where the interval excludes 0 (``—``
    where a column does not apply or fewer than two seeds pair)."""
    lines = [
        "| method - argmax | seeds | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    bases = {r["method"]: r["base"] for r in rows}
    for label in _labels(rows):
        if label not in bases or bases[label] == label:
            continue
        mine, base = _values(rows, label), _values(rows, bases[label])
        seeds = sorted(set(mine) & set(base), key=methods._order)
        cells = []
        for c in COLUMNS:
            diffs = [mine[s][c] - base[s][c] for s in seeds if c in mine[s] and c in base[s]]
            cells.append(methods.paired_cell(diffs))
        lines.append(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpcc_note(cpcc: Mapping[str, Sequence[float]]) -> str:
    """The TestCPCC each method keeps under every decoder, mean ± std over its jobs."""
    values = "; ".join(f"{base} {methods.mean_std(v)}" for base, v in cpcc.items())
    return (
        "TestCPCC is the same under every decoder and rule (they read the scores, not the "
        f"features): {values}."
        if values
        else ""
    )


def fresh_out(out: Path | None, now: datetime) -> Path:
    """``--out`` if it is empty or new, else a timestamped directory under
    ``multirun/compare_decoders``."""
    if out is None:
        return Path("multirun") / "compare_decoders" / now.strftime("%Y-%m-%d_%H-%M-%S")
    return methods.fresh_out(out, now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods", nargs="+", default=["ce"],
        help="the methods to train and decode, as compare_methods.py names them (default: ce)",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--out", type=Path, default=None,
        help="a new directory (default: multirun/compare_decoders/<date>_<time>)",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=Path, default=None,
        help="decode these trained runs instead of training: a summary.csv, or a directory "
        "written by compare_methods.py or this script",
    )  # fmt: skip
    parser.add_argument(
        "--evaluate", nargs="+", default=[],
        help="overrides passed to every hierot.evaluate (crm_cost=path, ahd_k=[1,5,20])",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="passed to every training job (after --)")
    args = parser.parse_args()

    if args.runs is None:
        out = fresh_out(args.out, datetime.now())
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "environment.json", environment())
        for label in dict.fromkeys(methods.method_label(*methods.parse_method(m))
                                   for m in args.methods):  # fmt: skip
            methods.run_method(label, args.seeds, out / label, args.overrides)
        files = methods.summaries(out)
    else:
        out = args.runs if args.runs.is_dir() else args.runs.parent
        files = methods.summaries(args.runs) if args.runs.is_dir() else [args.runs]
    files = [f for f in files if f.is_file()]
    if not files:
        sys.exit(f"compare_decoders: error: no summary.csv under {out}")
    for summary in files:
        evaluate_jobs(summary, methods.read_rows(summary), args.evaluate)
    rows, cpcc = read_runs(files)
    if not rows:
        sys.exit(f"compare_decoders: error: no job under {out} has decoders/metrics.json")
    record = out / "environment.json"
    env = json.loads(record.read_text()) if record.is_file() else environment()
    measured = f"{env['machine']}, torch {env['torch']}, commit {env['commit']}, {env['date']}"
    means, paired, note = means_table(rows), paired_table(rows), cpcc_note(cpcc)
    text = f"Measured on {measured}.\n\n{MEANS_NOTE} {note}\n\n{means}\n\n{PAIRED_NOTE}\n\n{paired}"
    (out / "decoders.md").write_text(text + "\n")
    write_results(out / "decoders_means.csv", rows_from_markdown(means), command_line(),
                  notes=[MEANS_NOTE, note] if note else [MEANS_NOTE], env=env)  # fmt: skip
    write_results(out / "decoders_paired.csv", rows_from_markdown(paired), command_line(),
                  notes=[PAIRED_NOTE], env=env)  # fmt: skip
    print(text)


if __name__ == "__main__":
    main()
