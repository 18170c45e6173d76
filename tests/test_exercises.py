"""The checks of notebook 05 fail on known wrong answers and pass on the worked solutions.

The correct answers are the `# answer N` cells of notebooks/05_solutions.ipynb, executed here; each
wrong answer is one small, realistic mistake (a detached σ, a detached KL, an off-by-one token span,
a biased estimator, calling pini's own implementation, ...).
"""
import math
import sys
from pathlib import Path

import nbformat
import open_clip
import pytest
import torch
import torch.nn.functional as F

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))
import exercise_checks as checks  # noqa: E402
import pini  # noqa: E402

TOKENIZER = open_clip.get_tokenizer("ViT-B-16")


@pytest.fixture(scope="module")
def solutions():
    """The functions defined by the answer cells of 05_solutions (not the exercise-7 run)."""
    namespace = {"torch": torch, "F": F, "math": math, "pini": pini, "checks": checks}
    for cell in nbformat.read(NOTEBOOKS / "05_solutions.ipynb", as_version=4).cells:
        if cell.cell_type == "code" and cell.source.startswith("# answer") and not cell.source.startswith("# answer 7"):
            exec(cell.source, namespace)
    return namespace


def exercise_7_results(control=(96.9, 97.4, 96.3), plain=(96.9, 97.4, 96.3), beta_small=(96.0, 96.5, 94.7),
                       beta_large=(88.0, 90.0, 88.5), sigmas=((0.0,) * 3, (0.0,) * 3, (0.42,) * 3, (0.81,) * 3)):
    rows = [control, plain, beta_small, beta_large]
    names = ["σ = 0 control", "PiNI, β = 0", "β = 0.1", "β = 1"]
    return {n: {"accuracy": list(a), "sigma": list(s)} for n, a, s in zip(names, rows, sigmas)}


def run_check(n, answers):
    calls = {1: lambda: checks.check_1(answers["reparameterised_sample"]),
             2: lambda: checks.check_2(answers["noise_span"], TOKENIZER),
             3: lambda: checks.check_3(answers["entropy_terms"]),
             4: lambda: checks.check_4(answers["kl_to_prior"]),
             5: lambda: checks.check_5(answers["fit_noise"]),
             6: lambda: checks.check_6(answers["score_function_grad"], answers["reparameterised_grad"]),
             7: lambda: checks.check_7(answers["fit_noise"], answers.get("results", exercise_7_results()))}
    calls[n]()


@pytest.mark.parametrize("n", range(1, 8))
def test_the_worked_solution_passes(n, solutions):
    run_check(n, solutions)


# --- the wrong answers, one mistake each ------------------------------------------------------

def sample_sigma_detached(mu, sigma, K):
    return mu + sigma.detach() * torch.randn(K, *mu.shape, dtype=mu.dtype)


def sample_product_detached(mu, sigma, K):
    return mu + (sigma * torch.randn(K, *mu.shape, dtype=mu.dtype)).detach()


def sample_mu_detached(mu, sigma, K):
    return mu.detach() + sigma * torch.randn(K, *mu.shape, dtype=mu.dtype)


def sample_by_pini(mu, sigma, K):
    return pini.Gaussian(mu, sigma).sample(K)


def sample_variance_for_std(mu, sigma, K):
    return mu + sigma**2 * torch.randn(K, *mu.shape, dtype=mu.dtype)


def sample_uniform(mu, sigma, K):
    return mu + sigma * torch.rand(K, *mu.shape, dtype=mu.dtype)


def sample_one_z_for_all(mu, sigma, K):
    return mu + sigma * torch.randn(1, *mu.shape, dtype=mu.dtype).expand(K, *mu.shape)


def sample_reseeded(mu, sigma, K):
    torch.manual_seed(0)
    return mu + sigma * torch.randn(K, *mu.shape, dtype=mu.dtype)


def sample_one_z_per_draw(mu, sigma, K):          # not independent across coordinates
    return mu + sigma * torch.randn(K, 1, dtype=mu.dtype)


