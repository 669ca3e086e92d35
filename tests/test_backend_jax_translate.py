"""The torch -> JAX translation (pyro_bdl.backends.to_jax): a zoo of networks, gradients, linearisation, errors."""
import math
import operator

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
from pyro_bdl.backends.jax.tables import function_name  # noqa: E402


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
    # float32: XLA may fuse and vectorise the batched program differently from the single one (2e-6 relative seen on
    # one CPU), so the bar is float32 rounding over a few layers, not 1e-6
    np.testing.assert_allclose(batched[2], one, rtol=1e-5, atol=1e-5)


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


# ----------------------------------------------------------------------------------------------
# Every listed operation under jax.jvp / jax.linearize / jax.grad and inside a NUTS step
# ----------------------------------------------------------------------------------------------
class _Probe(nn.Module):
    """A network whose forward is one supported operation (``fn``) on the input, plus a Linear so it has parameters."""

    def __init__(self, fn, features):
        super().__init__()
        self.fn = fn
        self.fc = nn.Linear(features, features)

    def forward(self, x):
        return self.fn(self.fc(x))


_UNARY_NAMES = ["abs", "atan", "ceil", "cos", "cosh", "erf", "exp", "exp2", "expm1", "floor", "log", "log1p", "log2",
                "neg", "negative", "reciprocal", "round", "rsqrt", "sigmoid", "sign", "sin", "sinh", "sqrt", "square",
                "tanh", "relu"]
_F_ACTIVATIONS = ["celu", "elu", "hardsigmoid", "hardswish", "hardtanh", "leaky_relu", "mish", "relu", "relu6", "selu",
                  "sigmoid", "silu", "softsign", "tanh", "tanhshrink", "logsigmoid", "gelu", "softplus"]
M = torch.tensor([[1.0, 0.5, -0.5, 0.2]] * 4)

