"""Inject real faults into real training runs and check that each run survives them.

Every fault is the real thing: a signal sent to a running ``python -m hierot.train``
process, a small tmpfs mounted under the run, processes started at the same instant. The
script writes ``reliability.csv`` and ``reliability.md`` (the table of faults, resumed runs,
work lost and final-metric differences, with the machine, torch version, commit and date).

    python scripts/fault_injection.py                         # every fault, into docs/results
    python scripts/fault_injection.py --kills 20 --out /tmp/faults
    python scripts/fault_injection.py --faults sigkill sigterm -- data.train_per_class=100

Arguments after ``--`` go to every run (on a cluster: your data and backbone). The full-disk
fault needs to mount a tmpfs (root, or a user namespace); it is skipped with a reason
otherwise. ``tests/test_faults.py`` runs each fault once, smaller.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hierot.results import command_line, render_page, write_results
from hierot.resume import latest_checkpoint

# A run of 135 steps (3 epochs of 45) in ~15 s on two CPU cores, deterministic on CPU, its
# curves written to metrics.csv every step (so the step a fault hit can be read back).
RUN = [
    "debug=tiny",
    "data.train_per_class=60",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "+logger.flush_logs_every_n_steps=1",
]
COMPARED = ("test/", "val/")  # the final metrics an interrupted run must reproduce


def start(
    run_dir: Path, *overrides: str, env: dict[str, str] | None = None, group: bool = False
) -> subprocess.Popen:
    """``python -m hierot.train`` in ``run_dir``, its output in ``run_dir``.out/.err;
    ``group``: in a process group of its own, as a shell starts a command (``send``)."""
    run_dir = Path(run_dir).absolute()  # the process runs in its parent folder
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{run_dir}.out", "a") as out, open(f"{run_dir}.err", "a") as err:
        return subprocess.Popen(  # the process keeps its own copies of the two files
            [sys.executable, "-m", "hierot.train", *overrides, f"hydra.run.dir={run_dir}"],
            stdout=out,
            stderr=err,
            env={**os.environ, **(env or {})},
            cwd=run_dir.parent,
            start_new_session=group,
        )


def send(proc: subprocess.Popen, sig: signal.Signals) -> None:
    """``sig`` to ``proc``; SIGINT to its whole process group, as Ctrl-C at a terminal sends
    it (DataLoader workers included): start such a process with ``group=True``."""
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)


def wait(proc: subprocess.Popen, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def brief(line: str, run_dir: Path, width: int = 140) -> str:
    """An error line for the table: without the prefix, the resume command, and with the
    run directory written ``<run>``."""
    text = line.removeprefix("hierot: error: ").split("; resume with:")[0]
    text = text.replace(str(run_dir), "<run>")
    return text if len(text) <= width else text[: width - 3] + "..."


def last_error(run_dir: Path) -> str:
    lines = [line for line in Path(f"{run_dir}.err").read_text().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def wait_until(condition: Callable[[], bool], timeout: float = 120, poll: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("condition not met in time")
        time.sleep(poll)


def training_started(run_dir: Path, since: int = 0) -> Callable[[], bool]:
    """True once the run (its ``since``-th start or later) has logged its data line."""
    path = Path(f"{run_dir}.out")

    def started() -> bool:
        lines = path.read_text().splitlines() if path.exists() else []
        return sum(line.startswith("data: ") for line in lines) > since

    return started


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def differences(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """|reference - other| of each compared final metric (inf when one is missing)."""
    diffs = {}
    for key, value in reference.items():
        if key.startswith(COMPARED) and isinstance(value, (int, float)):
            theirs = other.get(key)
            diffs[key] = abs(value - theirs) if isinstance(theirs, (int, float)) else float("inf")
    return diffs


def logged_step(run_dir: Path) -> int:
    """The last training step whose metrics the run wrote (0 before any)."""
    path = Path(run_dir) / "logs" / "metrics.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    return max(steps) + 1 if steps else 0  # the CSV's step is the global step before it


def checkpoint_step(path: Path | None) -> int:
    if path is None:
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def reference_run(out: Path, extra: Sequence[str], name: str = "reference") -> dict[str, Any]:
    run_dir = out / name
    if not (run_dir / "metrics.json").exists():
        assert wait(start(run_dir, *RUN, *extra)) == 0, last_error(run_dir)
    return metrics(run_dir)


# The staged objectives over 5 epochs of 15 steps (their stages need more than 3), with the
# steps after which a kill lands on either side of their stage boundary (checkpoints every 5
# steps: one before the boundary, one inside the new stage's first epoch): curriculum's fine
# stage starts at step 15 (int(0.2 x 5) = 1 coarse epoch), supcon's probe at step 60.
STAGED = {
    "curriculum": (
        ["objective=curriculum", "trainer.max_epochs=5", "data.train_per_class=20"],
        (11, 21),
    ),
    "supcon": (["objective=supcon", "trainer.max_epochs=5", "data.train_per_class=20"], (56, 66)),
}


def sigkill(
    out: Path,
    extra: Sequence[str],
    kills: int,
    every_n_steps: int,
    seed: int = 0,
    at_steps: Sequence[int] | None = None,
    name: str = "sigkill",
):
    """SIGKILL at random instants, ``kills`` times (or once the run has logged each of
    ``at_steps``), resuming with ``ckpt_path=auto`` each time, then to the end; compared
    with the uninterrupted run of the same ``extra`` arguments. Returns the row and the
    per-kill records."""
    rng = random.Random(seed)
    reference = reference_run(out, extra, "reference" if name == "sigkill" else f"{name}_ref")
    run_dir = out / name
    args = [*RUN, *extra, f"checkpoint.every_n_steps={every_n_steps}", "ckpt_path=auto"]
    records = []
    targets = list(at_steps) if at_steps is not None else [None] * kills
    for i, target in enumerate(targets):
        proc = start(run_dir, *args)
        wait_until(training_started(run_dir, i))
        if target is None:
            time.sleep(rng.uniform(0.0, 2.5))
        else:
            wait_until(lambda t=target: logged_step(run_dir) >= t, timeout=300, poll=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = checkpoint_step(latest_checkpoint(run_dir))
        # A step's checkpoint is written (callbacks' on_train_batch_end) before its CSV row
        # (the logger, after the callbacks): a kill between the two leaves the checkpoint one
        # step ahead of the log, and the checkpoint proves the step was reached.
        reached = max(logged_step(run_dir), saved)
        records.append({"kill": i + 1, "step": reached, "checkpoint_step": saved})
    rc = wait(start(run_dir, *args))
    assert rc == 0, last_error(run_dir)
    lost = [max(0, r["step"] - r["checkpoint_step"]) for r in records]
    diffs = differences(reference, metrics(run_dir))
    when = "a random instant" if at_steps is None else f"steps {', '.join(map(str, at_steps))}"
    what = "" if name == "sigkill" else f" ({' '.join(extra)})"
    return {
        "fault": f"SIGKILL at {when}{what}, resumed with ckpt_path=auto",
        "injected": len(records),
        "resumed": len(records),
        "steps_lost_max": max(lost),
        "steps_lost_bound": every_n_steps,
        "final_metric_diff_max": max(diffs.values()),
        "detail": f"checkpoint.every_n_steps={every_n_steps}; resumed from steps "
        f"{[r['checkpoint_step'] for r in records]}; lost per kill {lost}",
    }, records


def sigkill_staged(out: Path, extra: Sequence[str], objective: str, every_n_steps: int = 5):
    """``sigkill`` of a staged objective (``STAGED``), a kill on each side of its stage
    boundary."""
    overrides, steps = STAGED[objective]
    return sigkill(out, [*overrides, *extra], len(steps), every_n_steps, at_steps=steps,
                   name=f"sigkill_{objective}")  # fmt: skip


def sigterm(out: Path, extra: Sequence[str], name: str = "SIGTERM", seed: int = 0) -> dict:
    """One graceful stop by ``name`` at a random instant, then a resume to the end."""
    rng = random.Random(seed)
    reference = reference_run(out, extra)
    run_dir = out / name.lower()
    proc = start(run_dir, *RUN, *extra, group=True)
    wait_until(training_started(run_dir))
    time.sleep(rng.uniform(0.5, 3.0))
    sent = time.monotonic()
    send(proc, getattr(signal, name))
    rc = wait(proc)
    stop_seconds = time.monotonic() - sent
    line = last_error(run_dir)
    stopped = metrics(run_dir)
    saved = checkpoint_step(latest_checkpoint(run_dir))
    assert rc == 128 + getattr(signal, name), (rc, line)
    assert stopped["status"] == "interrupted" and "ckpt_path=auto" in line, line
    assert "Traceback" not in Path(f"{run_dir}.err").read_text(), line
    resumed = wait(start(run_dir, *RUN, *extra, "ckpt_path=auto"))
    assert resumed == 0, last_error(run_dir)
    diffs = differences(reference, metrics(run_dir))
    return {
        "fault": f"{name} (graceful stop), resumed with ckpt_path=auto",
        "injected": 1,
        "resumed": 1,
        "steps_lost_max": stopped["steps"] - saved,
        "steps_lost_bound": 0,
        "final_metric_diff_max": max(diffs.values()),
        "detail": f"exit {rc} {stop_seconds:.1f} s after the signal: {brief(line, run_dir)}",
    }


def divergence(out: Path, extra: Sequence[str], cause: str = "optimizer.lr=1e4") -> dict:
    """``cause`` (a learning rate or a CPCC weight far too high): the first non-finite loss
    stops the run; the checkpoint of the step before it (saved every step here, and each
    save first reads the divergence record) is intact and finite."""
    run_dir = out / f"divergence_{cause.split('=')[0].replace('.', '_')}"
    rc = wait(start(run_dir, *RUN, *extra, cause, "checkpoint.every_n_steps=1"))
    line = last_error(run_dir)
    result = metrics(run_dir)
    checkpoint = torch.load(result["resume_checkpoint"], map_location="cpu", weights_only=True)
    finite = all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    assert rc == 1 and result["status"] == "diverged" and "diverged at step" in line, line
    # the checkpoint is the last one before the step whose loss was not finite
    bad_step = int(re.search(r"diverged at step (\d+)", line).group(1))  # the first of a range
    assert checkpoint["global_step"] == bad_step and finite, (checkpoint["global_step"], line)
    return {
        "fault": f"non-finite loss ({cause})",
        "injected": 1,
        "resumed": 0,
        "steps_lost_max": 0,
        "steps_lost_bound": 0,
        "final_metric_diff_max": "",
        "detail": f"exit {rc}, checkpoint finite: {brief(line, run_dir)}",
    }


def mount_tmpfs(path: Path, megabytes: int) -> str | None:
    """Mount a tmpfs of ``megabytes`` at ``path``; the reason it could not, or None."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return None if done.returncode == 0 else (done.stderr.strip() or "mount failed")


