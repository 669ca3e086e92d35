import sys, time, warnings
sys.path.insert(0, ".")
import torch; torch.set_num_threads(1)
import pyro_bdl as bdl
warnings.simplefilter("ignore")
g = torch.Generator().manual_seed(0)
x = torch.randn(512, 8, generator=g); y = x[:, 0] - x[:, 1] + 0.1 * torch.randn(512, generator=g)
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))  # 321 params
times = []
for rep in range(3):
    model = bdl.BayesianModel(net(), prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(scale=0.1))
    t = time.perf_counter()
    post = bdl.fit(model, x, y, method="sghmc", batch_size=32, epochs=40, seed=0, progress=False)
    times.append((time.perf_counter() - t) / (40 * 16))
print(post.info["preconditioner"], "ms/step", [round(1e3 * t, 3) for t in times], float(post.samples["0.weight"].sum()))