# name as supported_operations() lists it -> (op applied to the Linear's output h of shape (3, 4) or `shape`)
PROBES = {
    **{f"torch.{n}": (lambda n: lambda h: getattr(torch, n)(h.abs() + 0.5))(n) for n in _UNARY_NAMES},
    **{n: (lambda n: lambda h: getattr(h.abs() + 0.5, n)())(n) for n in _UNARY_NAMES},
    **{f"torch.nn.functional.{n}": (lambda n: lambda h: getattr(F, n)(h))(n) for n in _F_ACTIVATIONS},
    "torch.celu": lambda h: torch.celu(h), "torch.selu": lambda h: torch.selu(h), "torch.gelu": lambda h: torch._C._nn.gelu(h),
    "torch.log_sigmoid": lambda h: torch._C._nn.log_sigmoid(h), "torch.softplus": lambda h: torch._C._nn.softplus(h),
    "torch.nn.functional.softmax": lambda h: F.softmax(h, dim=-1), "torch.softmax": lambda h: torch.softmax(h, -1),
    "softmax": lambda h: h.softmax(-1), "torch.nn.functional.log_softmax": lambda h: F.log_softmax(h, dim=1),
    "torch.log_softmax": lambda h: torch.log_softmax(h, -1), "log_softmax": lambda h: h.log_softmax(-1),
    "torch.add": lambda h: torch.add(h, h, alpha=2.0), "add": lambda h: h.add(1.0), "operator.add": lambda h: h + 1.0,
    "torch.sub": lambda h: torch.sub(h, 1.0), "sub": lambda h: h.sub(h * h), "operator.sub": lambda h: 1.0 - h,
    "torch.subtract": lambda h: torch.subtract(h, 2.0), "subtract": lambda h: h.subtract(2.0),
    "torch.mul": lambda h: torch.mul(h, h), "mul": lambda h: h.mul(3.0), "operator.mul": lambda h: h * h,
    "torch.multiply": lambda h: torch.multiply(h, 2.0), "multiply": lambda h: h.multiply(h),
    "torch.div": lambda h: torch.div(h, 2.0), "div": lambda h: h.div(h.abs() + 1), "operator.truediv": lambda h: 1 / (h.abs() + 1),
    "torch.divide": lambda h: torch.divide(h, 3.0), "divide": lambda h: h.divide(3.0),
    "torch.true_divide": lambda h: torch.true_divide(h, 3.0), "true_divide": lambda h: h.true_divide(3.0),
    "operator.floordiv": lambda h: h + (h // 1.0), "operator.mod": lambda h: h % 1.5,
    "operator.pow": lambda h: h ** 2, "torch.pow": lambda h: torch.pow(h.abs() + 0.5, 1.5), "pow": lambda h: h.pow(3),
    "operator.neg": lambda h: -h, "operator.pos": lambda h: +h, "operator.abs": lambda h: abs(h),
    "operator.matmul": lambda h: h @ h.T, "torch.matmul": lambda h: torch.matmul(h, h.T), "matmul": lambda h: h.matmul(h.T),
    "torch.mm": lambda h: torch.mm(h, h.T), "mm": lambda h: h.mm(h.T),
    "torch.bmm": lambda h: torch.bmm(h[None], h.T[None]), "bmm": lambda h: h[None].bmm(h.T[None]),
    "torch.functional.einsum": lambda h: torch.einsum("ij,kj->ik", h, h),
    "operator.getitem": lambda h: h[:, 1:3], "builtins.getattr": lambda h: h * h.shape[0],
    **{f"operator.{op}": (lambda op: lambda h: h * getattr(operator, op)(h, 0.1).float())(op)
       for op in ("eq", "ne", "lt", "le", "gt", "ge")},
    "operator.and_": lambda h: h * ((h > 0) & (h < 1)).float(), "operator.or_": lambda h: h * ((h > 0) | (h < -1)).float(),
    "torch.maximum": lambda h: torch.maximum(h, 0.3 * h), "maximum": lambda h: h.maximum(-h),
    "torch.minimum": lambda h: torch.minimum(h, 0.3 * h), "minimum": lambda h: h.minimum(-h),
    "torch.max": lambda h: torch.max(h, dim=1)[0] + torch.max(h) + torch.max(h, -h).sum(),
    "max": lambda h: h.max(dim=0)[0] + h.max(), "torch.min": lambda h: torch.min(h, dim=1)[0] + torch.min(h),
    "min": lambda h: h.min(dim=-1, keepdim=True)[0] + h.min(),
    "torch.amax": lambda h: torch.amax(h, dim=1), "amax": lambda h: h.amax(0), "torch.amin": lambda h: torch.amin(h, 1),
    "amin": lambda h: h.amin(-1), "torch.argmax": lambda h: h * torch.argmax(h, dim=1, keepdim=True).float(),
    "argmax": lambda h: h * h.argmax(-1, keepdim=True).float(), "torch.argmin": lambda h: h * torch.argmin(h).float(),
    "argmin": lambda h: h * h.argmin().float(),
    "torch.sum": lambda h: torch.sum(h, dim=1), "sum": lambda h: h.sum(), "torch.mean": lambda h: torch.mean(h, dim=(0, 1)),
    "mean": lambda h: h.mean(-1), "torch.prod": lambda h: torch.prod(h, 1), "prod": lambda h: h.prod(0),
    "torch.var": lambda h: torch.var(h, dim=1), "var": lambda h: h.var(0, unbiased=False),
    "torch.std": lambda h: torch.std(h, dim=1), "std": lambda h: h.std(-1, correction=0),
    "torch.logsumexp": lambda h: torch.logsumexp(h, dim=1), "logsumexp": lambda h: h.logsumexp(0),
    "torch.functional.norm": lambda h: torch.norm(h, dim=1), "norm": lambda h: h.norm(p=1, dim=0) + (h.abs() + 0.5).norm(3),
    "torch.clamp": lambda h: torch.clamp(h, -0.5, 0.5), "clamp": lambda h: h.clamp(min=0.0),
    "torch.clip": lambda h: torch.clip(h, max=0.2), "clip": lambda h: h.clip(-0.1, 0.1),
    "torch.clamp_min": lambda h: torch.clamp_min(h, 0.1), "clamp_min": lambda h: h.clamp_min(0.0),
    "torch.clamp_max": lambda h: torch.clamp_max(h, 0.1), "clamp_max": lambda h: h.clamp_max(0.0),
    "torch.where": lambda h: torch.where(h > 0, h, 0.2 * h), "where": lambda h: h.where(h > 0, -h),
    "torch.masked_fill": lambda h: torch.masked_fill(h, h < 0, 0.0), "masked_fill": lambda h: h.masked_fill(h > 1, 1.0),
    "torch.cat": lambda h: torch.cat([h, 2 * h], dim=1), "torch.concat": lambda h: torch.concat([h, h], 0),
    "torch.concatenate": lambda h: torch.concatenate([h, -h], dim=-1), "torch.stack": lambda h: torch.stack([h, h], -1),
    "torch.reshape": lambda h: torch.reshape(h, (2, -1)), "reshape": lambda h: h.reshape(-1),
    "view": lambda h: h.view(4, 3), "view_as": lambda h: h.view_as(h.T), "reshape_as": lambda h: h.reshape_as(h.T),
    "torch.flatten": lambda h: torch.flatten(h[None], 1), "flatten": lambda h: h.flatten(),
    "torch.unflatten": lambda h: torch.unflatten(h, 1, (2, 2)), "unflatten": lambda h: h.unflatten(-1, (2, 2)),
    "torch.permute": lambda h: torch.permute(h, (1, 0)), "permute": lambda h: h.permute(1, 0),
    "torch.transpose": lambda h: torch.transpose(h, 0, 1), "transpose": lambda h: h.transpose(0, 1),
    "torch.swapaxes": lambda h: torch.swapaxes(h, 0, 1), "swapaxes": lambda h: h.swapaxes(0, 1),
    "torch.t": lambda h: torch.t(h), "t": lambda h: h.t(),
    "torch.squeeze": lambda h: torch.squeeze(h[None], 0), "squeeze": lambda h: h[:, None].squeeze(),
    "torch.unsqueeze": lambda h: torch.unsqueeze(h, 1), "unsqueeze": lambda h: h.unsqueeze(0),
    "torch.chunk": lambda h: torch.chunk(h, 2, dim=1)[1], "chunk": lambda h: h.chunk(2, -1)[0],
    "torch.functional.split": lambda h: torch.split(h, [1, 3], dim=1)[1], "split": lambda h: h.split(2, dim=1)[0],
    "torch.unbind": lambda h: torch.unbind(h, 1)[2], "unbind": lambda h: h.unbind(0)[1],
    "expand": lambda h: h[:, :1].expand(-1, 4), "expand_as": lambda h: h[:1].expand_as(h),
    "torch.tile": lambda h: torch.tile(h, (1, 2)), "tile": lambda h: h.tile(2), "repeat": lambda h: h.repeat(2, 1),
    "size": lambda h: h * h.size(1), "dim": lambda h: h * h.dim(), "numel": lambda h: h / h.numel(),
    "contiguous": lambda h: h.contiguous(), "clone": lambda h: h.clone(), "detach": lambda h: h * h.detach(),
    "float": lambda h: h.float(), "double": lambda h: h + h.double().float(), "half": lambda h: h + 0 * h.half().float(),
    "int": lambda h: h + h.int().float(), "long": lambda h: h + h.long().float(), "bool": lambda h: h * h.bool().float(),
    "to": lambda h: h.to(torch.float32), "type_as": lambda h: h.type_as(h),
    "torch.zeros_like": lambda h: h + torch.zeros_like(h), "torch.ones_like": lambda h: h * torch.ones_like(h),
    "torch.full_like": lambda h: h * torch.full_like(h, 2.0),
    "torch.nn.functional.normalize": lambda h: F.normalize(h, dim=1), "torch.nn.functional.pad": lambda h: F.pad(h, (1, 2)),
    "torch.linear": lambda h: F.linear(h, M, M[0]), "torch.bilinear": lambda h: F.bilinear(h, h, M[None], M[0, :1]),
    "torch.prelu": lambda h: F.prelu(h, torch.tensor([0.2, 0.1, 0.3, 0.4])),
    "torch.nn.functional.embedding": lambda h: h + F.embedding(torch.tensor([0, 2, 1]), M),
    "torch.nn.functional.layer_norm": lambda h: F.layer_norm(h, (4,)),
    "torch.nn.functional.rms_norm": lambda h: F.rms_norm(h, (4,)),
    "torch.nn.functional.group_norm": lambda h: F.group_norm(h, 2),
    "torch.nn.functional.batch_norm": lambda h: F.batch_norm(h, torch.zeros(4), torch.ones(4)),
    "torch.nn.functional.instance_norm": lambda h: F.instance_norm(h.reshape(3, 2, 2)),
    **{f"torch.nn.functional.{n}": (lambda n: lambda h: getattr(F, n)(h, 0.5, training=False))(n)
       for n in ("dropout", "alpha_dropout", "feature_alpha_dropout")},
    **{f"torch.nn.functional.dropout{d}d": (lambda d: lambda h: getattr(F, f"dropout{d}d")(
        h.reshape((1,) * d + (3, 4)), 0.5, training=False).reshape(3, 4))(d) for d in (1, 2, 3)},
}
_W1, _W2, _W3 = torch.randn(2, 3, 3), torch.randn(2, 3, 3, 3), torch.randn(2, 3, 2, 2, 2)
for _d, _w in ((1, _W1), (2, _W2), (3, _W3)):  # (3, 4) -> (1, 3, 4, ...) spatial inputs
    _shape = (1, 3) + (4,) * _d
    PROBES[f"torch.conv{_d}d"] = (lambda s, d, w: lambda h: getattr(torch, f"conv{d}d")(
        h.reshape(-1).repeat(16)[:math.prod(s)].reshape(s), w, padding=1))(_shape, _d, _w)
    for _kind in ("max_pool", "avg_pool", "adaptive_max_pool", "adaptive_avg_pool"):
        _name = f"{_kind}{_d}d"
        _fn = getattr(F, _name)
        _qual = function_name(_fn)
        _args = (2,) if _kind.startswith("adaptive") else (3, 1, 1)
        PROBES[_qual] = (lambda s, fn, a: lambda h: fn(h.reshape(-1).repeat(16)[:math.prod(s)].reshape(s), *a))(
            _shape, _fn, _args)

# every listed layer, with a small configuration, as (module, input shape)
LAYERS = {
    "Linear": (nn.Linear(4, 3), (3, 4)), "Bilinear": None, "Identity": (nn.Identity(), (3, 4)),
    "Conv1d": (nn.Conv1d(2, 3, 3, padding=1), (2, 2, 5)), "Conv2d": (nn.Conv2d(2, 3, 3, stride=2), (2, 2, 5, 5)),
    "Conv3d": (nn.Conv3d(1, 2, 2), (2, 1, 3, 3, 3)),
    "BatchNorm1d": (nn.BatchNorm1d(4).eval(), (3, 4)), "BatchNorm2d": (nn.BatchNorm2d(2).eval(), (2, 2, 3, 3)),
    "BatchNorm3d": (nn.BatchNorm3d(2).eval(), (2, 2, 2, 2, 2)),
    "InstanceNorm1d": (nn.InstanceNorm1d(2, affine=True), (2, 2, 5)),
    "InstanceNorm2d": (nn.InstanceNorm2d(2), (2, 2, 3, 3)), "InstanceNorm3d": (nn.InstanceNorm3d(2), (2, 2, 2, 2, 2)),
    "LayerNorm": (nn.LayerNorm(4), (3, 4)), "GroupNorm": (nn.GroupNorm(2, 4), (3, 4, 2)),
    "RMSNorm": (nn.RMSNorm(4), (3, 4)), "Embedding": None,
    "Flatten": (nn.Flatten(), (2, 2, 3)), "Unflatten": (nn.Unflatten(1, (2, 2)), (3, 4)),
    "PReLU": (nn.PReLU(4), (3, 4)), "Softmax": (nn.Softmax(dim=-1), (3, 4)), "LogSoftmax": (nn.LogSoftmax(1), (3, 4)),
    **{n: (getattr(nn, n)(), (3, 4)) for n in ("ReLU", "ReLU6", "LeakyReLU", "ELU", "CELU", "SELU", "GELU", "SiLU",
                                               "Mish", "Softplus", "Softsign", "Tanh", "Sigmoid", "Hardtanh",
                                               "Hardsigmoid", "Hardswish", "LogSigmoid", "Tanhshrink")},
    **{n: (getattr(nn, n)(0.3).eval(), (2, 2, 3, 3)) for n in ("Dropout", "Dropout2d", "Dropout3d", "AlphaDropout",
                                                               "FeatureAlphaDropout")},
    "Dropout1d": (nn.Dropout1d(0.3).eval(), (2, 2, 5)),
    "MaxPool1d": (nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True), (2, 2, 7)),
    "MaxPool2d": (nn.MaxPool2d(2, stride=1, dilation=2), (2, 2, 5, 5)), "MaxPool3d": (nn.MaxPool3d(2), (1, 1, 4, 4, 4)),
    "AvgPool1d": (nn.AvgPool1d(2, padding=1, ceil_mode=True), (2, 2, 5)),
    "AvgPool2d": (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 2, 5, 5)),
    "AvgPool3d": (nn.AvgPool3d(2, stride=1), (1, 1, 3, 3, 3)),
    **{f"Adaptive{k}Pool{d}d": (getattr(nn, f"Adaptive{k}Pool{d}d")(2), (1, 2) + (5,) * d)
       for k in ("Max", "Avg") for d in (1, 2, 3)},
}


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.bil = nn.Bilinear(4, 4, 2)
        self.emb = nn.Embedding(5, 4)

    def forward(self, x):
        return self.bil(x, x) + self.emb(torch.tensor([0, 3, 1])).sum(-1, keepdim=True)


