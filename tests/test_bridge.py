"""The PyTorch bridge (issue 11 §2): compiled_module(config, target) against torch_module(config)
(PyTorch autograd is the oracle): same state_dict both ways, forward/backward on batches of 1
and 3 and on one image in both dtypes, torch.autograd.gradcheck in float64, torch.optim and
DataLoader training steps, pickling both modules, and DDP over gloo with two processes."""
from __future__ import annotations

import copy
import dataclasses
import io
import os
import pickle
import shutil
import socket

import pytest
import torch

from torch_ref import CONFIG_MATRIX, rel_err
from unetc.config import Config
from unetc.torch_interop import CompiledUNet2, UNet2, UNet2Function, compiled_module, module_dir, torch_module

TOL = {"float64": 1e-10, "float32": 1e-4}
CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
TARGETS = ["numpy", pytest.param("c", marks=pytest.mark.skipif(CC is None, reason="no C compiler (CI has one)"))]
TINY = Config(name="tiny", dtype="float64", in_c=1, out_c=2, in_h=4, in_w=4, base_c=2)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    old = os.environ.get("UNETC_CACHE_DIR")
    os.environ["UNETC_CACHE_DIR"] = str(tmp_path_factory.mktemp("bridge_cache"))
    yield
    if old is None:
        os.environ.pop("UNETC_CACHE_DIR", None)
    else:
        os.environ["UNETC_CACHE_DIR"] = old


def pair(cfg: Config, target: str, seed: int = 0):
    """(compiled module, torch_module) with the same parameters (the compiled one's init)."""
    torch.manual_seed(seed)
    m = compiled_module(cfg, target)
    ref = torch_module(cfg)
    ref.load_state_dict(m.state_dict())
    return m, ref


def run(module, x, gy):
    """y, parameter gradients and grad_x of sum(module(x) * gy), by autograd."""
    module.zero_grad()
    xt = x.clone().requires_grad_(True)
    y = module(xt)
    y.backward(gy)
    return y.detach(), {k: p.grad.clone() for k, p in module.named_parameters()}, xt.grad


@pytest.mark.parametrize("case,dtype,target", [
    (case, dtype, "numpy") for case in ["default", "pool3s2_up3s2_odd", "up_padding"] for dtype in ["float64", "float32"]
] + [pytest.param("default", "float64", "c", marks=TARGETS[1].marks)])  # C: one compile here (CONFIG_MATRIX is tests/test_c_target.py's)
def test_matches_torch_module(case, dtype, target):
    cfg = dataclasses.replace(CONFIG_MATRIX[case], dtype=dtype, name=f"br_{case[:4]}")
    m, ref = pair(cfg, target)
    g = torch.Generator().manual_seed(1)
    tdt = getattr(torch, dtype)
    for shape in [(1,), (3,), ()]:
        x = torch.randn(*shape, cfg.in_c, cfg.in_h, cfg.in_w, generator=g, dtype=torch.float64).to(tdt)
        gy = torch.randn(*shape, cfg.out_c, cfg.in_h, cfg.in_w, generator=g, dtype=torch.float64).to(tdt)
        y, grads, gx = run(m, x, gy)
        ry, rgrads, rgx = run(ref.double(), x.double(), gy.double())
        ref.to(tdt)
        assert y.dtype == tdt and y.shape == ry.shape and gx.shape == x.shape
        errs = {"y": rel_err(y, ry), "grad_x": rel_err(gx, rgx)}
        errs.update({k: rel_err(grads[k], rgrads[k]) for k in rgrads})
        assert max(errs.values()) <= TOL[dtype], (shape, errs)


def test_state_dict_both_ways_and_names_are_param_shapes():
    m, ref = pair(CONFIG_MATRIX["up_padding"], "numpy", seed=3)
    gen = m.runner.module
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == list(gen.PARAM_SHAPES.items())
    assert list(m.state_dict()) == list(ref.state_dict())
    other = torch_module(CONFIG_MATRIX["up_padding"])
    other.load_state_dict(m.state_dict())
    m.load_state_dict(torch_module(CONFIG_MATRIX["up_padding"]).state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), ref.state_dict().values()))
    assert isinstance(m, UNet2) and isinstance(m, CompiledUNet2)


@pytest.mark.parametrize("target", TARGETS)
def test_gradcheck_float64(target):
    m = compiled_module(TINY, target)
    names = tuple(k for k, _ in m.named_parameters())
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    fn = lambda xx, *ps: UNet2Function.apply(m.runner, names, xx, *ps)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_optim_and_dataloader_steps_match_torch():
    """An epoch of Adam over a DataLoader (10 samples, batches of 4: last batch of 2) gives the
    same parameters through the compiled module as through torch_module."""
    cfg = dataclasses.replace(CONFIG_MATRIX["default"], dtype="float64", name="br_optim")
    m, ref = pair(cfg, "numpy", seed=5)
    start = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    data = torch.utils.data.TensorDataset(torch.randn(10, 3, 8, 8, generator=g, dtype=torch.float64),
                                          torch.randint(0, 2, (10, 8, 8), generator=g))
    for module in (m, ref):
        opt = torch.optim.Adam(module.parameters(), lr=1e-2)
        for xb, tb in torch.utils.data.DataLoader(data, batch_size=4, shuffle=False):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(module(xb), tb).backward()
            opt.step()
    errs = [rel_err(a.detach(), b.detach()) for a, b in zip(m.parameters(), ref.parameters())]
    assert max(errs) <= 1e-9 and min(rel_err(v, start[k]) for k, v in m.state_dict().items()) > 1e-4


