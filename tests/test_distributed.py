"""Training in several processes: gradients averaged over the ranks' shares of the batch, ranks
drawing their own reproducible noise, exact resume, and failures that stop every rank.

Two harnesses: the real command (``discograd vae --nproc 2``, which starts torchrun and two
gloo workers), and, for the cheaper scenarios, two forked copies of this process joined in a
gloo group through a file store (no interpreter start-up; fit uses the group it finds).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from discograd import distributed
from discograd.distributed import rank_seed, shard
from discograd.estimators import get
from discograd.train import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    _derive_seeds,
    fit,
    load_checkpoint,
    save_checkpoint,
    seeded,
)
from tests.test_train import ESTIMATORS, Crash, Toy, config, params, rows

# -- pieces ----------------------------------------------------------------------------------


def test_shard_splits_like_tensor_split_and_weights_by_rows():
    x = torch.arange(10).reshape(5, 2)
    shares = [shard(x, r, 2) for r in range(2)]
    assert [s.tolist() for s, _ in shares] == [t.tolist() for t in torch.tensor_split(x, 2)]
    assert [w for _, w in shares] == [2 * 3 / 5, 2 * 2 / 5]  # N n_r / n
    # (1/N) sum_r w_r * mean_r = the batch mean, for any function of the rows.
    f = x.float().pow(2).sum(1)
    parts = torch.tensor_split(torch.arange(5), 2)
    mean = sum(w * f[part].mean() for part, (_, w) in zip(parts, shares)) / 2
    assert mean == pytest.approx(f.mean().item())
    # Nested batches split every tensor; non-tensors and 0-d tensors stay whole.
    batch = {"x": x, "y": (torch.arange(5), "tag"), "scalar": torch.tensor(3.0)}
    part, w = shard(batch, 1, 2)
    assert part["x"].tolist() == x[3:].tolist() and part["y"][0].tolist() == [3, 4]
    assert part["y"][1] == "tag" and part["scalar"].item() == 3.0 and w == 0.8
    # A share with no rows: the whole batch, weight 0 (the rank still takes part).
    assert shard(x[:1], 1, 2)[1] == 0.0 and shard(x[:1], 0, 2)[1] == 2.0
    assert shard(x, 0, 1) == (x, 1.0)
    with pytest.raises(ValueError, match="batch"):
        shard({"a": "no tensors"}, 0, 2)


def test_rank_seeds_rank0_unchanged_others_distinct():
    assert rank_seed(1234, 0) == 1234
    seeds = {rank_seed(1234, r) for r in range(64)}
    assert len(seeds) == 64
    assert rank_seed(1234, 3) == rank_seed(1234, 3) != rank_seed(1235, 3)
    assert rank_seed(1234, 0, 7) != 1234  # salted (a reseeded rank) differs too


def test_launch_rejects_bad_nproc():
    with pytest.raises(ValueError, match="nproc"):
        distributed.launch(argparse.Namespace(), 0)


# Runs ``python -m discograd doctor`` with a hook that prints when the interpreter shuts down.
SHUTDOWN_PROBE = (
    "import atexit, runpy, sys; atexit.register(lambda: print('interpreter shutdown')); "
    "sys.argv = ['discograd', 'doctor']; runpy.run_module('discograd', run_name='__main__')"
)


def test_a_rank_exits_without_the_interpreter_shutdown_that_races_gloo_threads(monkeypatch):
    # A rank's gloo threads free a collective's tensors just after it completes, and need the
    # GIL to do so; if the interpreter is shutting down by then the process aborts (SIGABRT,
    # about 1 run in 5 of the 2-process vae job here before exit_process). So a rank's entry
    # points end through os._exit, after flushing what they printed.
    def run(code, **env):
        clean = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
        return subprocess.run([sys.executable, "-c", code], env=dict(clean, **env),
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    rank = run(SHUTDOWN_PROBE, WORLD_SIZE="2")
    assert rank.returncode == 0, rank.stderr[-2000:]
    assert "kernel builds" in rank.stdout  # doctor's last lines, flushed through the pipe
    assert "interpreter shutdown" not in rank.stdout
    # The same probe sees the shutdown of a single process (so the assertion above can fail).
    single = run(SHUTDOWN_PROBE)
    assert single.returncode == 0 and "interpreter shutdown" in single.stdout
    # The status survives; in a single process exit_process is SystemExit.
    code = "from discograd.distributed import exit_process; print('bye', end=''); exit_process(3)"
    for env in ({"WORLD_SIZE": "2"}, {}):
        out = run(code, **env)
        assert (out.returncode, out.stdout) == (3, "bye"), env
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as stop:
        distributed.exit_process(0)
    assert stop.value.code == 0
    # The installed script enters the same way as python -m discograd.
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [e.value for e in scripts if e.name == "discograd"] == ["discograd.cli:entry"]


# -- the real command under torchrun ----------------------------------------------------------


def parse(*argv):
    from discograd.cli import vae

    parser = argparse.ArgumentParser(prog="discograd")
    vae.add_parser(parser.add_subparsers())
    return parser.parse_args(["vae", *argv])


def vae_experiment(args):
    """The experiment ``discograd vae`` builds from ``args``."""
    from discograd.cli.vae import build_estimator, load_dataset
    from discograd.models import DiscreteVAE, VAEExperiment

    data = load_dataset(args.dataset)
    estimator, settings = build_estimator(args)
    with seeded(args.seed):
        model = DiscreteVAE(data.dim, args.n_latent, args.n_classes, args.hidden)
    model.init_output_bias(data.train.mean(0))
    return VAEExperiment(data, model, estimator, iw_samples=args.iw_samples, settings=settings)


class RanksInOneProcess:
    """What N ranks compute, in one process: each global batch cut by torch.tensor_split, each
    part's loss drawn from its own noise stream, weighted by its share of the rows; ``only``
    keeps one part unweighted (a rank whose gradient nobody averages)."""

    def __init__(self, experiment, noise_seeds, only=None):
        self.experiment, self.only = experiment, only
        self.model, self.estimator = experiment.model, experiment.estimator
        self.gens = [torch.Generator().manual_seed(s) for s in noise_seeds]

    def batches(self, batch_size, generator):
        return self.experiment.batches(batch_size, generator)

    def loss(self, batch, step, generator):
        total = 0.0
        for r, (part, gen) in enumerate(zip(torch.tensor_split(batch, len(self.gens)), self.gens)):
            loss, _ = self.experiment.loss(part, step, gen)
            if self.only is None:
                total = total + loss * part.shape[0] / batch.shape[0]
            elif r == self.only:
                total = loss
        return total, {}

    def evaluate(self, split, generator):
        return self.experiment.evaluate(split, generator)

    def config_dict(self):
        return self.experiment.config_dict()


def close(a: dict, b: dict, atol=1e-6) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-5, atol=atol) for k in a)


def test_two_processes_average_gradients_over_their_shares(tmp_path, capfd):
    # An odd batch (shares of 8 and 7 rows) and a noisy estimator: rank 1 must draw its own
    # noise, and the result must equal one process computing both ranks' shares.
    job = ["--estimator", "st-gumbel-softmax", "--steps", "3", "--batch-size", "15",
           "--hidden", "16", "--n-latent", "3", "--n-classes", "4", "--eval-every", "0",
           "--ckpt-every", "0", "--log-every", "1", "--iw-samples", "0", "--no-plots",
           "--quiet", "--seed", "5"]  # fmt: skip
    out = tmp_path / "ddp"
    args = parse(*job, "--out", str(out), "--nproc", "2")
    start = time.perf_counter()
    assert args.func(args) == 0, capfd.readouterr().err[-3000:]
    seconds = time.perf_counter() - start

    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 3
    assert json.loads((out / "config.json").read_text())["distributed"]["world_size"] == 2
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
    # Rank 0 alone wrote: one row per step, one final row per split.
    table = rows(out)
    assert [r["step"] for r in table if r["split"] == "train"] == [1, 2, 3]
    assert sorted(r["split"] for r in table if r.get("final")) == ["test", "valid"]

    noise = _derive_seeds(5)[1]
    seeds = [rank_seed(noise, 0), rank_seed(noise, 1)]
    assert seeds[0] == noise  # rank 0 draws what a single process draws

    def reference(name, **kw):
        exp = RanksInOneProcess(vae_experiment(parse(*job)), **kw)
        cfg = TrainConfig(steps=3, batch_size=15, lr=2e-3, seed=5, eval_every=0, ckpt_every=0,
                          log_every=1, out_dir=str(tmp_path / name), quiet=True,
                          final_splits=())  # fmt: skip
        fit(exp, cfg)
        return exp

    ref = reference("ref", noise_seeds=seeds)
    ddp_params = ckpt["model"]
    gap = max((ddp_params[k] - v).abs().max().item() for k, v in ref.model.state_dict().items())
    assert close(ddp_params, ref.model.state_dict()), gap
    # Each rank's noise stream is where the reference's is after drawing the same noise.
    assert torch.equal(ckpt["rng"]["noise"], ref.gens[0].get_state())
    assert torch.equal(ckpt["rng"]["ranks"][0]["noise"], ref.gens[1].get_state())
    # The logged loss is the average over the ranks, weighted by rows.
    ref_rows = [r for r in rows(tmp_path / "ref") if r["split"] == "train"]
    ddp_rows = [r for r in table if r["split"] == "train"]
    assert [r["loss"] for r in ddp_rows] == pytest.approx([r["loss"] for r in ref_rows], rel=1e-5)

    # Negative controls, judged by the same comparison: both ranks drawing rank 0's noise,
    # and a rank that trains on its own share without averaging.
    for name, kw in [("same-noise", dict(noise_seeds=[seeds[0]] * 2)),
                     ("rank0-only", dict(noise_seeds=seeds, only=0))]:  # fmt: skip
        assert not close(ddp_params, reference(name, **kw).model.state_dict()), name
    print(f"[2-process vae job, 3 steps, launch included: {seconds:.1f} s; largest parameter "
          f"difference to the one-process reference: {gap:.2g}]")  # fmt: skip


# -- forked ranks -----------------------------------------------------------------------------


def _rank_main(target, rank, world, store, queue):
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        value = target(rank, world)
        queue.put((rank, True, value))
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(target, tmp_path, world=2, timeout=180):
    """target(rank, world) in ``world`` forked processes joined in a gloo group: their return
    values (picklable, no tensors), in rank order; a failure on any rank fails the test."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    store = tmp_path / f"store-{time.monotonic_ns()}"
    procs = [
        ctx.Process(target=_rank_main, args=(target, r, world, str(store), queue))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results, deadline = {}, time.monotonic() + timeout
    try:
        for _ in procs:
            rank, ok, value = queue.get(timeout=max(1.0, deadline - time.monotonic()))
            assert ok, f"rank {rank} failed:\n{value}"
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]


