"""The torch -> JAX translation (pyro_bdl.backends.to_jax): a zoo of networks, gradients, errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
import jax.numpy as jnp  # noqa: E402

from pyro_bdl.backends import UnsupportedOperationError, supported_operations, to_jax  # noqa: E402


class ResidualBlock(nn.Module):
    """Custom forward: residual add, concatenation, reshape/view, elementwise ops, matmul, functional calls."""

    def __init__(self, dim=6):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim, bias=False)
        self.mix = nn.Parameter(torch.randn(2 * dim, dim) * 0.3)
        self.gain = nn.Parameter(torch.tensor(1.5))
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("shift", torch.linspace(-1, 1, dim))

    def forward(self, x):
        h = F.gelu(self.fc1(x))
        h = x + self.fc2(h) * torch.sigmoid(x) - 0.5 * h
        cat = torch.cat([h, x.tanh()], dim=-1)
        z = cat @ self.mix + self.shift
        b = z.size(0)
        z = z.view(b, 2, -1).transpose(1, 2).reshape(b, -1)[:, : h.shape[1]]
        z = F.layer_norm(z, (z.shape[-1],)) + self.norm(h) * self.gain
        return z + z.mean(dim=-1, keepdim=True).exp() / (1 + x.pow(2))


class ConvResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


class Functional(nn.Module):
    """Tensor methods and torch functions commonly met in custom forwards."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.conv = nn.Conv1d(2, 2, 3)

    def forward(self, x):
        h = self.fc(x)
        a, b = h.chunk(2, dim=-1)
        c, d = torch.split(h, [2, 4], dim=1)
        m = torch.max(h, dim=1, keepdim=True)[0]
        e = torch.einsum("bi,bj->bij", a, b).flatten(1)
        p = F.pad(c, (1, 2), value=0.5)
        q = h.unsqueeze(1).expand(-1, 2, -1)
        r = self.conv(q).permute(0, 2, 1).reshape(x.size(0), -1)
        s = torch.where(h > 0, h, 0.1 * h).clamp(-1, 1)
        t = s.masked_fill(s < -0.5, 0.0)
        u = h.where(h > 0.2, -h)
        return torch.cat([e.sum(-1, keepdim=True), p, r, t, u, m, d.std(dim=1, keepdim=True),
                          torch.logsumexp(h, dim=1, keepdim=True), F.softmax(h, dim=-1), F.normalize(h, dim=1),
                          h.mean(dim=(0,), keepdim=True).expand_as(h), torch.stack([a, b], dim=-1).amax(-1)], dim=1)


def mlp_all_activations():
    return nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.ELU(0.7), nn.Linear(8, 8), nn.GELU(),
        nn.GELU(approximate="tanh"), nn.SiLU(), nn.Linear(8, 8), nn.Tanh(), nn.Sigmoid(), nn.Linear(8, 8),
        nn.Softplus(beta=2.0), nn.Dropout(0.5), nn.Linear(8, 3))


def cnn2d():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4), nn.BatchNorm2d(8), nn.Identity(),
        nn.MaxPool2d(2), nn.Conv2d(8, 4, (3, 2), padding="same", padding_mode="reflect"), ConvResidual(),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False), nn.MaxPool2d(3, stride=2, ceil_mode=True),
        nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten(), nn.Linear(24, 2))


def cnn1d():
    return nn.Sequential(
        nn.Conv1d(2, 4, 5, stride=2, padding=2), nn.BatchNorm1d(4), nn.ELU(),
        nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True), nn.Conv1d(4, 6, 3, dilation=2, groups=2, bias=False),
        nn.AvgPool1d(2, padding=1, ceil_mode=True), nn.AdaptiveMaxPool1d(3), nn.AdaptiveAvgPool1d(2), nn.Flatten(),
        nn.LayerNorm(12), nn.Linear(12, 1))


def normalised_mlp():
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Dropout(0.2), nn.Linear(16, 16),
                         nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 2))


ZOO = {
    "mlp": (mlp_all_activations, (7, 4)),
    "cnn2d": (cnn2d, (5, 3, 17, 15)),
    "cnn1d": (cnn1d, (4, 2, 40)),
    "residual": (lambda: nn.Sequential(ResidualBlock(6), nn.ReLU(), ResidualBlock(6), nn.Linear(6, 1)), (9, 6)),
    "norms": (normalised_mlp, (8, 5)),
    "functional": (Functional, (5, 6)),
}