@pytest.mark.parametrize("factory", ["torch_module", "compiled_numpy"])
def test_modules_pickle_and_torch_save(factory, tmp_path):
    cfg = dataclasses.replace(CONFIG_MATRIX["default"], dtype="float64", name="br_pickle")
    m = torch_module(cfg) if factory == "torch_module" else compiled_module(cfg, "numpy")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = m(x)
    path = tmp_path / "m.pt"
    torch.save(m, path)
    back = torch.load(path, weights_only=False)
    assert type(back) is type(m) and torch.equal(back(x), y)
    again = pickle.loads(pickle.dumps(m))
    assert torch.equal(again(x), y) and torch.equal(copy.deepcopy(m)(x), y)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = torch_module(cfg)
    fresh.load_state_dict(torch.load(buf))
    assert rel_err(fresh(x).detach(), y.detach()) <= 1e-12


def test_bad_arguments_are_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="target: expected 'c' or 'numpy', got 'cuda'"):
        compiled_module(TINY, "cuda")
    m = compiled_module(TINY, "numpy")
    with pytest.raises(ValueError, match="x: expected dtype float64, got float32"):
        m(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 1, 4, 4\), got \(2, 1, 4, 5\)"):
        m(torch.zeros(2, 1, 4, 5, dtype=torch.float64))
    assert module_dir(TINY, "numpy") == module_dir(TINY, "numpy") != module_dir(TINY, "c")
    assert module_dir(TINY, "numpy").is_dir()
    out = tmp_path / "mine"
    compiled_module(TINY, "numpy", out_dir=out)
    assert (out / "tiny_numpy.py").is_file()


# ---- DistributedDataParallel over gloo, two processes ----

DDP_CFG = Config(name="br_ddp", dtype="float64", in_c=1, out_c=2, in_h=8, in_w=8, base_c=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, state: dict, x, t, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = compiled_module(DDP_CFG, "numpy", out_dir=out_dir)
        m.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(m)
        half = x.shape[0] // world
        xb, tb = x[rank * half:(rank + 1) * half], t[rank * half:(rank + 1) * half]
        torch.nn.functional.cross_entropy(ddp(xb), tb).backward()
        if rank == 0:
            torch.save({k: p.grad for k, p in m.named_parameters()}, result)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_average_equals_concatenated_batch(tmp_path):
    """Each process takes half of the batch; DDP's averaged gradients equal one process's
    gradients of the mean loss over the concatenated batch (by torch_module: the oracle)."""
    out_dir = str(tmp_path / "gen")
    torch.manual_seed(0)
    m = compiled_module(DDP_CFG, "numpy", out_dir=out_dir)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 2, (6, 8, 8), generator=g)
    result = str(tmp_path / "grads.pt")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), out_dir, state, x, t, result),
                                nprocs=2, join=True)
    got = torch.load(result)
    ref = torch_module(DDP_CFG)
    ref.load_state_dict(state)
    torch.nn.functional.cross_entropy(ref(x), t).backward()
    errs = {k: rel_err(got[k], p.grad) for k, p in ref.named_parameters()}
    assert list(got) == list(errs) and max(errs.values()) <= 1e-10, errs


class _ImagesOnly:
    """A generated module from before the batch axis: forward/backward refuse (N, C, H, W)."""

    def __init__(self, mod):
        self.mod, self.calls = mod, 0

    def _one(self, x):
        if x.ndim != 3:
            raise ValueError(f"x: expected shape {self.mod.IN_SHAPE}, got {x.shape}")
        self.calls += 1

    def forward(self, params, x):
        self._one(x)
        return self.mod.forward(params, x)

    def backward(self, params, x, gy):
        self._one(x)
        return self.mod.backward(params, x, gy)


def test_module_without_batch_axis_runs_image_by_image(monkeypatch):
    """The bridge asks the module whether it takes batches; one that does not is called per
    image, parameter gradients summed (against torch_module)."""
    from unetc.torch_interop import Runner

    cfg = dataclasses.replace(CONFIG_MATRIX["pool3_up3"], dtype="float64", name="br_images")
    m, ref = pair(cfg, "numpy", seed=7)
    fake = _ImagesOnly(m.runner.module)
    monkeypatch.setattr(Runner, "module", property(lambda self: fake))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, cfg.in_c, cfg.in_h, cfg.in_w, generator=g, dtype=torch.float64)
    gy = torch.randn(3, cfg.out_c, cfg.in_h, cfg.in_w, generator=g, dtype=torch.float64)
    y, grads, gx = run(m, x, gy)
    ry, rgrads, rgx = run(ref, x, gy)
    assert m.runner.batched is False and fake.calls == 3 + 1 + 3  # 3 forwards, the probe's image, 3 backwards
    errs = [rel_err(y, ry), rel_err(gx, rgx)] + [rel_err(grads[k], rgrads[k]) for k in rgrads]
    assert max(errs) <= 1e-10, errs
    with pytest.raises(ValueError, match=r"x: expected shape \(2, 9, 12\), got \(2, 9, 11\)"):
        m(torch.zeros(2, 2, 9, 11, dtype=torch.float64))  # a bad batch: its own error, not the probe's
