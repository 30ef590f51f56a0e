"""Devices: every store refuses a device it cannot use when it is built, naming the device and what to use
instead; `TrainConfig.device` reaches the model, the collections and the batches, and a device this machine lacks
fails first with a clear error; the models and drop-ins make no tensor on the wrong device in forward."""

from __future__ import annotations

import json

import pytest
import torch
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables import kernels
from embtables.app.trainer import TrainConfig, Trainer
from embtables.cli import main
from embtables.models import DIN, DLRM
from tests.conftest import method_options, random_kjt

TABLES = [et.TableConfig("a", 500, 8), et.TableConfig("b", 40, 8, pooling="mean"), et.TableConfig("c", 3000, 8)]
FBGEMM_CUDA = torch._C._dispatch_has_kernel_for_dispatch_key("fbgemm::asynchronous_complete_cumsum", "CUDA")
NO_CUDA = "this machine has CUDA: the refusal of a missing device cannot be seen"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from embtables.datasets.synthetic import synth_criteo

    path = tmp_path_factory.mktemp("devices") / "data"
    synth_criteo(path, rows=3000, seed=0, scale=1e-4, min_rows=20, part_rows=1500)
    return str(path)


@pytest.mark.skipif(FBGEMM_CUDA, reason="FBGEMM's CUDA build is installed: it runs on CUDA")
@pytest.mark.parametrize("method", ["full", "mixed_dim"])  # mixed_dim: a method with state to move first
def test_fbgemm_cpu_build_refuses_cuda_before_allocating(method):
    budget = 0.5 if method != "full" else None
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"cannot run on {device}: .*fbgemm-gpu-cpu.* CPU build.*backend='torch'"):
            et.build_collection(TABLES, method, budget, backend="fbgemm", device=device)


def test_backends_refuse_other_devices_by_name():
    with pytest.raises(ValueError, match=r"fbgemm backend runs on cpu or cuda, not on meta; use backend='torch'"):
        et.build_collection(TABLES, "hash", 0.5, backend="fbgemm", device="meta")
    for device in ("meta", "cuda"):
        with pytest.raises(ValueError, match=rf"fused backend runs on the CPU, not on {device}"):
            et.build_collection(TABLES, "mixed_dim", 0.5, backend="fused", device=device)
    c = et.build_collection(TABLES, "mixed_dim", 0.5, backend="torch", device="meta")  # torch: any device
    assert {w.device.type for w in c.store.weights()} == {"meta"}
    assert {t.device.type for t in c.method.state_dict().values()} == {"meta"}


@pytest.mark.skipif(torch.cuda.is_available(), reason=NO_CUDA)
def test_torch_backend_on_missing_cuda_is_torchs_own_error():
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        et.build_collection(TABLES, "hash", 0.5, backend="torch", device="cuda")


def test_train_config_device_is_checked(data):
    with pytest.raises(ValueError, match="'gpu0' is not a device"):
        TrainConfig(data=data, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"TrainConfig.device='cuda': torch .* (built without CUDA|no CUDA)"):
            Trainer(TrainConfig(data=data, device="cuda", backend="torch"), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason=NO_CUDA)
def test_cli_train_and_sweep_say_cuda_is_missing(data, tmp_path):
    for command in (["train", "--data", data, "--out", str(tmp_path / "t")],
                    ["sweep", "--data", data, "--methods", "hash", "--budgets", "0.5", "--out", str(tmp_path / "s")]):
        with pytest.raises(SystemExit, match="error: TrainConfig.device='cuda'"):
            main([*command, "--device", "cuda", "--backend", "torch"])


def test_a_cpu_run_records_its_device_and_resumes_from_another(data, tmp_path):
    cfg = TrainConfig(data=data, method="hash", budget=0.2, backend="torch", batch_size=256, max_steps=4,
                      checkpoint_every=2, model_options=dict(bottom=(16,), top=(16,)), device="cpu")
    Trainer(cfg, tmp_path, progress=False).fit(stop_after=2)
    assert json.loads((tmp_path / "config.json").read_text())["device"] == "cpu"
    blob = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    blob["config"]["device"] = "cuda:3"  # as if the run had started on a GPU
    torch.save(blob, tmp_path / "checkpoint.pt")
    metrics = Trainer(cfg, tmp_path, progress=False).fit(resume=True)
    assert metrics["steps"] == 4 and metrics["device"] == "cpu"