def plain(state: dict) -> dict:
    return {k: v.numpy().copy() for k, v in state.items()}


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def no_dropout_toy(estimator, **kw):
    toy = Toy(estimator, **kw)
    toy.model["enc"][1].p = 0.0
    return toy


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """2 ranks: an uninterrupted 12-step run; a run that crashes at step 6 (checkpoint at 4),
    resumed; the same resumed from a checkpoint that lost rank 1's random state."""
    tmp = tmp_path_factory.mktemp("ddp")
    make = ESTIMATORS["reinforce-ema"]  # a baseline buffer; dropout: torch's global generator

    def scenario(rank, world):
        full = Toy(make())
        fit(full, config(tmp / "full"))
        try:
            fit(Toy(make(), crash_at=6), config(tmp / "cut"))
        except Crash:
            pass
        if rank == 0:
            for name in ("lost-rank1", "to-one"):
                shutil.copytree(tmp / "cut", tmp / name)
            ckpt = load_checkpoint(tmp / "lost-rank1" / "checkpoint.pt")
            ckpt["rng"]["ranks"] = []
            save_checkpoint(ckpt, tmp / "lost-rank1" / "checkpoint.pt")
        dist.barrier()
        resumed, lost = Toy(make()), Toy(make())
        fit(resumed, config(tmp / "cut", resume=True))
        fit(lost, config(tmp / "lost-rank1", resume=True))
        return {k: plain(params(t)) for k, t in [("full", full), ("resumed", resumed),
                                                  ("lost", lost)]}  # fmt: skip

    return tmp, run_ranks(scenario, tmp)