def full_disk(out: Path, extra: Sequence[str], megabytes: int = 120) -> dict:
    """The run directory on a tmpfs with room for one checkpoint: the second write fails."""
    mount = out / "small_disk"
    reason = mount_tmpfs(mount, megabytes)
    if reason is not None:
        return {"fault": "full disk", "injected": 0, "detail": f"skipped: {reason}"}
    try:
        run_dir = mount / "run"
        proc = start(run_dir, *RUN, *extra, "checkpoint.every_n_steps=2")
        rc = wait(proc)
        line = last_error(run_dir)
        saved = latest_checkpoint(run_dir)
        step = checkpoint_step(saved)  # loads: the previous checkpoint is whole
        assert rc == 1 and "no space left" in line and "bytes" in line, (rc, line)
        return {
            "fault": f"full disk ({megabytes} MB tmpfs)",
            "injected": 1,
            "resumed": 0,
            "steps_lost_max": "",
            "steps_lost_bound": "",
            "final_metric_diff_max": "",
            "detail": f"exit {rc}; {saved.name} of step {step} loads: {brief(line, run_dir)}",
        }
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def simultaneous(out: Path, extra: Sequence[str], n: int = 4) -> dict:
    """``n`` runs started at once with default run directories (no hydra.run.dir)."""
    root = out / "simultaneous"
    root.mkdir(parents=True, exist_ok=True)
    dists = ["fastft", "l2", "emd", "swd", "sinkhorn", "l1"][:n]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hierot.train", "debug=fast", f"dist={d}", *extra],
            cwd=root,
            env={**os.environ, "HIEROT_OUTPUTS": str(root)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for d in dists
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    dirs = [
        line.split("outputs: ", 1)[1].strip()
        for output in outputs
        for line in output.splitlines()
        if line.startswith("outputs: ")
    ]
    own = [
        json.loads((Path(d) / "metrics.json").read_text())["dist"] == dist
        for d, dist in zip(dirs, dists, strict=True)
    ]
    assert len(set(dirs)) == n and all(own), dirs
    return {
        "fault": f"{n} runs started at the same instant",
        "injected": n,
        "resumed": "",
        "steps_lost_max": "",
        "steps_lost_bound": "",
        "final_metric_diff_max": "",
        "detail": f"{len(set(dirs))} distinct run directories, each with its own config",
    }


# Bad inputs a user types, each expected to fail before training with one line naming it.
BAD_INPUTS = [
    ("checkpoint.every_n_steps=0", "checkpoint.every_n_steps must be an integer >= 1"),
    ("checkpoint.stop_signals=[SIGKILL]", "'SIGKILL' is not a signal a process can handle"),
    ("data.batch_size=30 trainer.devices=4", "does not split evenly across 4 devices"),
    ("ckpt_path=missing.ckpt", "ckpt_path: no such checkpoint"),
    ("ckpt_path=TRUNCATED", "is not a readable PyTorch checkpoint"),
]


def bad_inputs(out: Path, extra: Sequence[str]) -> dict:
    """Each of ``BAD_INPUTS``: exit 2, one ``hierot: error:`` line, no traceback, no run
    directory left behind."""
    folder = out / "bad_inputs"
    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "truncated.ckpt"
    source = latest_checkpoint(out / "reference") or latest_checkpoint(out / "sigterm")
    data = source.read_bytes()[:4096] if source is not None else b"PK\x03\x04"
    truncated.write_bytes(data)
    seen = []
    for overrides, expected in BAD_INPUTS:
        args = overrides.replace("TRUNCATED", str(truncated)).split()
        run = subprocess.run(
            [sys.executable, "-m", "hierot.train", *RUN, *extra, *args],
            cwd=folder, capture_output=True, text=True, timeout=300,
            env={**os.environ, "HIEROT_OUTPUTS": str(folder)},
        )  # fmt: skip
        lines = [line for line in run.stderr.splitlines() if line.startswith("hierot: error:")]
        assert run.returncode == 2 and len(lines) == 1 and expected in lines[0], run.stderr
        assert "Traceback" not in run.stderr and not (folder / "outputs").exists()
        seen.append(f"`{overrides}`")
    return {
        "fault": "bad inputs (exit 2, one line, no run directory)",
        "injected": len(BAD_INPUTS),
        "resumed": "",
        "steps_lost_max": "",
        "steps_lost_bound": "",
        "final_metric_diff_max": "",
        "detail": "; ".join(seen),
    }


FAULTS = {
    "sigkill": lambda out, extra, a: sigkill(out, extra, a.kills, a.every_n_steps)[0],
    "sigkill_curriculum": lambda out, extra, a: sigkill_staged(out, extra, "curriculum")[0],
    "sigkill_supcon": lambda out, extra, a: sigkill_staged(out, extra, "supcon")[0],
    "sigterm": lambda out, extra, a: sigterm(out, extra, "SIGTERM"),
    "sigusr1": lambda out, extra, a: sigterm(out, extra, "SIGUSR1", seed=1),
    "sigint": lambda out, extra, a: sigterm(out, extra, "SIGINT", seed=2),
    "divergence": lambda out, extra, a: divergence(out, extra),
    "divergence_lam": lambda out, extra, a: divergence(out, extra, "lam=1e30"),
    "full_disk": lambda out, extra, a: full_disk(out, extra),
    "simultaneous": lambda out, extra, a: simultaneous(out, extra),
    "bad_inputs": lambda out, extra, a: bad_inputs(out, extra),
}
COLUMNS = [
    "fault",
    "injected",
    "resumed",
    "steps_lost_max",
    "steps_lost_bound",
    "final_metric_diff_max",
    "detail",
]


PAGE = """# Reliability: faults injected into real runs

Written by `scripts/fault_injection.py`. Every run: `{run}`. Work lost is in optimizer steps
(the step the run had reached when the fault hit, minus the step of the checkpoint it resumed
from); the final-metric difference is the largest |difference| of any `test/*` or `val/*`
metric against the uninterrupted run with the same seed.

<!-- table: reliability.csv -->
<!-- end table -->
"""


def write_page(rows: list[dict], folder: Path, command: str) -> None:
    """``reliability.csv`` (a results CSV) and ``reliability.md`` rendered from it."""
    table = [{c: row.get(c, "") for c in COLUMNS} for row in rows]
    write_results(folder / "reliability.csv", table, command)
    page = PAGE.format(run=" ".join(RUN))
    (folder / "reliability.md").write_text(render_page(page, folder))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=list(FAULTS))
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--every-n-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("multirun/fault_injection"))
    parser.add_argument("--results", type=Path, default=Path("docs/results"))
    args = parser.parse_args(argv)
    out = args.out.absolute() / time.strftime("%Y-%m-%d_%H-%M-%S")
    rows = []
    for name in args.faults:
        start_time = time.monotonic()
        row = FAULTS[name](out, extra, args)
        print(f"{name}: {row} ({time.monotonic() - start_time:.0f} s)", flush=True)
        rows.append(row)
    write_page(rows, args.results, command_line())
    print(f"wrote {args.results / 'reliability.md'}")


if __name__ == "__main__":
    main()