def sample_antithetic(mu, sigma, K):              # z and −z: not independent across the K draws
    z = torch.randn((K + 1) // 2, *mu.shape, dtype=mu.dtype)
    return mu + sigma * torch.cat([z, -z])[:K]


def sample_sorted(mu, sigma, K):                  # sorted draws: dependent across K
    return mu + sigma * torch.randn(K, *mu.shape, dtype=mu.dtype).sort(0).values


def sample_standardised(mu, sigma, K):            # z standardised over the draws: NaN at K = 1
    z = torch.randn(K, *mu.shape, dtype=mu.dtype)
    return mu + sigma * (z - z.mean(0)) / z.std(0)


def sample_squeezed(mu, sigma, K):                # drops the K axis when K = 1
    return mu + sigma * torch.randn(K, *mu.shape, dtype=mu.dtype).squeeze(0)


def span(offset_start=0, offset_end=0):
    def noise_span(tokenizer, template, n_ctx=16):
        end = int(tokenizer([" ".join(["X"] * n_ctx + [template])])[0].argmax())
        return 1 + offset_start, end + offset_end
    return noise_span


def span_by_pini(tokenizer, template, n_ctx=16):
    prompts = pini.build_prompts(tokenizer, ["a"], template, n_ctx)
    return prompts.noise_start, prompts.noise_end


def entropy_terms_posterior_hard_coded(joint, log_q):
    """p(y | x, e) replaced by p(y | x): true only when the noise does not see y."""
    p_xy = joint.sum(-1, keepdim=True)
    log_p_y_given_x = (p_xy / p_xy.sum(1, keepdim=True)).log()
    H = -(joint * log_p_y_given_x).sum()
    cross_entropy = -(joint * log_q).sum()
    return H, cross_entropy, (joint * (log_p_y_given_x - log_q)).sum()


def entropy_terms_unweighted_kl(joint, log_q, solutions=None):
    p_xe = joint.sum(1, keepdim=True)
    posterior = joint / p_xe
    H = -(joint * posterior.log()).sum()
    kl = (posterior * (posterior.log() - log_q)).sum(1).mean()  # forgets the weights p(x, e)
    return H, -(joint * log_q).sum(), kl


def entropy_terms_kl_as_gap_to_H_Y_given_X(joint, log_q):   # KL := the loss minus H(Y | X)
    p_xe = joint.sum(1, keepdim=True)
    H = -(joint * (joint / p_xe).log()).sum()
    cross_entropy = -(joint * log_q).sum()
    p_xy = joint.sum(-1)
    H_Y_given_X = -(p_xy * (p_xy / p_xy.sum(1, keepdim=True)).log()).sum()
    return H, cross_entropy, cross_entropy - H_Y_given_X


def entropy_terms_kl_as_gap_to_H_Y(joint, log_q):            # KL := the loss minus H(Y)
    p_xe = joint.sum(1, keepdim=True)
    H = -(joint * (joint / p_xe).log()).sum()
    cross_entropy = -(joint * log_q).sum()
    p_y = joint.sum((0, 2))
    return H, cross_entropy, cross_entropy + (p_y * p_y.log()).sum()


def kl_detached(mu, sigma, s):
    return (math.log(s) - sigma.log() + (sigma**2 + mu**2) / (2 * s**2) - 0.5).sum().detach()


def kl_missing_half(mu, sigma, s):
    return (math.log(s) - sigma.log() + (sigma**2 + mu**2) / (2 * s**2)).sum()


def kl_sigma_for_variance(mu, sigma, s):
    return (math.log(s) - sigma.log() + (sigma + mu**2) / (2 * s**2) - 0.5).sum()


def kl_by_pini(mu, sigma, s):
    return pini.gaussian_kl(pini.Gaussian(mu, sigma), s)


def fit_noise_factory(sample, kl=None, ignore_beta=False, train_mu=True, prior_term=None, estimator=None):
    """The worked fit_noise with one part swapped for a wrong one."""
    def fit_noise(x, y, logits_fn, sigma0=0.5, beta=0.0, prior_std=1.0, train_sigma=True, K=8, steps=300, lr=0.05):
        mu = torch.zeros(x.shape[-1], requires_grad=True)
        sigma = torch.full((x.shape[-1],), float(sigma0), requires_grad=True)
        optimizer = torch.optim.Adam([mu, sigma] if train_mu else [sigma], lr=lr)
        for _ in range(steps):
            eps = sample(mu, sigma.abs(), K)
            logits = logits_fn(x.unsqueeze(0) + eps.unsqueeze(1))                       # (K, N, C)
            if estimator is None:
                loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(K))
            else:
                loss = estimator(logits, y)
            if beta and not ignore_beta:
                if prior_term is not None:
                    loss = loss + beta * prior_term(kl, mu, sigma.abs().clamp_min(1e-8), prior_std, len(x))
                else:
                    loss = loss + beta * kl(mu, sigma.abs().clamp_min(1e-8), prior_std)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        return mu.detach(), sigma.detach().abs()
    return fit_noise


