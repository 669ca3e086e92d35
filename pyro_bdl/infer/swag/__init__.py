"""SWAG and Multi-SWAG: Gaussian posteriors from the SGD trajectory, and mixtures over basins.

``method="swag"`` (Maddox et al. 2019) runs SGD with momentum on the per-data-point MAP
objective of the tempered model,

    L(θ) = −(1/N) [log p̃(D_batch, w(θ)) + log|det ∂w/∂θ|]
         = (1/T)·(mean minibatch NLL) + s_prior·(−log p(w))/N,

with log p̃ = [`log_joint`][pyro_bdl.BayesianModel] through
`Objective` (N/B scaling and temperature are the core's).
For a Gaussian prior N(0, σ²) the prior term is weight decay with coefficient 1/(σ²N) — the
prior precision over N — so the SGD fixed point is the mode of the tempered posterior.

**Temperature.** SGD steps on T·L (temperature-free units: under posterior tempering T·L is the
T = 1 objective, whose mode is p_T's), so ``lr`` means the same at every T and a cold run does
not diverge; the collected covariance is multiplied by T (the guide's ``scale`` is
``scale·T``). For a Gaussian approximation around the mode this is exactly p_T's covariance
under posterior tempering (and (N·A_T)⁻¹ under likelihood tempering). The price: the SWA mean
averages iterates that spread like the T = 1 posterior, so its error in units of p_T's sd grows
like 1/√T for a given run length.

**Schedule.** ``lr`` for the first half of ``swa_start`` epochs, a linear decay to ``lr/5``
(or a numeric ``swa_lr``) until 90% of ``swa_start`` (Maddox et al.). ``lr="auto"`` (default) is
min(0.05, (1 + β)/λ_max) with λ_max the largest eigenvalue of the per-data-point Hessian at the run's start
(`exploration_lr`): heavy ball diverges on a quadratic once lr·λ ≥ 2(1 + β), so Maddox et al.'s 0.05 —
right for classifiers, whose λ_max is ≈ 1 — would diverge on a regression with a Gaussian likelihood of
scale 0.1 (λ_max ∝ 1/σ²: 1.4·10³ on the gap data). Then:

* ``swa_lr="auto"`` (default): per-coordinate rates ε_k = 2(1−β)/(N·E[g_k²]) from the measured
  minibatch gradient noise (Mandt et al. 2017, Thm. 2; `GradientNoise`), on minibatches drawn *with
  replacement*, a snapshot every max(N/(2B), 1/(1−β)) steps. Three steps keep the theory's premises:

  1. the rates are capped at κ, the largest cap under which the preconditioned heavy ball is within
     2× of its continuous-time limit, λ_max(ε^½Aε^½) = 1 + β (`stability_cap`; A from Hessian-vector
     products), instead of a fixed multiple of ``lr``;
  2. a burn-in (`_start_auto`) halves all rates by a factor f until the linear (OU) picture holds:
     its excess loss is not above the OU prediction tr(εV)/(4(1−β)) (`stationary_excess`) by more
     than 3 standard errors; where no rate is at the cap (Fisher ≈ Hessian), the burn-in then runs on
     until the start's offset, d_i² = N·ḡ_i²/(B·V_ii) posterior variances from the mean gradient ḡ
     measured there, has relaxed (τ_i = (1−β)/(ε_i·B·V_ii) steps at the rates used) below half the
     standard error of a K-snapshot covariance, and the noise is re-measured at the relaxed iterate
     (`relaxation_steps`; sweep config 13: 5.8× the exact variance before, 0.8× after), for at most the
     collection's own length (a start far from any mode, where τ_i → ∞, warns and names the fixes);
  3. the collected covariance is multiplied by c = max(1/f, min_k ε_k*/ε_k)
     (`GradientNoise.covariance_scale`): the stationary covariance solves a Lyapunov equation linear
     in a global rate scale, so the halvings keep the iterate local without shrinking the spread; a c
     above `EXTRAPOLATION_WARNING` (10³; measured 0.25–15 near modes, 10⁷–10¹⁹⁰ from far starts) warns;
  4. each direction of the low-rank part is then shrunk, never widened (`equipartition_directions`): the
     variance λ along v is cut to 1/(vᵀAv) where λ·vᵀAv > 1, with vᵀAv the secant curvature at ±√3 sd
     (E_p[(v·δ)(v·∇U)] = 1 for the target; Wenzel et al. 2020). Read on a slice through the mean, this is
     biased narrow off the posterior's eigenvectors; it is kept as a guard against over-spread members
     (the function's docs give the reference measurements).

  **Small generalised linear models** (``preconditioner="auto"``: a ``Linear`` network of ≤ 256 parameters
  without hyperpriors; `pyro_bdl.infer.swag.whitening`). Diagonal rates solve εAΣ + ΣAε = εVε for
  Σ = (NA)⁻¹ only when V is diagonal; a rotated, ill-conditioned design breaks that (κ = 10³: the weak
  directions spread 0.00–0.03× the posterior). There the rates act in coordinates φ that whiten the noise,
  θ = θ₀ + Lφ with LᵀVL = I, read twice: at θ₀ and again on the relaxed, moving iterate, from every data
  point's gradient (V = Cov_i(g_i)/B exactly), so the rates are Mandt et al.'s full preconditioner
  2(1 − β)/N·V⁻¹, exact for any A. Their moving-iterate share is removed (E[g²] ≈ V·(1 + B/N)), the burn-in
  relaxes and re-reads the offset until it is below the collection's noise, the default run collects
  max(30P, 200) snapshots (`resolve_length`: the Marchenko–Pastur edge of a full-rank sample covariance)
  and ``variant="auto"`` takes their sample covariance (``"full"``), not ½(diag + low rank), which halves
  every correlation. Step 4 is skipped there. BLR sweep, T = 1 and 0.01: 18/20 configurations within the
  bar (6/20 before); notes/issue-13-swag-dense.md.

  On linear regression the SWAG covariance is then within 2× of the exact (tempered) posterior
  (with a fixed rate and reshuffled epochs it is 0.1–0.3×); on digits SWAG's predictive mutual
  information is 0.11–0.29 of SGHMC's at T = 1 (`benchmarks/bench_swag.py --digits-mi`; 0.26–0.85
  before step 4, at a worse NLL on every setting), and Multi-SWAG's NLL is within 0.003–0.023 of a
  deep ensemble's without augmentation and below it with augmentation. With data
  augmentation the noise is measured on paired augmentations of the same batches; the burn-in check
  and c count only the data's sampling noise, not the augmentation's (`GradientNoise`). The
  run's c is ``info["covariance_scale"]`` and the direction factors ``info["direction_scales"]``.
  A collection whose loss leaves the burn-in's bound restarts from where it began at half the rates,
  its snapshots dropped (``info["collection_restarts"]``; `SWAGRule.restart_collection`; a warning where
  fewer than 10 are left), and the burn-in's relaxation keeps the trial's test. A divergence
  during the collection, or `STABILITY_HALVINGS` halvings in all (a start far from a mode), raises
  `DivergenceError` naming ``warmup``, ``init`` and a numeric ``swa_lr`` (`far_start_advice`); one during
  the exploration backs its lr off.
* a number: constant ``swa_lr`` on reshuffled epochs, a snapshot after every epoch (the paper).

**Starting point.** Maddox et al. (2019) start SWAG's collection from a pretrained solution; here the
exploration (the first ``warmup`` epochs of the schedule above) is that pretraining, and ``init=<posterior>``
starts from a fitted one instead (a `fit(method="map")` solution; for Multi-SWAG a deep ensemble, member m from
chain m, Wilson & Izmailov 2020), with ``warmup=0`` to collect from the first epoch. What the start buys is the
SWA mean's *transient*, not its Monte-Carlo error. Near a mode, SGD at rates ε is an OU process whose time
average over L steps has covariance ≈ V/(a²L) along a direction of curvature a and minibatch-gradient
variance V, whatever ε (the stationary spread εV/(2a) times the 2/(εa)-step correlation time, over L); with
Fisher ≈ Hessian, V ≈ a/B, so the SWA mean's error is ≈ (NA)⁻¹·N/(BL) = Σ₁/E_c, the T = 1 posterior's
covariance over the E_c collection epochs (0.1·Σ₁ at 10 epochs; in p_T's units 1/(T·E_c)). Where the
collection starts off the mode, the mean also carries the start's relaxation, which decays like τ/L only
(τ = 1/(εa), long along the weakly curved directions the prior alone holds). On digits without augmentation
(`benchmarks/bench_reference.py --start`, `notes/issue-13-multiswag-nll.md`) the second term is the one that
shows: collecting from the basin's mode, the SWA mean after 10 epochs predicts within 0.000–0.007 nats of the
mode (40 epochs: within 0.002), while from the default exploration's end point it is 0.03 nats worse than the
basin's mode and improves steadily with collection length. Neither optimiser reaches the mode in 40 epochs (Adam's deep-
ensemble members are 0.02 above it too), and starting from an Adam ensemble of the same epochs did not help
consistently (better on digits 500, worse on 300 and 1000), so the default stays the SGD exploration. With a
longer budget the ensemble reaches its modes (NLL 0.139 → 0.118 at 160 epochs on digits 500) while Multi-SWAG's
predictive nears a NUTS reference's (total variation 0.06 → 0.045) at an NLL of 0.14–0.15, between the modes'
0.115 and the posterior's own 0.165.

**Default length.** Hence ``epochs=None`` runs at least `pyro_bdl.infer.options.DEFAULT_MIN_STEPS` (4000) SGD steps:
60 epochs, or more on data with fewer than 67 batches per epoch (`pyro_bdl.infer.options.default_epochs`; warm-up
3/4 of them), because SGD converges per step, not per pass. Against full-batch NUTS on digits (300 images 64-16-10
and 500 images 64-32-10; T = 1 and 0.1; seeds 0 and 1; `notes/issue-13-lead12.md`) the step-based default lowered
the total variation to the reference in 12 of 12 (method, cell, seed) cases, from 0.059–0.093 to 0.045–0.067 for
SWAG and from 0.047–0.083 to 0.041–0.058 for Multi-SWAG at T = 1, and raised SWAG's mutual information on 300 images
from 0.05–0.06 to 0.12–0.22 (NUTS 0.47).

``method="multiswag"`` (Wilson & Izmailov 2020) runs M independent SWAG fits from fresh
initialisations and data orders (member m: seed ``spawn_seeds(seed, M)[m]``) and returns their
equal-weight mixture ([`MixturePosterior`][pyro_bdl.MixturePosterior]).

**Engine.** Every run is a step rule on the one driver (`pyro_bdl.infer.driver.drive`): `SWAGRule`
steps the flat θ of `pyro_bdl.model.potential.Objective` (the compiled potential), counts its steps
and collects the SWAG moments in its own state at epoch ends (numeric ``swa_lr``) or every
``snapshot_every`` steps (auto); the driver owns minibatching, divergence checks without a host
synchronisation per step (the auto collection still reads each step's loss for its instability guard),
progress, and the checkpoint. With ``swa_lr="auto"`` the driver's batches come from `_Batches`:
i.i.d. minibatches from ``swa_start`` on, each run's noise measurement, stability cap and burn-in
drawn from its own generator just before (exactly the order of random draws of one run). Multi-SWAG
members are stacked (θ ``(M, P)``, one vmapped forward and one backward per step, `MAPRule.value_and_grad`):
exploration and collection run stacked, with per-member rates, caps, burn-ins and guards; the burn-in
itself, the stability cap's Hessian-vector products and step 4's gradients run one member at a time.
A stacked member equals the member fitted alone with its seed to float rounding (exactly, for
``stack=False`` or a single SWAG fit, which reproduces the loop before the driver bit for bit).

With BatchNorm, SGD uses batch statistics and every posterior draw gets its own statistics,
recomputed by one pass over the training inputs (`pyro_bdl.batchnorm`); networks
without BatchNorm skip this.

Runs are checkpointed by the driver after every epoch (``checkpoint=path``) and resumed bit for bit:
the rule's state (iterates, momenta, SWAG moments, noise estimates and rates), every generator and
the global RNG are saved.
"""
# The package's modules: `noise` (the auto rates, steps 1–4), `rule` (the step rule on the driver, `train_swag`),
# `fit` (the registered methods). Every name importable from ``pyro_bdl.infer.swag`` before the split still is.
from ...guides.swag import SWAG  # noqa: F401
from ...posterior.swag import SWAGPosterior  # noqa: F401
from .fit import _check_options, _initial_values, fit_multiswag, fit_swag  # noqa: F401
from .noise import (AUTO_CAP, EQUIPARTITION_POINTS, MIN_NOISE_BATCHES, GradientNoise, _start_auto,  # noqa: F401
                    equipartition_directions, relaxation_steps, stability_cap)
from .rule import CHECKPOINT_KIND, SWAGRule, swag_learning_rate, train_runs, train_swag  # noqa: F401