LAYERS["Bilinear"] = LAYERS["Embedding"] = (_TwoInputs(), (3, 4))


def _probe_networks():
    nets = {}
    for name, fn in PROBES.items():
        nets[f"op {name}"] = (_Probe(fn, 4), (3, 4))
    for name, (module, shape) in LAYERS.items():
        nets[f"layer {name}"] = (nn.Sequential(module), shape)  # a root module is traced into, never kept whole
    return nets


def test_every_supported_operation_has_a_linearisation_probe():
    ops = supported_operations()
    listed = set(ops["functions"]) | set(ops["methods"]) | {m.split(".")[-1] for m in ops["modules"]}
    probed = set(PROBES) | set(LAYERS)
    assert not listed - probed, f"operations without a probe: {sorted(listed - probed)}"


def _checked_probes(select=lambda name: True):
    """Translate the selected probes and check each output against torch: ``{name: (f, params, x)}``."""
    torch.manual_seed(0)
    probes, failed = {}, []
    for name, (net, shape) in _probe_networks().items():
        if not select(name):
            continue
        try:
            f = to_jax(net)
            x = torch.randn(*shape)
            ps = {k: v.detach() for k, v in net.named_parameters()}
            with torch.no_grad():
                ref = functional_call(net, ps, (x,))
            out = np.asarray(jax.jit(f)(_numpy(ps), x.numpy()))
            np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        except Exception as err:  # collect every failing probe, then fail once
            failed.append(f"{name}: {type(err).__name__}: {str(err)[:200]}")
            continue
        probes[name] = (f, _numpy(ps), x.numpy())
    assert not failed, "\n".join(failed)
    return probes