# biased estimators of E_ε[CE(ℓ(x + ε), y)] from K draws, logits (K, N, C): each moves σ on check 5's normalised toy

def estimate_by_averaged_logits(logits, y):           # CE(E[ℓ]) in place of E[CE(ℓ)]
    return F.cross_entropy(logits.mean(0), y)


def estimate_by_log_mean_exp(logits, y):              # −log (1/K) Σ_k q(y | x + ε_k): the log outside the average
    log_q = logits.log_softmax(-1).gather(-1, y.expand(len(logits), -1).unsqueeze(-1)).squeeze(-1)   # (K, N)
    return -(torch.logsumexp(log_q, 0) - math.log(len(logits))).mean()


def estimate_by_averaged_log_probabilities(logits, y):   # mean log q, then F.cross_entropy normalises it again
    return F.cross_entropy(logits.log_softmax(-1).mean(0), y)


BIASED_ESTIMATORS = {"CE of averaged logits": estimate_by_averaged_logits, "log-mean-exp": estimate_by_log_mean_exp,
                     "CE of averaged log-probabilities": estimate_by_averaged_log_probabilities}


def ignores_the_control(fit_noise):
    def fit(x, y, logits_fn, sigma0=0.5, train_sigma=True, **kwargs):
        return fit_noise(x, y, logits_fn, **kwargs)  # always learns σ from 0.5
    return fit


def score_function_wrong_factor(f, mu, sigma, K):
    z = torch.randn(K, dtype=torch.float64)
    values = f(mu + sigma * z).detach()
    return (values * z).mean(), (values * (z**2 - 1)).mean()  # forgot the 1/σ of the scores


def score_function_is_reparameterised(f, mu, sigma, K, solutions=None):
    m = torch.tensor(float(mu), dtype=torch.float64, requires_grad=True)
    s = torch.tensor(float(sigma), dtype=torch.float64, requires_grad=True)
    out = f(m + s * torch.randn(K, dtype=torch.float64)).mean()
    if not out.requires_grad:  # a step function: no gradient, a "zero" estimate
        return torch.zeros(()), torch.zeros(())
    return torch.autograd.grad(out, [m, s])


def score_function_leave_in_baseline(f, mu, sigma, K):   # baseline includes f(ε_k) itself: biased by (K−1)/K
    z = torch.randn(K, dtype=torch.float64)
    values = f(mu + sigma * z).detach()
    centred = values - values.mean()
    return (centred * z / sigma).mean(), (centred * (z**2 - 1) / sigma).mean()


def score_function_mean_sample(f, mu, sigma, K):         # f at the averaged sample: E f(ε̄) ≠ E f(ε)
    z = torch.randn(K, dtype=torch.float64)
    zbar = z.mean() * math.sqrt(K)                         # a standard normal, but one value for all K
    value = f(mu + sigma * z.mean()).detach()
    return value * zbar / sigma, value * (zbar**2 - 1) / sigma


def reparameterised_at_mean_sample(f, mu, sigma, K):     # ∇ f(mean of the K samples): biased
    m = torch.tensor(float(mu), dtype=torch.float64, requires_grad=True)
    s = torch.tensor(float(sigma), dtype=torch.float64, requires_grad=True)
    return torch.autograd.grad(f(m + s * torch.randn(K, dtype=torch.float64).mean()), [m, s])