def test_ddp_resume_is_bit_identical(ddp_runs):
    tmp, (rank0, rank1) = ddp_runs
    # The ranks' models agree (buffers such as the baseline's average are rank 0's: DDP
    # broadcasts them before each forward, and each rank updates its copy after it).
    model = [k for k in rank0["full"] if k.startswith("model.")]
    assert all(np.array_equal(rank0["full"][k], rank1["full"][k]) for k in model)
    assert equal(rank0["full"], rank0["resumed"])
    assert rows(tmp / "full") == rows(tmp / "cut")
    # Rank 0 alone wrote, and the ranks' random states are in the checkpoint.
    assert sorted(p.name for p in (tmp / "full").iterdir()) == [
        "checkpoint.pt", "config.json", "metrics.jsonl"]  # fmt: skip
    ckpt = load_checkpoint(tmp / "full" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]["ranks"]) == 1
    assert not torch.equal(ckpt["rng"]["noise"], ckpt["rng"]["ranks"][0]["noise"])
    assert not torch.equal(ckpt["rng"]["global"], ckpt["rng"]["ranks"][0]["global"])
    # Negative control: rank 1 reseeded instead of restored; the same comparison fails.
    assert not equal(rank0["full"], rank0["lost"])


def test_resume_with_another_number_of_processes(ddp_runs, capsys):
    tmp, _ = ddp_runs
    one = Toy(ESTIMATORS["reinforce-ema"]())
    cfg = dataclasses.replace(config(tmp / "to-one", resume=True), quiet=False)
    assert fit(one, cfg).step == 12
    assert "from 2 process(es), this run has 1" in capsys.readouterr().out
    train = [r["step"] for r in rows(tmp / "to-one") if r["split"] == "train"]
    assert train == [2, 4, 6, 8, 10, 12]