def _randomise_buffers(net):
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net


def _numpy(params):
    return {k: v.detach().numpy() for k, v in params.items()}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_output_equals_torch(name):
    make, shape = ZOO[name]
    torch.manual_seed(0)
    net = _randomise_buffers(make()).eval()
    x = torch.randn(*shape)
    f = to_jax(net)
    assert set(f.param_names) == {n for n, _ in net.named_parameters()}
    # The parameters are real inputs: other values than the module's give torch's output at those values.
    params = {k: v.detach() + 0.3 * torch.randn_like(v) for k, v in net.named_parameters()}
    with torch.no_grad():
        ref = functional_call(net, params, (x,)).numpy()
        ref_module = net(x).numpy()
    jitted = jax.jit(f)
    out = np.asarray(jitted(_numpy(params), x.numpy()))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jitted(_numpy(dict(net.named_parameters())), x.numpy())), ref_module,
                               rtol=1e-5, atol=1e-5)


def test_gradients_and_vmap_match_torch():
    torch.manual_seed(0)
    net = nn.Sequential(ResidualBlock(6), nn.Linear(6, 1)).eval()
    x = torch.randn(9, 6)
    f = to_jax(net)
    params = dict(net.named_parameters())

    out = functional_call(net, params, (x,)).square().sum()
    grads = torch.autograd.grad(out, list(params.values()))
    g = jax.grad(lambda p: jnp.sum(f(p, x.numpy()) ** 2))(_numpy(params))
    for (name, _), gt in zip(params.items(), grads):
        np.testing.assert_allclose(np.asarray(g[name]), gt.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)

    stacked = {k: np.stack([v.detach().numpy() * s for s in (0.5, 1.0, 2.0)]) for k, v in params.items()}
    batched = np.asarray(jax.vmap(f, in_axes=(0, None))(stacked, x.numpy()))
    one = np.asarray(f({k: v[2] for k, v in stacked.items()}, x.numpy()))
    np.testing.assert_allclose(batched[2], one, rtol=1e-6, atol=1e-6)


def test_fixed_parameters_are_constants_and_tied_weights_resolve():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    net[2].weight = net[0].weight  # tied
    x = torch.randn(4, 3)
    f = to_jax(net, params=["0.weight"])
    assert f.param_names == ("0.weight",) and "0.bias" in f.constants
    w = torch.randn(3, 3)
    with torch.no_grad():
        ref = functional_call(net, {"0.weight": w}, (x,)).numpy()
    np.testing.assert_allclose(np.asarray(f({"0.weight": w.numpy()}, x.numpy())), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="0.weight"):
        f({}, x.numpy())
    with pytest.raises(ValueError, match="not parameters"):
        to_jax(net, params=["nope"])


def test_supported_operations_lists_the_zoo():
    ops = supported_operations()
    for layer in ("Linear", "Conv1d", "Conv2d", "BatchNorm2d", "LayerNorm", "MaxPool2d", "AvgPool2d",
                  "AdaptiveAvgPool2d", "Dropout", "Flatten", "ReLU", "GELU", "Softplus"):
        assert f"torch.nn.{layer}" in ops["modules"]
    assert "torch.cat" in ops["functions"] and "view" in ops["methods"]


def test_unsupported_layer_names_op_and_path():
    net = nn.Sequential(nn.Linear(2, 4), nn.Sequential(nn.Unflatten(1, (1, 2, 2)), nn.ConvTranspose2d(1, 1, 2)))
    with pytest.raises(UnsupportedOperationError) as err:
        to_jax(net)
    msg = str(err.value)
    assert "conv_transpose2d" in msg and "'1.1'" in msg and "backend='pyro'" in msg


def test_unsupported_function_in_custom_forward():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=-1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Odd()

        def forward(self, x):
            return self.body(x) + 1

    with pytest.raises(UnsupportedOperationError, match=r"torch\.cumsum.*'body'.*backend='pyro'"):
        to_jax(Net())


def test_data_dependent_control_flow_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return -self.fc(x)

    net = nn.Sequential(nn.Linear(2, 2), Branchy())
    with pytest.raises(UnsupportedOperationError, match=r"could not capture.*'1'.*Branchy.*backend='pyro'"):
        to_jax(net)