def models(method: str) -> list[tuple[torch.nn.Module, torch.Tensor, KeyedJaggedTensor]]:
    torch.manual_seed(0)
    budget = 0.5 if et.get_method(method).compresses else None
    dlrm = DLRM(et.build_collection(TABLES, method, budget, **method_options(method, TABLES, budget)), dense_in=5,
                bottom=(16, 8), top=(16,))
    item_tables = [et.TableConfig("item", 3000, 8, ("hist", "target"), "none")]
    items = et.build_collection(item_tables, method, budget, **method_options(method, item_tables, budget))
    din = DIN(items, et.build_collection([et.TableConfig("user", 100, 8)], "full"), attention_hidden=(8,), mlp=(16,),
              mba_lambda=0.1, item_counts=torch.ones(3000))
    kjt = KeyedJaggedTensor(["hist", "target", "user"], torch.tensor([1, 2, 3, 9, 7, 8, 5, 6]),
                            lengths=torch.tensor([3, 1, 1, 1, 1, 1]))
    return [(dlrm, torch.randn(16, 5), random_kjt(TABLES, batch_size=16, seed=1)), (din, torch.zeros(2, 0), kjt)]


@pytest.mark.parametrize("method", et.list_methods())
def test_models_make_no_tensor_off_their_inputs_device(method):
    """With the default device set to meta, any tensor made in forward or backward without `device=` lands on
    meta and meets the CPU inputs in an op, which raises: so none is made (on CUDA it would be a CPU tensor)."""
    for model, dense, kjt in models(method):
        with kernels.disabled(), torch.device("meta"):  # the C++ kernels take CPU tensors on purpose
            out = model(dense, kjt)
            loss = out.sum() + (model.regularization(kjt) if isinstance(model, DIN) else 0)
            loss.backward()
        assert out.device.type == "cpu" and loss.device.type == "cpu"


def test_drop_ins_make_no_tensor_off_their_inputs_device():
    bag, emb = et.QREmbeddingBag(1000, 8, budget=0.1), et.MultiHashEmbedding(1000, 8, budget=0.1, hot_rows=5,
                                                                             counts=torch.arange(1000, 0, -1))
    ids, offsets, square = torch.tensor([1, 2, 999]), torch.tensor([0, 1]), torch.tensor([[3, 4]])
    with kernels.disabled(), torch.device("meta"):  # the inputs are made before: on the CPU
        for out in (bag(ids, offsets), bag(square), emb(square)):
            out.sum().backward()
            assert out.device.type == "cpu"


def test_heads_run_on_the_meta_device():
    for model, dense, kjt in models("hash"):
        head = model.head.to("meta")
        if isinstance(model, DLRM):
            out = head(dense.to("meta"), torch.randn(16, 24, device="meta"))
        else:
            q, k = torch.randn(2, 8, device="meta"), torch.randn(2, 3, 8, device="meta")
            out = head(q, k, torch.ones(2, 3, dtype=torch.bool, device="meta"), torch.randn(2, 8, device="meta"))
        out.sum().backward()
        assert out.device.type == "meta"


def test_models_on_the_meta_device_need_host_values():
    model, dense, kjt = models("full")[0]
    model.to("meta")
    try:
        model(dense.to("meta"), kjt.to(torch.device("meta"))).sum().backward()
    except (NotImplementedError, RuntimeError) as e:
        pytest.skip(f"a collection reads each batch's ids per feature on the host (embtables.inputs), which a meta "
                    f"tensor cannot give ({type(e).__name__}); test_models_make_no_tensor_off_their_inputs_device "
                    "checks the devices instead")