def test_ddp_two_ranks_equal_one_process_on_the_union(tmp_path):
    # Deterministic estimator, no dropout: 2 ranks must train exactly as 1 process on the
    # whole batch. 37 examples in batches of 5: shares of 3 and 2, and the epoch's last batch
    # of 2; in batches of 6: shares of 3 and 3, then at step 7 a last batch of 1, which rank 1
    # joins with weight 0. The control forgets the row weights (each rank's mean counted
    # equally): with shares of 3 and 2 that is not the same model.
    def unweighted(batch, r, n):
        return shard(batch, r, n)[0], 1.0

    runs = {"b5": (5, None), "b6": (6, None), "unweighted": (5, unweighted)}

    def train(name):
        batch_size, sharding = runs[name]
        toy = no_dropout_toy(get("exact"))
        if sharding is not None:
            toy.shard_batch = sharding
        fit(toy, config(tmp_path / name, steps=9, ckpt_every=0, batch_size=batch_size))
        return plain(params(toy))

    two = run_ranks(lambda rank, world: {name: train(name) for name in runs}, tmp_path)[0]
    one = {}
    for batch_size in (5, 6):
        toy = no_dropout_toy(get("exact"))
        fit(toy, config(tmp_path / f"one{batch_size}", steps=9, ckpt_every=0,
                        batch_size=batch_size))  # fmt: skip
        one[batch_size] = plain(params(toy))

    def same(a, b):
        return all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in b)

    assert same(two["b5"], one[5]) and same(two["b6"], one[6])
    assert not same(two["unweighted"], one[5])


