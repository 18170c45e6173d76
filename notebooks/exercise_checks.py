"""The checks of notebook 05 — imported by 05_exercises and 05_solutions, so both run the same code.

Each check tests *properties* that every correct answer has and wrong answers lack:

* statistical properties with a tolerance of 5 standard errors, never one exact random stream, so any
  correct use of randomness passes (each check seeds the generator once, for reproducible tests only);
* exact identities where they exist (the pathwise derivative of a reparameterised sample, the chain
  rule of entropy, a KL's gradient against finite differences of the same function);
* gradients that must reach μ and σ, so detached answers fail.

While a check runs, the `pini` functions that would answer the exercise raise (`pini_unavailable`):
an answer that calls `pini`'s own implementation fails. tests/test_exercises.py feeds every check
known wrong answers and asserts that each fails.
"""
from __future__ import annotations

import contextlib
import math
import statistics

import torch
import torch.nn.functional as F

import pini

# the pini functions that answer an exercise: unavailable while any check runs
ANSWERS_IN_PINI = [(pini.Gaussian, "sample"), (pini, "gaussian_kl"), (pini, "pini_objective"),
                   (pini, "pi_noise_information"), (pini, "build_prompts")]


@contextlib.contextmanager
def pini_unavailable():
    """Replace pini's answers with functions that raise, and restore them afterwards."""
    saved = [(owner, name, owner.__dict__[name]) for owner, name in ANSWERS_IN_PINI]

    def unavailable(*args, **kwargs):
        raise RuntimeError("pini's own implementation is unavailable while a check runs: write the answer yourself")

    for owner, name, _ in saved:
        setattr(owner, name, unavailable)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _close(estimate, exact, standard_error, what):
    """A statistical check: |estimate − exact| within 5 standard errors (false alarm ≈ 6e-7)."""
    estimate, exact, standard_error = (float(torch.as_tensor(v).detach()) for v in (estimate, exact, standard_error))
    if not abs(estimate - exact) <= 5 * standard_error + 1e-12:
        raise AssertionError(f"{what}: got {estimate:.5f}, expected {exact:.5f} (± {standard_error:.5f}, one standard error)")


# --- exercise 1: the reparameterised sample --------------------------------------------------

