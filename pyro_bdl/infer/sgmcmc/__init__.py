r"""Stochastic-gradient MCMC at any temperature: SGLD, SGHMC and cyclical SG-MCMC.

The samplers work on the flat unconstrained vector θ ∈ ℝ^d of
`Objective`, whose potential U_T(θ) = −log p̃_T(D_batch, w(θ))
− log|det ∂w/∂θ| is THE tempered negative log density (minibatch likelihood scaled by N/B,
temperature as 1/T). They simulate V(θ) = T·U_T(θ) with injected noise ∝ T, so the stationary
density is exp(−V/T) = p_T(θ | D) for posterior and likelihood tempering alike; ĝ is the
minibatch gradient of V.

**Update rules** (`.kernels`; G a per-coordinate step, B̂ the estimated variance of ĝ):

* SGLD (Welling & Teh 2011; preconditioned: Li et al. 2016, Ahn et al. 2012):
  θ ← θ − G ĝ + √(2GT − G²B̂) ξ.
* SGHMC (Chen et al. 2014, eq. 15, in momentum form; scale-adapted: Springenberg et al. 2016):
  v ← (1 − α) v − G ĝ + √(2αGT − G²B̂) ξ,  θ ← θ + v.

**The dense preconditioner (default for small models, ``preconditioner="auto"``).** For models of at most
`.whitening.DENSE_MAX_SIZE` (256) coordinates each chain, at the start of its first burn-in window (where the
exploration has brought it near a mode θ̂), computes the full-data Hessian H of V at θ̂ and from then on runs the
kernel below unchanged in φ = L⁻¹(θ − θ̂), LᵀHL = I (`.whitening`: a frozen affine map leaves p_T invariant and
keeps the temperature diagnostics' meaning); the draws are θ = θ̂ + Lφ. A diagonal G cannot whiten a rotated,
ill-conditioned posterior, whose softest mode then relaxes in ≈ κ_eff/lr steps. ``preconditioner="dense"``
forces it, ``"fisher"`` is the diagonal kernel alone (the default above the threshold, bit for bit the earlier
releases' run); ``info["whitening"]`` / ``info["whitening_shift"]`` hold each chain's L and θ̂.

**The adaptive kernel (``preconditioner="fisher"``; in φ under ``"auto"``/``"dense"``).** The first half of the burn-in
moves to the bulk with noise-free RMSprop steps (``explore_lr``/√EMA[ĝ²], momentum 0.9). The
second half runs the sampler while it measures, per coordinate, E[ĝ_i²] and the minibatch noise
B̂_i (from the two halves of every minibatch, `.kernels.split_batch_noise`), over its own
second half. Then the constants are fixed for the sampling stage:

    G_i = lr · T / E[ĝ_i²],   α_i = max(momentum_decay, 2ω_i),  ω_i² = G_i (E[ĝ_i²] − B̂_i) / T.

Why these units: at stationarity E[ĝ_i²] = T·H_ii + B_ii (E[∇V∇Vᵀ] = T·H under exp(−V/T) for a
locally Gaussian posterior with Hessian H of V), so the preconditioned curvature G_iH_ii ≤ lr —
``lr`` is a dimensionless squared frequency per step (default 0.05 for SGHMC, 0.1 for SGLD),
independent of the data set size N, the curvature and T; and the gradient noise's share of the
diffusion, G_iB_ii/(2αT) ≤ lr/(2α), is bounded. α_i = 2ω_i damps each coordinate critically.
Fixing the constants after the burn-in keeps the chain a time-homogeneous Markov chain (no
Γ-term needed, unlike pSGLD's running preconditioner) — except where a minibatch gradient is far
outside what they were fitted to: a *spike guard* (`.guard.SpikeGuard`), an EMA of ĝ² started at
the frozen E[ĝ²], shrinks G_i where it exceeds twice that value (ten times its own fluctuation for
Gaussian gradients, so it does not bind on a Gaussian posterior). On a ReLU network rare minibatches
give gradients 10³–10⁵× the frozen E[ĝ²] on a few weights, which threw default SGHMC out of the
posterior (digits MLP, T = 1: 2 of 4 seeds diverged); where the guard binds the step is state
dependent, pSGLD's small Γ bias. Every adaptive step also obeys E[ĝ_i²] ≥ T²·(the prior's curvature),
the prior-alone bound on the step (`Objective.prior_curvature`).

**Minibatch noise.** ``noise_correction=True`` subtracts G²B̂ from the injected variance and
raises α where needed so that 2αGT − G²B̂ ≥ 0.2·αGT (Chen et al. 2014, α ≥ β̂; SGLD shrinks its
step instead). This is exact when minibatches are drawn independently, which is what
``"auto"`` (default) detects (a DataLoader sampling with replacement). Under random reshuffling
(each epoch visits every point once; ``fit``'s own loader and ``shuffle=True``) an epoch's
noise sums to zero, so it hardly moves θ on the sampler's time scales, and subtracting its
i.i.d. variance narrows the draws by up to G B/(2αT) (measured: variance ratios 0.6–0.8 at
T ≤ 1 with correction vs 0.9–1.1 without, on regressions of 64–2000 points); ``"auto"``
therefore does not subtract there, and the measured noise still enters α through ω_i. *Augmentation*
drawn afresh at every step does not cancel over an epoch: a minibatch gradient's noise splits into the
data's sampling part and E_b[Var_a(ĝ | b)], the augmentation's, which heats the chain by G·B_aug/(2α) like
i.i.d. noise. Under reshuffling with augmentation ``"auto"`` therefore subtracts B̂_aug alone, measured when
each sampling stage starts on 32 batches under two independent augmentations each (`.gradients.augmentation_noise`,
E[(ĝ(b, a₁) − ĝ(b, a₂))²]/2; 64 gradients), with α raised where needed (``info["noise_correction"]`` is
``"augmentation"``). Measured on 500 digits with ±1-pixel shifts (64-32-10 ReLU, batch 50, defaults): without it
SGHMC's kinetic temperature read 1.15·T at T = 1, 1.27·T at 0.1 and 1.48·T at 0.01 (and warned), with it 0.98–1.04·T,
and the test NLL at T = 1 fell from 0.485 to 0.435: the unsubtracted noise had inflated the augmented
cold-posterior effect (notes/issue-13-lead11.md).

**Control-variate gradients (cold T).** With minibatch noise B ≫ T·H the step G ≈ lr·T/B
shrinks with T and a chain needs ∝ 1/T epochs to decorrelate. The control-variate estimate of
Baker, Fearnhead, Fox & Nemeth (2019, SGLD-CV; also Dubey et al. 2016's SVRG-LD)

    ĝ_cv(θ) = ∇U(θ̂) + ĝ_B(θ) − ĝ_B(θ̂)

(ĝ_B the minibatch estimate, both terms on the same rows; ∇U(θ̂) one full-data pass at the anchor θ̂)
is unbiased and its noise is that of (N/B)Σ_batch[∇u_i(θ) − ∇u_i(θ̂)], of variance ∝ ‖θ − θ̂‖² ∝ T
when θ̂ is in the bulk: E[ĝ²] then scales with T, G·H stays ≈ lr and cold chains mix in as many
steps as warm ones. Cost: a second minibatch gradient per step (and per-half gradients in the
warm-up), plus one full-data gradient per anchor. The anchor is set where the exploration ends
and moved, at the warm-up's midpoint, to the mean θ of its first half. Because the chain then
starts with no spread, the warm-up's ĝ² EMA decays faster (0.9) and its step grows by at most
10% per step, and the frozen constants use the centred moment E[ĝ²] − E[ĝ]² (a chain still
drifting would otherwise read its drift as curvature). ``gradient="auto"`` (default) drives the
warm-up with the control variate, measures the plain estimate's noise on the same steps and keeps
the control variate when it shortens the relaxation time max_i (S_i + B_i)/S_i (S_i the shared
signal E[ĝ_i²] − B_i) by more than its 2× cost (`.kernels.prefer_control_variate`), per chain,
recorded in ``info["control_variate"]``; ``"cv"`` / ``"plain"`` force the choice. Not with data
augmentation (the anchor's full gradient would not be the augmented minibatches' mean) or the
plain kernel; without minibatches both estimates are the full gradient.

**The loop** is a step rule on the one driver (`.rule.SGMCMCRule` on `pyro_bdl.infer.driver.drive`, run by
`.run.run_chain`): the driver owns the minibatches, each chain's generator (its data order, and its noise on the
CPU), the progress bar and the checkpoint; a chain whose θ is on another device (a GPU) draws its noise (ξ, the
momentum refresh) from its own generator there, seeded from the chain's seed and saved in the checkpoint
(`pyro_bdl._util.random.noise_generator`: no host-to-device copy per step, other numbers than the CPU's for the
same seed); each chain (`.chain.Chain`) updates θ and v in place (fused multiply-adds,
`.kernels.step_`; the constants of a frozen sampling stage computed once) and keeps each step's loss, a gradient
check (Σĝ, finite iff ĝ is) and the temperature sums on θ's device (`.record.StepRecord`); the rule reads every
chain's record to the host together every 50 steps (`.run.CHECK_EVERY`), before a checkpoint and at the end — one
synchronisation per block for all the chains, as the one driver (`pyro_bdl.infer.driver`) does for its loss history
— and runs it through the shared divergence check (`pyro_bdl.infer.divergence`) step by step, so an error still
names the exact step (and, with several chains, the chain). The parts: `.adaptation` (the warm-up's step, friction
and noise estimate and the frozen constants), `.gradients` (plain, split-batch and control-variate estimates, one
chain or stacked), `.chain`, `.guard`, `.record`, `.rule`, `.run` (groups of chains and the posterior).

**Plain kernels** (``preconditioner=None``): G = ε = ``lr``/N on the full-data potential (``lr`` per data point,
the unit of every SGD-type ``lr``; default N·10⁻⁴, the textbook ε = 10⁻⁴; ``per_datapoint=False``, deprecated: ε =
``lr``) and α = ``momentum_decay`` fixed, as in the papers; use
them to reproduce published settings. ``"rmsprop"``: G_i = lr/√E[ĝ_i²] (pSGLD's
preconditioner, fixed after the burn-in), lr in parameter units.

**Cyclical SG-MCMC** (Zhang et al. 2020): K = ``epochs`` × batches steps in M = ``cycles``
cycles of L = ⌈K/M⌉ steps, α_k = α₀/2 · [cos(π · mod(k − 1, L) / L) + 1]; the first fraction β
= ``exploration`` of every cycle is optimisation, the rest the sampling stage
(`fit_csgmcmc`). Its draws come from the sampling stages alone, so its default length gives them as many steps as
SGHMC's whole default run (⌈4000 / (1 − β)⌉ steps in all, `csgmcmc_min_steps`) and keeps ≈ 100 draws per chain.

**Diagnostics.** Every run records the configurational temperature (and for SGHMC the kinetic
temperature) of Wenzel et al. (2020) at every sampling step — per draw in ``sample_stats``
(so ``to_arviz`` carries them), per chain as ``[estimate, 95% low, 95% high]`` in
``info["configurational_temperature"]`` / ``info["kinetic_temperature"]``, in
[`pyro_bdl.diagnostics.summary`][pyro_bdl.evaluate.diagnostics.summary] — and warns with a
[`SamplerWarning`][pyro_bdl.evaluate.diagnostics.SamplerWarning] when they disagree with T
(`pyro_bdl.evaluate.diagnostics.sampler` defines both statistics). The temperatures are dominated by the stiff
directions, so a run whose draws have not relaxed along the soft ones (a rotated ill-conditioned posterior that a
diagonal preconditioner cannot whiten) reads T there; for models with fewer coordinates than a quarter of the draws
the run also computes the split R-hat of the draws on their principal directions in the preconditioner's metric
(``info["split_rhat"]``, largest variance first; ``None`` for larger models) and warns above 1.1
(`.mixing`). **Run length.** The default ``epochs=None`` runs max(200, ⌈4000 / batches per epoch⌉) epochs, at
least 4000 steps, because the adaptive kernels mix per step, not per epoch (`.methods.default_run_length`);
``info["epochs"]`` / ``info["thin"]`` hold the values used. ``info`` also holds
the driver's schema (``loss`` ``(chains, K)``, each chain's loss per step; ``options``, the method's
options as plain data; ``wall_time``, seconds of sampling summed over resumes; and the options as top-level
keys, as before), the per-step ``step_size`` schedule ``(K,)`` (units of the stage's lr),
``draw_steps`` (1-based), ``stage`` (0 explore, 1 warm-up, 2 sample), ``sampling_stage`` (WARMUP and
SAMPLE steps) and, for adaptive kernels, the fixed ``preconditioner_step`` G, ``friction`` α and
``gradient_noise`` B̂ per chain ``(chains, d)``.

**Chains and checkpoints.** ``num_chains`` independent runs, seeded by
`pyro_bdl._util.random.spawn_seeds` (runs with different seeds share no chain), each
from a fresh default initialisation. Chains are stepped together in groups of ``stack``
(`pyro_bdl.infer.stacking.stack_size`): θ ``(K, P)``, the K minibatch gradients (and the control
variate's anchor gradients, and the warm-up's half-batch gradients) one ``torch.func.vmap`` evaluation of the
compiled potential per step (`pyro_bdl.infer.stacking.StackedGradient`), everything else — the kernel update, the
moments, the frozen constants, the control-variate choice, the spike guard, the temperature sums, the draws —
each chain's own, so stacked chain k equals the chain run alone with its seed to float rounding (vmap's batched
matrix products round differently). ``stack="auto"`` stacks on a GPU as memory allows and on the CPU only networks
of at most 40k parameters (where vmap pays; measured in ``notes/issue-15-chains.md``); ``False`` runs the chains
one after another (exactly the single-chain numbers); a network vmap cannot batch (an LSTM) falls back to that by
itself. With a user's ``DataLoader`` each stacked chain iterates the loader itself, so its order depends on how
the loader's shuffling RNG advances (stacked and one-after-another chains then see different, equally valid
orders). ``workers=n`` (default 1) runs the groups in n spawned processes
(`pyro_bdl.infer.members.run_members`, one torch thread each, no progress bar there), with groups of at most
⌈``num_chains``/n⌉ chains so that each process gets one: for networks too large to stack (on the CPU, above 40k
parameters, where ``"auto"`` would run the chains one after another in one process) n chains then run at once on n
cores (spawned: from a script, call ``fit`` under ``if __name__ == "__main__":``). Each process rebuilds the compiled potential from the model and returns its chains' plain state (tensors,
lists, dicts; `.run.run_group`); a chain's numbers depend only on its seed and its group, so the run equals the run
with ``workers=1`` and the same grouping (``stack=False``: every chain bit for bit), and ``info["wall_time"]`` sums
the groups' times (not the elapsed time). With ``checkpoint=path`` the driver's state (θ, momentum, moments, draws,
every generator, a device chain's noise generator included) is written atomically every ``checkpoint_every`` epochs (one file per group, ``path.group<i>``
before the extension — ``run.group0.ckpt`` for ``run.ckpt`` — when the chains run in several groups, by the process
that runs the group); the same call resumes bit-identically, finished groups are read back, not rerun (in or out of
processes alike: the files depend on the grouping, not on ``workers``); a checkpoint of another run is refused.
"""
from .kernels import sghmc_step, sgld_step
from .methods import fit_csgmcmc, fit_sghmc, fit_sgld
from .run import run_chain
from .schedules import cyclical_draw_steps, cyclical_schedule, sampling_stage

__all__ = ["fit_sgld", "fit_sghmc", "fit_csgmcmc", "sgld_step", "sghmc_step", "cyclical_schedule",
           "sampling_stage", "cyclical_draw_steps", "run_chain"]