def reparameterised_sigma_detached(f, mu, sigma, K):
    m = torch.tensor(float(mu), dtype=torch.float64, requires_grad=True)
    z = torch.randn(K, dtype=torch.float64)
    return torch.autograd.grad(f(m + sigma * z).mean(), [m])[0], torch.zeros(())


def reparameterised_by_pini(f, mu, sigma, K):
    m = torch.tensor(float(mu), dtype=torch.float64, requires_grad=True)
    s = torch.tensor(float(sigma), dtype=torch.float64, requires_grad=True)
    return torch.autograd.grad(f(pini.Gaussian(m, s).sample(K)).mean(), [m, s])


WRONG = {
    1: {"σ detached": sample_sigma_detached, "σ·z detached": sample_product_detached, "μ detached": sample_mu_detached,
        "calls pini": sample_by_pini, "σ² for σ": sample_variance_for_std, "uniform z": sample_uniform,
        "one z for all K": sample_one_z_for_all, "reseeds": sample_reseeded,
        "one z shared by the coordinates": sample_one_z_per_draw, "antithetic draws": sample_antithetic,
        "sorted draws": sample_sorted, "standardised z (breaks at K = 1)": sample_standardised,
        "K axis squeezed (breaks at K = 1)": sample_squeezed},
    2: {"includes SOS": span(offset_start=-1), "one token into the class name": span(offset_end=1),
        "misses the last template token": span(offset_end=-1), "calls pini": span_by_pini},
    3: {"posterior hard-coded to p(y|x)": entropy_terms_posterior_hard_coded, "KL unweighted": entropy_terms_unweighted_kl,
        "KL := loss − H(Y|X)": entropy_terms_kl_as_gap_to_H_Y_given_X, "KL := loss − H(Y)": entropy_terms_kl_as_gap_to_H_Y},
    4: {"detached KL": kl_detached, "missing −1/2": kl_missing_half, "σ for σ²": kl_sigma_for_variance,
        "calls pini": kl_by_pini},
    6: {"score without 1/σ": score_function_wrong_factor, "score-function via f's gradient": score_function_is_reparameterised,
        "reparameterised, σ detached": reparameterised_sigma_detached, "reparameterised via pini": reparameterised_by_pini,
        "score, leave-in baseline": score_function_leave_in_baseline, "score at the mean sample": score_function_mean_sample,
        "reparameterised at the mean sample": reparameterised_at_mean_sample},
}
CASES = [(n, name) for n, wrongs in WRONG.items() for name in wrongs]

ANSWER_NAMES = {1: ["reparameterised_sample"], 2: ["noise_span"], 3: ["entropy_terms"], 4: ["kl_to_prior"]}


@pytest.mark.parametrize("n, name", CASES, ids=[f"{n}-{name}" for n, name in CASES])
def test_each_check_fails_a_wrong_answer(n, name, solutions):
    answers = dict(solutions)
    wrong = WRONG[n][name]
    if n == 6:  # one of the two estimators is wrong, the other is the worked one
        key = "score_function_grad" if name.startswith("score") else "reparameterised_grad"
        answers[key] = wrong
    else:
        answers[ANSWER_NAMES[n][0]] = wrong
    with pytest.raises((AssertionError, RuntimeError)):
        run_check(n, answers)