def test_ddp_failures_stop_every_rank(tmp_path):
    fit(Toy(get("st")), config(tmp_path / "bad", steps=4))
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"\x00" * 100)

    def scenario(rank, world):
        seen = {}
        # A NaN on rank 1 only: both ranks stop at the same step, neither waits forever.
        try:
            fit(Toy(get("st"), nan_at=3 if rank == 1 else None), config(tmp_path / f"nan{rank}"))
        except NonFiniteLossError as exc:
            seen["nan"] = str(exc)
        # A corrupt checkpoint read by rank 0: every rank raises the error naming it.
        try:
            fit(Toy(get("st")), config(tmp_path / "bad", steps=8, resume=True))
        except CheckpointError as exc:
            seen["ckpt"] = str(exc)
        return seen

    for seen in run_ranks(scenario, tmp_path):
        assert "loss is nan at step 4" in seen["nan"]
        assert str(tmp_path / "bad" / "checkpoint.pt") in seen["ckpt"]
    assert not (tmp_path / "nan1").exists()  # only rank 0 writes


class WithCritic(Toy):
    """Toy plus a critic network with its own optimizer, stepped inside ``loss`` (the shape of a
    GAN's discriminator step), its gradients averaged over the ranks when ``average``."""

    def __init__(self, average: bool):
        super().__init__(get("st"))
        self.model["enc"][1].p = 0.0
        with seeded(1):
            self.model["critic"] = torch.nn.Linear(6, 1)
        self.critic_opt = torch.optim.SGD(self.model["critic"].parameters(), lr=0.1)
        self.average = average

    def separately_optimized(self):
        return self.model["critic"].parameters()

    def loss(self, batch, step, generator):
        self.critic_opt.zero_grad()
        self.model["critic"](batch).pow(2).mean().backward()
        if self.average:
            distributed.all_reduce_gradients(self.model["critic"].parameters())
        self.critic_opt.step()
        return super().loss(batch, step, generator)


def test_a_second_optimizer_inside_loss_stays_in_sync(tmp_path):
    def scenario(rank, world):
        out = {}
        for average in (True, False):
            toy = WithCritic(average)
            cfg = config(tmp_path / f"avg{average}", steps=5, ckpt_every=0, eval_every=0)
            fit(toy, dataclasses.replace(cfg, final_splits=()))
            out[average] = {k: v.numpy() for k, v in toy.model.state_dict().items()}
        return out

    rank0, rank1 = run_ranks(scenario, tmp_path)
    assert equal(rank0[True], rank1[True])
    # Negative control: without the average, each rank's critic follows its own share.
    assert not np.array_equal(rank0[False]["critic.weight"], rank1[False]["critic.weight"])
    assert np.array_equal(rank0[False]["dec.weight"], rank1[False]["dec.weight"])


def test_global_batch_smaller_than_world_is_refused(tmp_path):
    def scenario(rank, world):
        try:
            fit(Toy(get("st")), config(tmp_path, batch_size=1))
        except ValueError as exc:
            return str(exc)
        return ""

    assert all("batch_size" in m for m in run_ranks(scenario, tmp_path))


def test_single_process_makes_no_process_group(tmp_path):
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"
    fit(Toy(get("st")), config(tmp_path, steps=2))
    assert not dist.is_initialized()
    assert "distributed" not in json.loads((tmp_path / "config.json").read_text())
    assert Path(tmp_path / "checkpoint.pt").exists()


def test_the_process_group_timeout_can_be_set_in_seconds(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout() == distributed.TIMEOUT
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.timeout().total_seconds() == 90
    for bad in ["0", "-5", "nan", "inf", "soon"]:
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match="DISCOGRAD_DIST_TIMEOUT_S must be a number"):
            distributed.timeout()