def _potential(f, x):
    """A NUTS-like potential of the probe's parameters: Gaussian prior plus a smooth function of the output."""
    def potential(p):
        prior = 0.5 * sum(jnp.sum(v ** 2) for v in jax.tree.leaves(p))
        return prior + 0.1 * jnp.mean(jnp.tanh(f(p, x)))

    return potential


def _three_ways(probes):
    """J·t by jax.jvp, by jax.linearize and by jax.grad for each probe, in one jitted program."""
    @jax.jit
    def run(params, tangents):
        out = {}
        for name, (f, _, x) in probes.items():
            potential = _potential(f, x)
            p, t = params[name], tangents[name]
            _, jvp_out = jax.jvp(potential, (p,), (t,))
            lin_out = jax.linearize(potential, p)[1](t)
            grad = jax.grad(potential)(p)
            out[name] = (jvp_out, lin_out, sum(jnp.sum(g * v) for g, v in zip(jax.tree.leaves(grad), jax.tree.leaves(t))))
        return out

    params = {name: p for name, (_, p, _) in probes.items()}
    return run(params, jax.tree.map(lambda v: jnp.full_like(v, 0.01), params))


def _check_three_ways(probes):
    failed = []
    for name, (jvp_out, lin_out, grad_dot) in _three_ways(probes).items():
        a, b, c = float(jvp_out), float(lin_out), float(grad_dot)
        if not (abs(a - b) <= 1e-4 * abs(a) + 1e-7 and abs(a - c) <= 1e-3 * abs(a) + 1e-6):
            failed.append(f"{name}: jvp {a}, linearize {b}, grad·t {c}")
    assert not failed, "\n".join(failed)


