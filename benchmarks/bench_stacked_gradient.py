"""K = 4 chains' gradients: `infer.stacking.StackedGradient` by vmap (forward vmapped + one backward) and by hand (a
plain MLP's layers as batched products, `Objective.stacked_potential`) vs 4 `Objective.grad` calls, CPU time, min of
5 × 10 calls: the measurement behind ``stacking.CPU_STACK_MAX_PARAMS``.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_stacked_gradient.py THREADS [DxH ...]`` (tanh MLPs
D-H-H-1, B = 64; default sizes 20x160 64x700 64x1400)."""
import sys, time, torch
sys.path.insert(0, ".")
import pyro_bdl as bdl
from pyro_bdl.model.potential import Objective
from pyro_bdl.infer.stacking import StackedGradient
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
K, B, N = 4, 64, 1024
SIZES = [tuple(map(int, s.split("x"))) for s in sys.argv[2:]] or [(20, 160), (64, 700), (64, 1400)]
for d, h in SIZES:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, h), torch.nn.Tanh(), torch.nn.Linear(h, 1))
    model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(scale=0.1))
    x = torch.randn(K, B, d); y = torch.randn(K, B)
    obj = Objective(model, x[0, :2])
    th = obj.initial().repeat(K, 1) + 0.01 * torch.randn(K, obj.size)
    obj.log_density(th[0], x[0], y[0], N)
    sg = StackedGradient(lambda t, a, b: obj.potential(t, a, b, N), lambda t, a, b: obj.grad(t, a, b, N))
    sh = StackedGradient(lambda t, a, b: obj.potential(t, a, b, N), lambda t, a, b: obj.grad(t, a, b, N),
                         lambda t, a, b, s: obj.stacked_potential(t, a, b, N, s))
    def seq():
        return [obj.grad(th[k], x[k], y[k], N) for k in range(K)]
    def st():
        return sg(th, x, y, False)
    def hand():
        return sh(th, x, y, False)
    res = {}
    for name, f in (("stacked", st), ("hand", hand), ("sequential", seq)):
        f(); f()
        best = 1e9
        for r in range(5):
            t = time.process_time()
            for _ in range(10):
                f()
            best = min(best, (time.process_time() - t) / 10)
        res[name] = best
    u, g = st(); gs = torch.stack([r[1] for r in seq()]); gh = hand()[1]
    print(f"P={obj.size:>9,d}  vmap {res['stacked']*1e3:7.2f} ms  by hand {res['hand']*1e3:7.2f} ms  sequential "
          f"{res['sequential']*1e3:7.2f} ms  vmap/seq {res['stacked']/res['sequential']:.2f}  hand/seq "
          f"{res['hand']/res['sequential']:.2f}  max rel diff {float(((g-gs).abs().max()/gs.abs().max())):.1e} / "
          f"{float(((gh-gs).abs().max()/gs.abs().max())):.1e}", flush=True)
