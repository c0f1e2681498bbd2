"""Sequence data, their metrics, and the sequence GAN (discograd.experiments, ``discograd gan``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from discograd import estimators
from discograd.cli import main
from discograd.experiments.gan import (
    Discriminator,
    GANExperiment,
    Generator,
    SequenceDistribution,
    SequenceGAN,
    pathwise_sample,
)
from discograd.experiments.sequences import (
    ARITHMETIC,
    PAD,
    PARENTHESES,
    Grammar,
    MarkovOracle,
    distinct_ngrams,
    distinct_sequences,
    diversity,
    grammatical_fraction,
    make_data,
)
from discograd.train import TrainConfig, fit, seeded
from tests.stats import assert_mean_close, chi_square_pvalue, mean_is_close

# ---------------------------------------------------------------------------------------------
# Grammar


@pytest.mark.parametrize("text", ["x", "x+x", "x*x-x", "x/x+x*x-x", "x+x+x+x+x+x"])
def test_arithmetic_accepts(text):
    assert ARITHMETIC.accepts(text)


@pytest.mark.parametrize("text", ["", "+", "xx", "x+", "+x", "x++x", "x+x*", "x_x", "y", "x+xx"])
def test_arithmetic_rejects(text):
    assert not ARITHMETIC.accepts(text)


def test_parentheses_needs_a_context_free_recognizer():
    for text in ["(x)", "((x))", "(x+x)*x", "x*(x+(x*x))"]:
        assert PARENTHESES.accepts(text), text
    for text in ["(x", "x)", "(x+x", "((x)", ")x(", "()", "(x)(x)", "x-x"]:
        assert not PARENTHESES.accepts(text), text


def test_grammatical_fraction_allows_padding_only_at_the_end():
    pad = PAD
    texts = [
        "x+x" + pad * 3,
        "x" + pad * 5,
        "x" + pad + "+x" + pad * 2,
        pad * 6,
        "x+x*x+",
        "x*x/x-",
    ]
    assert grammatical_fraction(texts, ARITHMETIC) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="empty"):
        grammatical_fraction([], ARITHMETIC)


def test_grammar_counts_derivations():
    # S -> x | S op S with 4 operators: a string with m operators has Catalan(m) derivations
    # and there are 4^m such strings.
    for m in range(6):
        catalan = math.comb(2 * m, m) // (m + 1)
        assert ARITHMETIC.count("S", 2 * m + 1) == catalan * 4**m
        assert ARITHMETIC.count("S", 2 * m + 2) == 0
    assert ARITHMETIC.lengths(12) == [1, 3, 5, 7, 9, 11]


def test_grammar_samples_derivations_uniformly():
    # Length 5: 16 strings, each with 2 derivations, so uniform derivations = uniform strings.
    gen = torch.Generator().manual_seed(0)
    n = 4000
    draws = [ARITHMETIC.sample(5, gen) for _ in range(n)]
    assert all(ARITHMETIC.accepts(t) for t in draws)
    strings = sorted(set(draws))
    assert len(strings) == 16
    counts = [draws.count(s) for s in strings]
    assert chi_square_pvalue(counts, [1 / 16] * 16) > 1e-3
    # Parentheses: "(x)+x" has 1 derivation of length 5, "x+x+x" 2: the sampler follows counts.
    draws = [PARENTHESES.sample(5, gen) for _ in range(4000)]
    total = PARENTHESES.count("S", 5)
    share = draws.count("x+x+x") / len(draws)
    se = math.sqrt(2 / total * (1 - 2 / total) / len(draws))
    assert abs(share - 2 / total) < 4 * se


def test_grammar_rejects_bad_rules():
    with pytest.raises(ValueError, match="unit production"):
        Grammar({"S": ["x", "T"], "T": ["y"]})
    with pytest.raises(ValueError, match="empty production"):
        Grammar({"S": ["x", ""]})
    with pytest.raises(ValueError, match="start symbol"):
        Grammar({"T": ["x"]})
    with pytest.raises(ValueError, match="derives no string"):
        ARITHMETIC.sample(4)


def test_grammar_data_is_grammatical_and_padded():
    data = make_data("grammar", n_train=300, n_valid=50, length=12, seed=1)
    assert data.train.shape == (300, 12) and data.valid.shape == (50, 12)
    assert data.vocab[-1] == PAD
    assert grammatical_fraction(data.decode(data.train), ARITHMETIC) == 1.0
    m = data.metrics(data.valid)
    assert m["grammatical"] == 1.0 and m["distinct_seqs"] > 10
    # The same seed gives the same data.
    assert torch.equal(make_data("grammar", n_train=300, n_valid=50, seed=1).train, data.train)


# ---------------------------------------------------------------------------------------------
# Diversity


def test_distinct_ngrams_hand_made():
    seqs = [[1, 2, 3], [1, 2, 3], [3, 2, 1], [4]]
    assert distinct_ngrams(seqs, 1) == (4, 10)
    assert distinct_ngrams(seqs, 2) == (4, 6)  # (1,2) (2,3) (3,2) (2,1)
    assert distinct_ngrams(seqs, 3) == (2, 3)
    assert distinct_ngrams(seqs, 4) == (0, 0)
    assert distinct_sequences(seqs) == 3
    d = diversity(seqs, ns=(2,))
    assert d == {"distinct_seqs": 3, "distinct_2grams": 4, "distinct_2": 4 / 6}
    assert distinct_ngrams(["abab", "ba"], 2) == (2, 4)
    with pytest.raises(ValueError):
        distinct_ngrams(seqs, 0)


# ---------------------------------------------------------------------------------------------
# Markov oracle


def test_oracle_nll_of_its_own_samples_matches_its_entropy_rate():
    oracle = MarkovOracle(vocab_size=6, scale=1.5, seed=0)
    p = oracle.log_transition.exp()
    assert torch.allclose(oracle.stationary @ p, oracle.stationary, atol=1e-12)
    length = 20
    gen = torch.Generator().manual_seed(0)
    nll = oracle.nll(oracle.sample(20000, length, gen))
    exact = oracle.expected_nll(length)
    assert_mean_close(nll, torch.tensor(exact, dtype=torch.float64))
    # (H(pi) + (L - 1) h) / L -> h: the per-token NLL is the entropy rate up to the first token.
    h_pi = float(-(oracle.stationary * oracle.stationary.log()).sum())
    assert exact == pytest.approx(oracle.entropy_rate() + (h_pi - oracle.entropy_rate()) / length)
    # Negative control: another chain's sequences do not score like the oracle's own.
    other = MarkovOracle(vocab_size=6, scale=1.5, seed=1).sample(20000, length, gen)
    assert not mean_is_close(oracle.nll(other), torch.tensor(exact, dtype=torch.float64))


def test_oracle_nll_by_hand():
    oracle = MarkovOracle(vocab_size=3, scale=1.0, seed=2)
    x = torch.tensor([[0, 2, 2, 1]])
    lp, lt = oracle.stationary.log(), oracle.log_transition
    by_hand = -(lp[0] + lt[0, 2] + lt[2, 2] + lt[2, 1]) / 4
    assert float(oracle.nll(x)) == pytest.approx(float(by_hand))


# ---------------------------------------------------------------------------------------------
# Generator, distribution, estimators


def _all_sequences(v: int, length: int) -> torch.Tensor:
    return torch.cartesian_prod(*[torch.arange(v)] * length)


def test_generator_log_prob_normalizes_and_matches_its_sampler():
    with seeded(0):
        g = Generator(3, hidden=8, embed=4)
    with torch.no_grad():
        g.head.weight.mul_(4.0)  # a peaked, non-uniform distribution
    seqs = _all_sequences(3, 3)  # 27 sequences
    with torch.no_grad():
        probs = g.log_prob(seqs).double().exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    draws = g.sample(6000, 3, torch.Generator().manual_seed(1))
    codes = draws[:, 0] * 9 + draws[:, 1] * 3 + draws[:, 2]
    counts = torch.bincount(codes, minlength=27).numpy()
    assert chi_square_pvalue(counts, probs.numpy()) > 1e-3


def test_sequence_distribution_gives_reinforce_an_unbiased_gradient():
    # REINFORCE through SequenceDistribution against the exact gradient of
    # E[f] = sum_x p(x) f(x) over all 2^3 sequences, in the generator's output layer.
    with seeded(3):
        g = Generator(2, hidden=4, embed=3)
    params = [g.head.weight, g.head.bias]
    dist = SequenceDistribution(g, 5, 3)
    assert dist.sample((4,)).shape == (4, 5, 3)
    assert dist.log_prob(dist.sample((4,))).shape == (4, 5)
    w = torch.tensor([0.3, -1.0, 2.0])

    def f(x):
        return torch.sin((x.float() * w).sum(-1))

    def flat_grad(y):
        return torch.cat([t.flatten() for t in torch.autograd.grad(y, params, retain_graph=True)])

    seqs = _all_sequences(2, 3)
    log_p = g.log_prob(seqs)
    exact = flat_grad((log_p.exp() * f(seqs)).sum()).double()
    # Per-sequence scores, exactly: grad log p(x) and, for the negative control, the same
    # without the first token's term.
    score = torch.stack([flat_grad(lp) for lp in log_p])
    first = torch.log_softmax(g.head(g.cell(g.start.expand(8, -1))[0]), -1)
    first = first.gather(1, seqs[:, :1]).squeeze(1)
    score_wrong = torch.stack([flat_grad(lp - lp1) for lp, lp1 in zip(log_p, first)])

    n = 20000
    x = SequenceDistribution(g, n, 3).sample()
    code = x[:, 0] * 4 + x[:, 1] * 2 + x[:, 2]
    draws = (f(seqs)[code].unsqueeze(1) * score[code]).double()
    assert_mean_close(draws, exact)
    # Negative control: dropping the first token's score biases the gradient.
    wrong = (f(seqs)[code].unsqueeze(1) * score_wrong[code]).double()
    assert not mean_is_close(wrong, exact)
    # The estimator's own gradient (a mean over n draws) is within 4 SE of exact.
    est = estimators.get("reinforce")
    surrogate = est(f, SequenceDistribution(g, n, 3), generator=torch.Generator().manual_seed(2))
    assert surrogate.shape == (n,)
    grad = flat_grad(surrogate.mean()).double()
    se = draws.std(0) / math.sqrt(n)
    assert ((grad - exact).abs() <= 4 * se + 1e-9).all()


@pytest.mark.parametrize("name", ["gumbel-softmax", "st-gumbel-softmax", "gumbel-rao", "reinmax"])
def test_pathwise_sample_carries_the_estimator_gradient(name):
    est = estimators.get(name, tau=0.7)
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = pathwise_sample(est, logits, torch.Generator().manual_seed(1))
    assert y.shape == (5, 4)
    assert torch.allclose(y.sum(-1), torch.ones(5))
    if name != "gumbel-softmax":
        assert set(y.detach().unique().tolist()) <= {0.0, 1.0}  # exact one-hot forward
    (grad,) = torch.autograd.grad((y * torch.arange(4.0)).sum(), logits)
    assert grad.abs().sum() > 0
    # The same sample as the estimator would hand to any f.
    seen = []
    est(
        lambda z: seen.append(z) or z.new_zeros(1),
        logits,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(seen[0][0].detach(), y.detach())


def test_pathwise_sample_refuses_several_samples():
    est = estimators.get("gumbel-softmax", n_samples=2)
    with pytest.raises(ValueError, match="n_samples=1"):
        pathwise_sample(est, torch.zeros(3, 4))


# ---------------------------------------------------------------------------------------------
# The GAN


def _tiny(estimator="st-gumbel-softmax", data_kind="grammar", g_ema=0.9, **kw):
    data = make_data(data_kind, n_train=64, n_valid=32, length=6, seed=0, vocab_size=4)
    est = estimators.get(estimator, **kw)
    with seeded(0):
        g, d = Generator(data.vocab_size, 8, 4), Discriminator(data.vocab_size, "cnn", 8, 4)
        model = SequenceGAN(g, d, d_lr=1e-3, g_ema=g_ema)
    return data, GANExperiment(data, model, est, eval_samples=50)


def test_weight_average_follows_its_recursion():
    data, exp = _tiny(g_ema=0.75)
    model = exp.model
    before = [p.detach().clone() for p in model.generator.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(model.average.parameters(), before))
    assert not any(p.requires_grad for p in model.average.parameters())
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    model.update_average()
    for avg, b in zip(model.average.parameters(), before):
        assert torch.allclose(avg, b + 0.25)
    assert model.sampler is model.average
    out = exp.evaluate("samples", torch.Generator().manual_seed(0))
    assert {"grammatical", "raw_grammatical", "g_nll", "raw_g_nll"} <= set(out)
    _, plain = _tiny(g_ema=0.0)
    assert plain.model.average is None and plain.model.sampler is plain.model.generator
    assert "raw_grammatical" not in plain.evaluate("samples", torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="g_ema"):
        SequenceGAN(Generator(3, 2, 2), Discriminator(3), g_ema=1.0)


def test_generator_loss_trains_g_only():
    data, exp = _tiny()
    gen = torch.Generator().manual_seed(0)
    d_before = [p.detach().clone() for p in exp.model.discriminator.parameters()]
    loss, metrics = exp.loss(data.train[:16], 0, gen)
    # The discriminator was updated once by its own optimizer ...
    d_after = list(exp.model.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(d_before, d_after))
    assert set(metrics) == {"d_loss", "d_real", "d_fake"}
    # ... and the generator's loss gives it no gradient (so the trainer's Adam skips it).
    exp.model.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is None for p in exp.model.discriminator.parameters())
    assert all(p.grad is not None for p in exp.model.generator.parameters())
    assert all(p.grad is None for p in exp.model.average.parameters())
    assert all(p.requires_grad for p in exp.model.discriminator.parameters())


def test_batch_spread_feature():
    d = Discriminator(3, "cnn", 4, 4, minibatch_std=True)
    same = F.one_hot(torch.zeros(8, 5, dtype=torch.long), 3).float()
    varied = F.one_hot(torch.randint(3, (8, 5), generator=torch.Generator().manual_seed(0)), 3)
    from discograd.experiments.gan import _batch_spread

    feats = torch.randn(2, 8, 6)
    spread = _batch_spread(feats)
    assert spread.shape == (2, 8, 1)
    assert torch.allclose(spread[0, 0], feats[0].std(0, unbiased=False).mean(), atol=1e-6)
    assert d(same).shape == (8,) and d(varied.float()).shape == (8,)
    assert float(_batch_spread(torch.ones(8, 6))[0]) < 1e-3


@pytest.mark.parametrize(
    "estimator, kind, opts",
    [("gumbel-softmax", "grammar", {"tau": 0.5}), ("rloo", "markov", {"n_samples": 2})],
)
def test_gan_trains_with_fit(tmp_path, estimator, kind, opts):
    data, exp = _tiny(estimator, kind, **opts)
    cfg = TrainConfig(
        steps=4,
        batch_size=16,
        eval_every=2,
        log_every=2,
        ckpt_every=0,
        eval_splits=("samples",),
        final_splits=("samples",),
        quiet=True,
        out_dir=str(tmp_path),
    )
    result = fit(exp, cfg)
    final = result.final["samples"]
    assert final["samples"] == 50 and final["distinct_seqs"] >= 1
    assert math.isfinite(final["g_nll"])
    assert ("grammatical" in final) == (kind == "grammar")
    assert ("oracle_nll" in final) == (kind == "markov")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("split") == "train"] == [2, 4]


def test_gan_resume_is_exact_including_the_discriminator_optimizer(tmp_path):
    def run(steps, out, resume=False):
        data, exp = _tiny("reinmax")
        cfg = TrainConfig(
            steps=steps,
            batch_size=16,
            eval_every=0,
            log_every=0,
            ckpt_every=3,
            eval_splits=("samples",),
            final_splits=("samples",),
            quiet=True,
            out_dir=str(out),
            resume=resume,
        )
        fit(exp, cfg)
        return exp.model

    straight = run(6, tmp_path / "a")
    run(3, tmp_path / "b")
    resumed = run(6, tmp_path / "b", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        if name.endswith("_extra_state"):
            sa, sb = a["d_optimizer"]["state"], b["d_optimizer"]["state"]
            assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
        else:
            assert torch.equal(a, b), name


def test_gan_rejects_estimators_without_a_sequence_path():
    data = make_data("grammar", n_train=8, n_valid=8, length=4)
    model = SequenceGAN(Generator(data.vocab_size, 4, 2), Discriminator(data.vocab_size))
    with pytest.raises(ValueError, match="cannot train the sequence generator"):
        GANExperiment(data, model, estimators.get("rebar"))


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_gan_writes_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "gan",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--hidden",
            "8",
            "--embed",
            "4",
            "--d-hidden",
            "4",
            "--n-train",
            "40",
            "--n-valid",
            "20",
            "--eval-samples",
            "30",
            "--eval-every",
            "0",
            "--n-show",
            "10",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    assert "grammatical:" in capsys.readouterr().out
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "summary.json",
        "samples.txt",
        "curves.png",
    ):
        assert (out / name).exists(), name
    lines = (out / "samples.txt").read_text().splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert len(body) == 10 and all(line[:2] in ("ok", "--") for line in body)
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["final"]["grammatical"] <= 1.0


def test_cli_gan_bad_option(tmp_path, capsys):
    rc = main(
        [
            "gan",
            "--estimator",
            "rloo",
            "--estimator-option",
            "n_samples=1",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert rc == 2
    assert "n_samples" in capsys.readouterr().err


def test_two_processes_keep_the_discriminator_in_sync(tmp_path):
    from tests.test_distributed import run_ranks

    def scenario(rank, world):
        _, exp = _tiny("st-gumbel-softmax")
        cfg = TrainConfig(
            steps=3,
            batch_size=16,
            eval_every=0,
            log_every=0,
            ckpt_every=0,
            eval_splits=("samples",),
            final_splits=(),
            quiet=True,
        )
        fit(exp, cfg)
        return {
            k: v.numpy().copy()
            for k, v in exp.model.state_dict().items()
            if not k.endswith("_extra_state")
        }

    rank0, rank1 = run_ranks(scenario, tmp_path)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert (rank0[key] == rank1[key]).all(), key