# Fast suite: every listed layer (57) and the pooling and convolution functions, where translations use lax
# primitives with their own differentiation rules (pooling used lax.reduce_window, which did not linearise).
_STRUCTURAL = ("layer ", "pool", "conv")


def test_layers_and_structural_ops_linearise():
    """Every listed layer and every pooling/convolution function: jvp = linearize = grad·t."""
    _check_three_ways(_checked_probes(lambda name: any(k in name for k in _STRUCTURAL)))


@pytest.mark.slow
def test_every_supported_operation_linearises():
    """Every probe (elementwise and bookkeeping ops too): jvp = linearize = grad·t (what NUTS needs)."""
    _check_three_ways(_checked_probes())


@pytest.mark.slow
def test_every_supported_operation_inside_a_nuts_step():
    """One jitted NUTS step on the sum of every probe's potential: it linearises and moves (a large program)."""
    from numpyro.infer.hmc import hmc

    probes = _checked_probes()
    parts = {name: _potential(f, x) for name, (f, _, x) in probes.items()}
    params = {name: p for name, (_, p, _) in probes.items()}
    init_kernel, sample_kernel = hmc(lambda p: sum(parts[n](p[n]) for n in parts), algo="NUTS")

    @jax.jit
    def nuts_step(p, key):
        state = init_kernel(p, num_warmup=0, step_size=0.01, max_tree_depth=2, rng_key=key)
        return state, sample_kernel(state)

    state, new = nuts_step(params, jax.random.PRNGKey(0))
    assert np.isfinite(float(new.potential_energy)) and int(new.num_steps) >= 1
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.z), jax.tree.leaves(state.z))]
    assert any(moved)