def check_1(reparameterised_sample):
    torch.manual_seed(1)
    with pini_unavailable():
        mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
        sigma = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64, requires_grad=True)
        K = 20_000
        eps = reparameterised_sample(mu, sigma, K)
        assert tuple(eps.shape) == (K, 3), f"shape {tuple(eps.shape)}, expected (K, *mu.shape) = {(K, 3)}"
        square = reparameterised_sample(torch.zeros(2, 4), torch.ones(2, 4), 5)
        assert tuple(square.shape) == (5, 2, 4), f"shape {tuple(square.shape)} for mu of shape (2, 4), K = 5"
        # the distribution: N(μ, σ²) in every coordinate
        for j in range(3):
            _close(eps[:, j].mean(), mu[j], sigma[j] / math.sqrt(K), f"sample mean of coordinate {j}")
            _close(eps[:, j].std(), sigma[j], sigma[j] / math.sqrt(2 * K), f"sample std of coordinate {j}")
        # independence: across coordinates and across the K draws (a shared or antithetic z fails)
        z = ((eps - mu) / sigma).detach()                                     # (K, 3), N(0, 1) if correct
        for i, j in [(0, 1), (0, 2), (1, 2)]:
            _close((z[:, i] * z[:, j]).mean(), 0.0, 1 / math.sqrt(K), f"correlation of coordinates {i} and {j}")
        _close((z[1:] * z[:-1]).mean(), 0.0, 1 / math.sqrt(3 * (K - 1)), "correlation of consecutive draws")
        _close((z[: K // 2] * z[K // 2:]).mean(), 0.0, 1 / math.sqrt(3 * K / 2), "correlation of the two halves of the draws")
        _close((z.abs().sum(1) - z.abs().sum(1).mean()).square().mean(), 3 * (1 - 2 / math.pi), 0.03,
               "variance of Σ_j |z_j| (coordinates drawn together?)")
        # K = 1 is the authors' default: one draw, the same shape and gradients
        one = reparameterised_sample(mu, sigma, 1)
        assert tuple(one.shape) == (1, 3), f"shape {tuple(one.shape)} for K = 1, expected (1, 3)"
        assert torch.isfinite(one).all(), "K = 1 gave a non-finite sample (standardising one draw divides by 0)"
        g_mu, g_sigma = torch.autograd.grad(one.sum(), [mu, sigma])
        torch.testing.assert_close(g_mu, torch.ones(3, dtype=torch.float64), msg="K = 1: ∂ε/∂μ must be 1")
        torch.testing.assert_close(g_sigma, ((one.detach() - mu.detach()) / sigma.detach())[0], msg="K = 1: ∂ε/∂σ must be z")
        fresh = reparameterised_sample(mu, sigma, K)
        assert not torch.equal(fresh.detach(), eps.detach()), "two calls gave the same samples: draw fresh noise"
        # the pathwise derivative: ∂ε_k/∂μ = 1 and ∂ε_k/∂σ = z_k = (ε_k − μ)/σ, whatever z_k was drawn
        w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        grad_mu, grad_sigma = torch.autograd.grad((eps * w).sum(), [mu, sigma], allow_unused=True)
        assert grad_mu is not None and grad_sigma is not None, \
            "μ or σ received no gradient: the sample must be a differentiable function of both"
        z = (eps.detach() - mu.detach()) / sigma.detach()
        torch.testing.assert_close(grad_mu, K * w, msg="∂/∂μ of Σ_k w·ε_k must be K·w")
        torch.testing.assert_close(grad_sigma, (w * z).sum(0), msg="∂/∂σ of Σ_k w·ε_k must be Σ_k w·z_k")
    print("exercise 1 correct")


# --- exercise 2: the noised token span -------------------------------------------------------

TEMPLATES = [("a photo of a", 16), ("a type of pet, a photo of a", 16), ("texture", 4),
             ("a centered satellite photo of", 8)]
NAMES = ["golden retriever", "cat", "hot air balloon"]  # first tokens differ


def check_2(noise_span, tokenizer):
    with pini_unavailable():
        for template, n_ctx in TEMPLATES:
            start, end = noise_span(tokenizer, template, n_ctx)
            prefix = " ".join(["X"] * n_ctx + [template])
            tokens = tokenizer([f"{prefix} {name}." for name in NAMES])  # (classes, context)
            where = f"template {template!r}, n_ctx {n_ctx}: span ({start}, {end})"
            assert start == 1, f"{where}: position 0 is the start-of-text token, which gets no noise"
            assert end - start == n_ctx + len(tokenizer.encode(template)), \
                f"{where}: the span must hold the {n_ctx} placeholders and every token of the template"
            assert (tokens[:, start:end] == tokens[:1, start:end]).all(), \
                f"{where}: the noised tokens must be the same for every class (no class-name token)"
            assert len(set(tokens[:, end].tolist())) == len(NAMES), \
                f"{where}: position `end` must be the first class-name token (different for each class)"
    print("exercise 2 correct")


# --- exercise 3: the bound's gap is the expected KL ------------------------------------------

def _entropy(p):
    return -(p * p.clamp_min(1e-300).log()).sum()


def check_3(entropy_terms):
    torch.manual_seed(3)
    with pini_unavailable():
        for trial in range(4):
            X, Y, E = 3, 4, 5
            joint = torch.distributions.Dirichlet(torch.ones(X * Y * E, dtype=torch.float64)).sample().view(X, Y, E)
            if trial == 3:  # a joint of PiNI's form, p(x, y) p(e | x): the noise does not see y
                p_xy = joint.sum(-1, keepdim=True)
                p_e_given_x = torch.distributions.Dirichlet(torch.ones(E, dtype=torch.float64)).sample((X,))
                joint = p_xy * p_e_given_x[:, None, :]
            log_q = torch.randn(X, Y, E, dtype=torch.float64).log_softmax(1)  # any classifier q(y | x, e)
            H, cross_entropy, kl = entropy_terms(joint, log_q)
            # chain rule: H(Y | X, E) = H(X, Y, E) − H(X, E)
            torch.testing.assert_close(H, _entropy(joint) - _entropy(joint.sum(1)), rtol=0, atol=1e-10,
                                       msg="H(Y|X,E) must equal H(X,Y,E) − H(X,E) (chain rule)")
            torch.testing.assert_close(cross_entropy, -(joint * log_q).sum(), rtol=0, atol=1e-10,
                                       msg="the cross-entropy is E[−log q(y | x, e)] under the joint")
            assert kl >= 0, "an expected KL is never negative"
            # the KL from its definition, row by row — not from the gap it is meant to explain
            p_xe = joint.sum(1)                                                     # (X, E)
            rows = joint / p_xe[:, None, :]                                         # p(y | x, e), (X, Y, E)
            kl_rows = (rows * (rows.clamp_min(1e-300).log() - log_q)).sum(1)       # KL(p(·|x,e) ‖ q(·|x,e)), (X, E)
            assert (kl_rows >= -1e-12).all()
            torch.testing.assert_close(kl, (p_xe * kl_rows).sum(), rtol=0, atol=1e-10,
                                       msg="E_{x,e}[KL(p(·|x,e) ‖ q(·|x,e))], weighted by p(x, e), from the KL's definition")
            torch.testing.assert_close(cross_entropy - H, kl, rtol=0, atol=1e-10, msg="gap ≠ E[KL]")
            posterior = (joint / joint.sum(1, keepdim=True)).log()
            H_true, ce_true, kl_true = entropy_terms(joint, posterior)
            torch.testing.assert_close(kl_true, torch.zeros((), dtype=torch.float64), rtol=0, atol=1e-10,
                                       msg="the KL must vanish when q is the true posterior p(y | x, e)")
            H_Y_given_X = _entropy(joint.sum(-1)) - _entropy(joint.sum((1, 2)))
            if trial == 3:
                torch.testing.assert_close(H, H_Y_given_X, rtol=0, atol=1e-10,
                                           msg="for a noise that does not see y, H(Y|X,E) must equal H(Y|X)")
            else:
                assert H <= H_Y_given_X + 1e-12, "conditioning on E cannot raise the entropy"
    print("exercise 3 correct")


# --- exercise 4: the KL to the prior, derived --------------------------------------------------

def check_4(kl_to_prior):
    torch.manual_seed(4)
    with pini_unavailable():
        for mu, sigma, s in [([0.3, -1.2], [0.5, 2.0], 1.0), ([2.0], [0.1], 0.5), ([0.0, 0.0, 1.0], [1.0, 3.0, 0.2], 2.0)]:
            mu = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
            sigma = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
            kl = kl_to_prior(mu, sigma, s)
            # the definition, by Monte Carlo: E_{ε~N(μ,σ²)}[log N(ε; μ, σ²) − log N(ε; 0, s²)], summed over dims
            z = torch.randn(400_000, len(mu), dtype=torch.float64)
            eps = mu.detach() + sigma.detach() * z
            log_ratio = (-0.5 * z**2 - sigma.detach().log()) - (-0.5 * (eps / s) ** 2 - math.log(s))
            samples = log_ratio.sum(-1)
            _close(kl, samples.mean(), samples.std() / math.sqrt(len(samples)), f"KL at μ={mu.tolist()}, σ={sigma.tolist()}, s={s}")
            # the gradient must be the gradient of the same function (a detached KL has none)
            grads = torch.autograd.grad(kl, [mu, sigma], allow_unused=True)
            assert all(g is not None for g in grads), "the KL must be differentiable in μ and σ (is it detached?)"
            h = 1e-6
            for param, grad in zip((mu, sigma), grads):
                for j in range(len(param)):
                    up, down = param.detach().clone(), param.detach().clone()
                    up[j] += h; down[j] -= h
                    args_up = (up, sigma.detach()) if param is mu else (mu.detach(), up)
                    args_down = (down, sigma.detach()) if param is mu else (mu.detach(), down)
                    fd = (kl_to_prior(*args_up, s) - kl_to_prior(*args_down, s)) / (2 * h)
                    assert abs(float(grad[j]) - float(fd)) < 1e-5, "autograd gradient ≠ finite differences"
        zero = kl_to_prior(torch.zeros(3, dtype=torch.float64), torch.full((3,), 0.7, dtype=torch.float64), 0.7)
        assert abs(float(zero)) < 1e-12, "KL(p ‖ p) must be 0"
    print("exercise 4 correct")


# --- exercise 5: σ* = 0 for noise that does not see x, found by gradient descent ---------------

W = torch.tensor([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])


def affine_toy(seed=0, n=100):
    """Notebook 1's task: three shifted clusters and a frozen linear classifier, logits = (x + ε) Wᵀ / 0.5."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n)
    x = (1.5 * W + torch.tensor([0.9, 0.9]))[labels] + 0.6 * torch.randn(len(labels), 2, generator=g)
    return x, labels, lambda inputs: inputs @ W.T / 0.5


def normalised_toy(seed=0, n=100):
    """Logits that are not affine in ε: the input is L2-normalised first, as PiNI's image feature is, and
    the classifier is overconfident (temperature 0.25 on overlapping clusters), logits = (x+ε)/‖x+ε‖ Wᵀ / 0.25."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n)
    x = (0.4 * W)[labels] + 0.6 * torch.randn(len(labels), 2, generator=g)
    return x, labels, lambda inputs: F.normalize(inputs, dim=-1) @ W.T / 0.25


_NORMALISED_REFERENCE = {}


def _fit_5(fit_noise, toy):
    x, y, logits_fn = toy
    with pini_unavailable():
        mu, sigma = fit_noise(x, y, logits_fn, sigma0=0.5)
    return torch.as_tensor(mu).detach().float(), torch.as_tensor(sigma).detach().float()


def check_5(fit_noise):
    torch.manual_seed(5)
    x, y, logits_fn = toy = affine_toy()
    mu, sigma = _fit_5(fit_noise, toy)
    before = F.cross_entropy(logits_fn(x), y)
    after = F.cross_entropy(logits_fn(x + mu), y)
    assert after < before - 0.15, f"μ barely moved the data: loss {before:.3f} → {after:.3f} at ε = μ"
    assert sigma.abs().max() < 0.15, f"σ = {sigma.tolist()}: for logits affine in ε it should fall towards 0 (from 0.5)"
    # σ must fall by learning, not start at 0: after 5 steps from σ0 = 0.5 it is still near 0.5 (an Adam step
    # moves it by about lr = 0.05, an SGD step by less)
    with pini_unavailable():
        _, early = fit_noise(x, y, logits_fn, sigma0=0.5, steps=5)
    early = torch.as_tensor(early).detach().abs()
    assert 0.2 < early.max() < 1.0, \
        f"σ = {early.tolist()} after 5 steps from σ0 = 0.5: σ must start at sigma0 and be learned (is it set to 0?)"
    # logits not affine in ε: Jensen no longer applies, but the noise does not see x, so σ* = 0 still holds
    # (the infimum argument). A biased estimate of E_ε[CE] rewards spread-out draws here and keeps σ large
    # (σ ≈ (1.7, 1.2) for CE of averaged logits, (1.5, 1.1) for log-mean-exp); the worked K = 8 Adam fit
    # reaches σ < 0.001 and μ*. Moving μ from 0 to μ* gains only 0.018 nats, hence the tight 0.01.
    x, y, logits_fn = toy = normalised_toy()
    mu_n, sigma_n = _fit_5(fit_noise, toy)
    if not _NORMALISED_REFERENCE:                # the toy is fixed: compute the reference once per session
        _NORMALISED_REFERENCE["μ*"] = reference_fit(x, y, logits_fn, beta=0.0)[0]
    mu_ref = _NORMALISED_REFERENCE["μ*"]
    assert sigma_n.abs().max() < 0.15, \
        (f"σ = {sigma_n.abs().tolist()} on the normalised toy (logits not affine in ε): noise that does not see x "
         f"is best deterministic, σ* = 0, for any logits. Is the loss an unbiased estimate of E_ε[CE]? The "
         f"cross-entropy of logits averaged over the K draws, or −log of the probability averaged over them "
         f"(log-mean-exp), is not: it rewards spread-out draws")
    after, best = F.cross_entropy(logits_fn(x + mu_n), y), F.cross_entropy(logits_fn(x + mu_ref), y)
    assert after < best + 0.01, \
        (f"normalised toy: loss {after:.4f} at ε = μ = {mu_n.tolist()}, but {best:.4f} at the minimiser "
         f"μ* = {mu_ref.tolist()} (σ* = 0): μ did not reach the minimum of E_ε[CE] — a biased estimate of it "
         f"(averaged logits, log-mean-exp) moves the minimiser")
    print(f"exercise 5 correct: affine toy μ = {mu.numpy().round(2)}, σ = {sigma.numpy().round(3)}; "
          f"normalised toy μ = {mu_n.numpy().round(3)} (μ* = {mu_ref.numpy().round(3)}), σ = {sigma_n.abs().numpy().round(3)}")


# --- exercise 6: score-function vs reparameterised gradients ----------------------------------

def _smooth(eps):  # E over N(μ, σ²) in closed form: μ² + σ² + sin μ · exp(−σ²/2)
    return eps**2 + torch.sin(eps)


def _smooth_grad(mu, sigma):
    return (2 * mu + math.cos(mu) * math.exp(-sigma**2 / 2),
            2 * sigma - sigma * math.sin(mu) * math.exp(-sigma**2 / 2))


def _step(eps):  # not differentiable: E = Φ(μ/σ)
    with torch.no_grad():
        return (eps > 0).to(eps.dtype)


def _step_grad(mu, sigma):
    density = math.exp(-(mu / sigma) ** 2 / 2) / math.sqrt(2 * math.pi)
    return density / sigma, -mu * density / sigma**2


def _estimates(estimator, f, mu, sigma, K, reps):
    out = torch.tensor([[float(g) for g in estimator(f, mu, sigma, K)] for _ in range(reps)], dtype=torch.float64)
    return out  # (reps, 2): ∂/∂μ, ∂/∂σ


def check_6(score_function_grad, reparameterised_grad):
    torch.manual_seed(6)
    mu, sigma, K, reps = 0.5, 0.3, 4, 1000   # a small K, as in training: a (K−1)/K bias shows
    with pini_unavailable():
        variances = {}
        for name, estimator, cases in [("score-function", score_function_grad, [(_smooth, _smooth_grad), (_step, _step_grad)]),
                                       ("reparameterised", reparameterised_grad, [(_smooth, _smooth_grad)])]:
            for f, exact in cases:
                draws = _estimates(estimator, f, mu, sigma, K, reps)
                for j, what in enumerate(("∂/∂μ", "∂/∂σ")):
                    _close(draws[:, j].mean(), exact(mu, sigma)[j], draws[:, j].std() / math.sqrt(reps),
                           f"{name} estimate of {what} E[{f.__name__.strip('_')}(ε)]")
                    assert draws[:, j].std() > 0, f"{name}: the estimate of {what} never varies — is it random?"
                if f is _smooth:
                    variances[name] = draws.var(0)
        assert (variances["score-function"] > variances["reparameterised"]).all(), \
            "for this smooth f the reparameterised estimator should have the smaller variance"
    print(f"exercise 6 correct: variance of one sample's term (∂/∂μ, ∂/∂σ), score-function "
          f"{(K * variances['score-function']).numpy().round(2)}, reparameterised {(K * variances['reparameterised']).numpy().round(2)}")


# --- exercise 7: the σ = 0 control and the β sweep --------------------------------------------

def reference_fit(x, y, logits_fn, beta, prior_std=1.0, nodes=12):
    """The minimiser (μ*, σ*) of E_ε[CE] + β KL(N(μ, σ²) ‖ N(0, s²)) for 2-D ε, the expectation by a
    Gauss–Hermite product rule (no sampling), found by L-BFGS: the reference of check 7."""
    t, w = (torch.tensor(a, dtype=torch.float32) for a in __import__("numpy").polynomial.hermite_e.hermegauss(nodes))
    w = w / w.sum()
    z = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)            # (n², 2)
    weights = (w[:, None] * w[None, :]).reshape(-1)
    mu = torch.zeros(2, requires_grad=True)
    log_sigma = torch.full((2,), math.log(0.5), requires_grad=True)
    optimizer = torch.optim.LBFGS([mu, log_sigma], max_iter=500, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        sigma = log_sigma.exp()
        logits = logits_fn(x.unsqueeze(0) + (mu + sigma * z).unsqueeze(1))   # (n², N, C)
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(z)), reduction="none").view(len(z), -1).mean(1)
        kl = (math.log(prior_std) - log_sigma + (sigma**2 + mu**2) / (2 * prior_std**2) - 0.5).sum()
        loss = (weights * ce).sum() + beta * kl
        loss.backward()
        return loss

    optimizer.step(objective)
    return mu.detach(), log_sigma.detach().exp()


def _check_results_7(results):
    """Exercise 7's own table must show what the proof and the prior predict."""
    assert isinstance(results, dict) and len(results) == 4, \
        "results: one entry per configuration — the σ = 0 control, β = 0, β = 0.1, β = 1 — in that order"
    rows = list(results.values())
    for row in rows:
        assert len(row["accuracy"]) == 3 and len(row["sigma"]) == 3, "3 seeds per configuration"
        assert all(0 <= a <= 100 for a in row["accuracy"]), "accuracy in %, between 0 and 100"
    control_row, plain, beta_small, beta_large = rows
    assert min(control_row["accuracy"]) > 90, "the σ = 0 control classifies this toy at about 97 % (accuracy in %)"
    assert max(control_row["sigma"]) == 0, "the σ = 0 control's σ must be exactly 0"
    assert max(plain["sigma"]) < 0.05, "with β = 0 on this affine toy σ must collapse (exercise 5's proof)"
    assert statistics.mean(plain["sigma"]) < statistics.mean(beta_small["sigma"]) < statistics.mean(beta_large["sigma"]), \
        "σ must grow with β: the prior's KL pulls it towards s = 1"
    assert all(abs(a - b) < 1.0 for a, b in zip(control_row["accuracy"], plain["accuracy"])), \
        "with σ collapsed, PiNI (β = 0) and the σ = 0 control should agree seed by seed"
    assert all(a > b for a, b in zip(control_row["accuracy"], beta_large["accuracy"])), \
        "β = 1 forces noise the objective does not want: below the control on every seed"


BETAS = (0.1, 1.0)
_REFERENCES = {}


def check_7(fit_noise, results):
    """fit_noise must match the quadrature reference for β > 0 (μ and σ); `results` is exercise 7's own
    table, {configuration: {"accuracy": [3 values, %], "sigma": [3 values]}}, and must show what the
    proof and the prior predict."""
    if results:                                  # read first: it costs nothing (an empty table fails at the end)
        _check_results_7(results)
    torch.manual_seed(7)
    x, y, logits_fn = affine_toy()
    with pini_unavailable():
        control = [fit_noise(x, y, logits_fn, sigma0=0.0, train_sigma=False) for _ in range(2)]
        for mu, sigma in control:
            assert torch.as_tensor(sigma).abs().max() == 0, "with train_sigma=False and σ0 = 0, σ must stay exactly 0"
            assert F.cross_entropy(logits_fn(x + torch.as_tensor(mu).detach()), y) < F.cross_entropy(logits_fn(x), y) - 0.15, \
                "the σ = 0 control must still learn μ"
        fitted = {beta: [torch.as_tensor(v).detach().float() for v in fit_noise(x, y, logits_fn, sigma0=0.5, beta=beta)]
                  for beta in BETAS}
    if not _REFERENCES:                          # the toy is fixed: compute the references once per session
        _REFERENCES.update({beta: reference_fit(x, y, logits_fn, beta) for beta in BETAS})
    references = _REFERENCES
    for beta, (mu, sigma) in fitted.items():
        mu_ref, sigma_ref = references[beta]     # K = 8 Adam steps land within ~0.06 of it; the slips above miss by > 0.2
        assert (mu - mu_ref).abs().max() < 0.1 and (sigma.abs() - sigma_ref).abs().max() < 0.1, \
            (f"β = {beta}: μ = {mu.tolist()}, σ = {sigma.abs().tolist()}; the minimiser of E[CE] + β KL is "
             f"μ* = {mu_ref.tolist()}, σ* = {sigma_ref.tolist()} (is the KL's μ detached, σ² passed as σ, or the KL scaled?)")
    _check_results_7(results)
    print(f"exercise 7 correct: σ for β = 0.1, 1: {[round(float(v[1].abs().mean()), 3) for v in fitted.values()]} "
          f"(reference {[round(float(r[1].mean()), 3) for r in references.values()]})")
