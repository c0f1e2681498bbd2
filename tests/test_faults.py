"""Faults: a training job killed with SIGKILL (twice) resumes to the parameters of an
uninterrupted run, bit for bit; damaged checkpoints and data files are loud errors naming the
file, never a silent restart from scratch."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from discograd.train import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
READS: list = []  # steps of the checkpoints read (and found whole) while jobs ran
STEPS, CKPT_EVERY, LOG_EVERY = 300, 25, 5
JOB = ["vae", "--steps", str(STEPS), "--batch-size", "16", "--hidden", "16", "--n-latent", "3",
       "--n-classes", "4", "--estimator", "reinforce", "--estimator-option", "baseline='ema'",
       "--eval-every", "100", "--ckpt-every", str(CKPT_EVERY), "--log-every", str(LOG_EVERY),
       "--iw-samples", "0", "--no-plots", "--seed", "3"]  # fmt: skip


def parse(*argv):
    from discograd.cli import vae

    parser = argparse.ArgumentParser(prog="discograd")
    vae.add_parser(parser.add_subparsers())
    return parser.parse_args(list(argv))


def start(out: Path, *extra: str) -> subprocess.Popen:
    """``python -m discograd vae ...`` in a fresh interpreter, as a user would start it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen(
        [sys.executable, "-m", "discograd", *JOB, "--out", str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpoint_step(path: Path, seen: dict) -> int:
    """The step of the checkpoint at ``path`` (-1: none yet), read again only when the file
    changed. A read races with the writer's os.replace only in the old-or-new sense: a
    partial file here would be a bug, and load_checkpoint would raise."""
    try:
        stamp = path.stat().st_mtime_ns, path.stat().st_ino
    except FileNotFoundError:
        return -1
    if seen.get("stamp") != stamp:
        seen.update(stamp=stamp, step=int(load_checkpoint(path)["step"]))
        READS.append(seen["step"])
    return seen["step"]


def last_logged_step(out: Path) -> int:
    """The last training step in metrics.jsonl (a torn last line is skipped)."""
    last = 0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("split") == "train":
            last = max(last, row["step"])
    return last


def kill_after_checkpoint(out: Path, past: int, *extra: str):
    """Start the job, poll its folder until a checkpoint beyond step ``past`` is there and the
    job has logged steps beyond that checkpoint (work the kill will lose), SIGKILL it.
    Returns (checkpoint step, last step in metrics.jsonl, stdout)."""
    proc = start(out, *extra)
    ckpt = out / "checkpoint.pt"
    try:
        deadline = time.monotonic() + 240
        seen: dict = {}
        while (step := checkpoint_step(ckpt, seen)) <= past or (
            last_logged_step(out) < step + 2 * LOG_EVERY
        ):
            assert proc.poll() is None, f"job ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    step = int(load_checkpoint(ckpt)["step"])  # the checkpoint left behind loads: not corrupt
    return step, last_logged_step(out), stdout


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, capsys):
    out = tmp_path / "killed"
    kills = []
    step1, last1, _ = kill_after_checkpoint(out, 0)
    kills.append((step1, last1))
    step2, last2, stdout = kill_after_checkpoint(out, step1 + CKPT_EVERY, "--resume")
    kills.append((step2, last2))
    assert f"resuming from step {step1}" in stdout
    final = start(out, "--resume")
    stdout, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr
    assert f"resuming from step {step2}" in stdout

    for step, last in kills:
        assert 0 < step < STEPS and step % CKPT_EVERY == 0
        # Steps lost: done after the checkpoint, redone after the resume; fewer than the
        # checkpoint interval (rows are logged every LOG_EVERY steps: a lower bound). The kill
        # is sent once 2 rows past the checkpoint are logged (0 only if the job wrote the next
        # checkpoint in the moment between that poll and the signal).
        assert 0 <= last - step < CKPT_EVERY + LOG_EVERY
    assert not (out / "checkpoint.pt.tmp").exists()

    # The uninterrupted run, in this process, on one thread as the job.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = parse(*JOB, "--out", str(tmp_path / "whole"), "--quiet", "--threads", "0")
        assert args.func(args) == 0
    finally:
        torch.set_num_threads(threads)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    resumed = load_checkpoint(out / "checkpoint.pt")
    assert resumed["step"] == whole["step"] == STEPS
    for part in ("model", "estimator"):
        for key, value in whole[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert torch.equal(whole["rng"]["noise"], resumed["rng"]["noise"])

    # The metrics read as one uninterrupted run: every row once, the same numbers.
    def table(folder):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]

    assert table(out) == table(tmp_path / "whole")
    train = [r["step"] for r in table(out) if r["split"] == "train"]
    assert train == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    with capsys.disabled():
        lost = [last - step for step, last in kills]
        print(f"\n[faults: {len(kills)} runs killed at checkpoints {[s for s, _ in kills]}; "
              f"{len(READS)} checkpoints read whole while the jobs ran, {len(kills) + 1} after "
              f"the kills and the end; steps redone (logged after the checkpoint) {lost}; "
              f"final parameters bit-identical]")  # fmt: skip


# -- damaged files ------------------------------------------------------------------------------

SMALL = ["vae", "--steps", "6", "--batch-size", "16", "--hidden", "8", "--n-latent", "2",
         "--n-classes", "3", "--eval-every", "0", "--ckpt-every", "3", "--iw-samples", "0",
         "--no-plots", "--quiet", "--threads", "0"]  # fmt: skip


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_checkpoint_stops_the_job_naming_it(tmp_path, capsys, damage):
    args = parse(*SMALL, "--out", str(tmp_path))
    assert args.func(args) == 0
    ckpt, metrics = tmp_path / "checkpoint.pt", tmp_path / "metrics.jsonl"
    good = ckpt.read_bytes()
    bad = {"truncate": good[: len(good) // 3], "empty": b"", "garbage": os.urandom(4096)}[damage]
    ckpt.write_bytes(bad)
    before = metrics.read_text()
    capsys.readouterr()

    args = parse(*SMALL, "--out", str(tmp_path), "--resume", "--steps", "9")
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and "unreadable" in err
    # Nothing was restarted or overwritten.
    assert ckpt.read_bytes() == bad and metrics.read_text() == before


def test_torn_temporary_file_from_a_kill_during_a_write_is_harmless(tmp_path):
    args = parse(*SMALL, "--out", str(tmp_path))
    assert args.func(args) == 0
    # What a SIGKILL in the middle of save_checkpoint leaves: a partial temporary file.
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"PK\x03\x04 torn")
    args = parse(*SMALL, "--out", str(tmp_path), "--resume", "--steps", "9")
    assert args.func(args) == 0
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 9
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


@pytest.mark.parametrize("damage", ["truncate", "missing", "no-images"])
def test_damaged_data_file_is_an_error_naming_it(tmp_path, capsys, damage):
    path = tmp_path / "digits.npz"
    images = (np.random.default_rng(0).random((30, 8, 8)) * 255).astype(np.uint8)
    np.savez(path, **({"pixels": images} if damage == "no-images" else {"images": images}))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "missing":
        path.unlink()
    args = parse(*SMALL, "--dataset", f"mnist-npz:{path}", "--out", str(tmp_path / "run"))
    assert args.func(args) == 2
    assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_load_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "half.pt"
    torch.save({"format": 1}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