def test_exercise_5_and_7_fail_wrong_training(solutions):
    right_sample, right_kl = solutions["reparameterised_sample"], solutions["kl_to_prior"]
    wrong_fits = {
        5: [fit_noise_factory(sample_sigma_detached, right_kl),            # σ never learns: stays at 0.5
            fit_noise_factory(right_sample, right_kl, train_mu=False),      # μ never learns
            fit_noise_factory(sample_by_pini, right_kl)],                   # pini's sampler
        7: [fit_noise_factory(right_sample, kl_detached),                   # the KL has no gradient: β does nothing
            fit_noise_factory(right_sample, right_kl, ignore_beta=True),    # β ignored
            ignores_the_control(solutions["fit_noise"]),                    # σ0 and train_sigma ignored
            # the prior KL with μ detached, with the variance passed as the std, scaled by the number of examples
            fit_noise_factory(right_sample, right_kl, prior_term=lambda kl, mu, s, p, n: kl(mu.detach(), s, p)),
            fit_noise_factory(right_sample, right_kl, prior_term=lambda kl, mu, s, p, n: kl(torch.zeros_like(mu), s, p)),
            fit_noise_factory(right_sample, right_kl, prior_term=lambda kl, mu, s, p, n: kl(mu, s**2, p)),
            fit_noise_factory(right_sample, right_kl, prior_term=lambda kl, mu, s, p, n: kl(mu, s.sqrt(), p)),
            fit_noise_factory(right_sample, right_kl, prior_term=lambda kl, mu, s, p, n: n * kl(mu, s, p)),
            fit_noise_factory(right_sample, right_kl, prior_term=lambda kl, mu, s, p, n: kl(mu, s, p) / n)],
    }
    for n, fits in wrong_fits.items():
        for fit in fits:
            with pytest.raises((AssertionError, RuntimeError)):
                run_check(n, dict(solutions, fit_noise=fit))


@pytest.mark.parametrize("name", BIASED_ESTIMATORS)
def test_exercise_5_fails_a_biased_estimator(name, solutions):
    """On the affine toy these still reach σ ≈ 0; on the normalised toy they keep σ > 1."""
    fit = fit_noise_factory(solutions["reparameterised_sample"], estimator=BIASED_ESTIMATORS[name])
    with pytest.raises(AssertionError, match="normalised toy"):
        run_check(5, dict(solutions, fit_noise=fit))


def test_exercise_5_fails_an_answer_without_noise(solutions):
    """μ learned deterministically and σ returned as 0: every σ < 0.15 test passes, but σ was never learned."""
    def no_noise(x, y, logits_fn, sigma0=0.5, K=8, steps=300, lr=0.05, **kwargs):
        mu = torch.zeros(x.shape[-1], requires_grad=True)
        optimizer = torch.optim.Adam([mu], lr=lr)
        for _ in range(steps):
            loss = F.cross_entropy(logits_fn(x + mu), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        return mu.detach(), torch.zeros(x.shape[-1])
    with pytest.raises(AssertionError, match="after 5 steps"):
        run_check(5, dict(solutions, fit_noise=no_noise))


def test_pini_is_restored_after_a_check(solutions):
    before = (pini.Gaussian.sample, pini.gaussian_kl, pini.build_prompts)
    with pytest.raises(AssertionError):
        run_check(4, dict(solutions, kl_to_prior=kl_missing_half))
    assert (pini.Gaussian.sample, pini.gaussian_kl, pini.build_prompts) == before
    assert pini.Gaussian(torch.zeros(2), torch.ones(2)).sample(3).shape == (3, 2)


# --- exercise 7's own results: the check reads them -------------------------------------------

WRONG_RESULTS = {
    "two seeds only": exercise_7_results(control=(96.9, 97.4)),
    "β = 0 did not collapse σ": exercise_7_results(sigmas=((0.0,) * 3, (0.3,) * 3, (0.42,) * 3, (0.81,) * 3)),
    "σ falls with β": exercise_7_results(sigmas=((0.0,) * 3, (0.0,) * 3, (0.81,) * 3, (0.42,) * 3)),
    "accuracy as a fraction": exercise_7_results(beta_large=(0.88, 0.90, 0.885), control=(0.97, 0.97, 0.96),
                                                 plain=(0.97, 0.97, 0.96), beta_small=(0.96, 0.96, 0.95)),
    "β = 1 not below the control": exercise_7_results(beta_large=(97.0, 97.5, 96.0)),
    "a configuration missing": {k: v for k, v in list(exercise_7_results().items())[:3]},
}


@pytest.mark.parametrize("name", WRONG_RESULTS)
def test_check_7_reads_exercise_7_results(name, solutions):
    with pytest.raises(AssertionError):
        checks.check_7(solutions["fit_noise"], WRONG_RESULTS[name])
