"""Device bugs caught on a CPU machine: code run with its modules on the `meta` device under a
dispatch mode that fails any op whose tensors sit on two devices (the CPU-generator-beside-CUDA
kind of bug), the codebook's fp32 distances inside bf16 autocast, the per-device CUDA RNG state,
the bf16 capability check, device-keyed caches, and stage-1 DDP over gloo: dead-code re-init,
a NaN on one rank stopping every rank, and the token-cache wait outlasting the main group's timeout."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_training import ROOT, assert_same_weights, stage1_argv, ws  # noqa: F401 (ws is a fixture)
from tiny_configs import TINY_MASKGIT, TINY_VQGAN
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import common
import fid.feature_stats as feature_stats
from common import load_checkpoint
from models import maskgit
from models.config import MASKGIT_TRAIN, VQGAN_TRAIN, check_section, load_maskgit_config, load_vqgan_config
from models.maskgit import MaskGit, default_precision
from models.schedules import masked_counts
from models.vqgan import Codebook
from training import engine
from training import transformer as stage2
from training import vqgan as stage1

aten = torch.ops.aten
META = torch.device("meta")

# ----------------------------------------------------------------------------- one device per op

# ops that exist to move data between devices
MOVES = {aten._to_copy, aten.copy_, aten._copy_from, aten._copy_from_and_resize, aten.lift_fresh}
# ops that PyTorch lets take CPU index tensors for a tensor on another device
CPU_INDICES = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class OneDevice(TorchDispatchMode):
    """Fails an op whose tensor arguments are on more than one device, as it would on a GPU; 0-dim
    CPU tensors (scalars, which PyTorch allows beside any device), copies between devices and CPU
    index tensors are allowed. Run the code with its modules on `meta`: a stray CPU tensor meeting
    them is then flagged, where plain meta tensors would quietly absorb it."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket not in MOVES:
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if func.overloadpacket in CPU_INDICES:
                tensors = tensors[:1] + [t for t in tensors[1:] if t.device.type != "cpu"]
            devices = {str(t.device) for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                raise AssertionError(f"{func}: tensors on {' and '.join(sorted(devices))}")
        return func(*args, **kwargs)


@pytest.fixture
def meta_masks():
    """Boolean-mask indexing on meta, where no values say how many are selected: take all of them."""
    import torch.fx.experimental._config as fx_config
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        yield


def defaults(table: dict) -> dict:
    """A train_param section with every default."""
    return check_section({}, table, "defaults", "train_param")


def tiny_maskgit(tmp_path: Path) -> MaskGit:
    (tmp_path / "vqgan.yml").write_text(TINY_VQGAN)
    (tmp_path / "maskgit.yml").write_text(TINY_MASKGIT)
    torch.manual_seed(0)
    return MaskGit(load_maskgit_config(tmp_path / "maskgit.yml"))


def test_the_check_flags_a_cpu_tensor_beside_a_meta_one_and_allows_scalars():
    a = torch.ones(2, 3, device=META)
    with OneDevice():
        a * torch.tensor(2.0)  # a 0-dim CPU scalar: allowed, as on CUDA
        torch.ones(3).to(META)  # a copy between devices
        a[torch.tensor([0, 1])]
        with pytest.raises(AssertionError, match="aten.mm.default: tensors on cpu and meta"):
            a @ torch.ones(3, 2)


def test_codebook_embedding_init_stays_on_the_codebooks_device(tmp_path):
    model = tiny_maskgit(tmp_path).to(META)
    with OneDevice():
        model.transformer.init_token_embedding(model.vqgan.codebook.embedding.weight, torch.Generator().manual_seed(0))
    # the projection is drawn on the CPU generator whatever the device: the same start on every device
    cpu = tiny_maskgit(tmp_path)
    again = tiny_maskgit(tmp_path)
    for m in (cpu, again):
        m.transformer.init_token_embedding(m.vqgan.codebook.embedding.weight, torch.Generator().manual_seed(0))
    assert torch.equal(cpu.transformer.tok_emb.weight, again.transformer.tok_emb.weight)


def test_stage2_training_step_keeps_its_tensors_on_the_models_device(tmp_path, monkeypatch, meta_masks):
    monkeypatch.setattr(stage2, "check_finite", lambda *a, **k: None)  # reads the loss's value: not on meta
    monkeypatch.setattr(stage2, "autocast", lambda device: nullcontext())  # no autocast for meta
    model = tiny_maskgit(tmp_path).to(META).train()
    optimizer = torch.optim.AdamW(stage2.param_groups(model.transformer, 0.01), lr=1e-3)
    s = stage2.Stage2(model, model, optimizer, engine.lr_scheduler(optimizer, 10, 2))
    tokens = torch.randint(0, 16, (8, 2, 16), dtype=torch.int16)  # the token cache lives on the CPU
    hole_bank = torch.rand(5, 16) < 0.5
    tcfg = {**defaults(MASKGIT_TRAIN), "hole_mask_share": 0.5}
    with OneDevice():
        out = stage2.train_step(s, tokens, torch.arange(8).view(2, 4), tcfg, 0.1, 0, tmp_path / "last.pt", 1,
                                hole_bank)
    assert out["loss"].device == META and next(model.transformer.parameters()).device == META


def test_stage1_training_step_and_dead_code_reinit_keep_their_tensors_on_the_models_device(tmp_path, monkeypatch,
                                                                                            meta_masks):
    monkeypatch.setattr(stage1, "check_finite", lambda *a, **k: None)
    monkeypatch.setattr(stage1, "autocast", lambda device: nullcontext())
    (tmp_path / "vqgan.yml").write_text(TINY_VQGAN)
    cfg = load_vqgan_config(tmp_path / "vqgan.yml")
    tcfg = {**defaults(VQGAN_TRAIN), "perceptual_weight": 0.0, "disc_start": 0}  # the GAN terms from the first step
    s = stage1.build(cfg, tcfg, META, total_steps=10)
    images = torch.rand(4, 3, 32, 32, device=META)  # the PatchGAN needs 32 pixels or more
    counts = torch.zeros(16, dtype=torch.long)
    counts[:3] = 1  # 13 dead codes
    with OneDevice():
        images = stage1.random_flip(images)
        stage1.train_step(s, images, 0, tcfg, tmp_path / "last.pt")
        renewed = stage1.renew_dead_codes(s.vqgan, counts, images, torch.Generator().manual_seed(0), True, 1)
    assert renewed == 13 and counts.device.type == "cpu" and counts.sum() == 0

    class Reduced(Exception):
        pass

    def all_reduce(tensor, *args, **kwargs):  # NCCL reduces only tensors on the process group's device
        raise Reduced(str(tensor.device))

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    with pytest.raises(Reduced, match="meta"):
        stage1.renew_dead_codes(s.vqgan, counts, images, torch.Generator().manual_seed(0), True, 2)


def test_a_decode_step_keeps_its_tensors_on_the_models_device(tmp_path, monkeypatch):
    # the schedule's counts are worked out on the CPU from the hole sizes, which meta tensors lack
    monkeypatch.setattr(maskgit, "masked_counts", lambda n, total_iter, f: masked_counts(torch.full(n.shape, 16),
                                                                                        total_iter, f))
    model = tiny_maskgit(tmp_path).to(META).eval()
    z = torch.randint(0, 16, (2, 16), device=META)
    mask = torch.zeros(2, 16, dtype=torch.bool, device=META)
    with OneDevice():
        for generators in (None, [torch.Generator().manual_seed(i) for i in range(2)]):
            for scheduler, readout in (("confidence", "sample"), ("halton", "mean")):
                out = model.inpaint(z, mask, total_iter=3, sample_temperature=1.0, top_p=0.9, generators=generators,
                                    scheduler=scheduler, readout=readout, return_history=False)
                images = model.decode_tokens(out.tokens, out.probs)
    assert images.shape == (2, 3, 16, 16) and images.device == META


# ----------------------------------------------------------------------------- precision

def test_codebook_distances_under_bf16_autocast_pick_the_fp32_codes():
    torch.manual_seed(0)
    codebook = Codebook({"num_codebook_vectors": 512, "latent_dim": 64, "beta": 0.25})
    z = torch.randn(4, 64, 8, 8)  # 256 latents, each near a code, as a trained encoder's are
    with torch.no_grad():
        codebook.embedding.weight.copy_(z.permute(0, 2, 3, 1).reshape(-1, 64).repeat(2, 1)
                                        + 0.05 * torch.randn(512, 64))
    exact = codebook.nearest_indices(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chosen = codebook.nearest_indices(z)
        flat = z.permute(0, 2, 3, 1).reshape(-1, 64)
        w = codebook.embedding.weight
        bf16 = (flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * flat @ w.t()).argmin(1)
    assert torch.equal(chosen, exact)
    assert (bf16 != exact.flatten()).float().mean() > 0.1  # the same distances in bf16 choose other codes


@pytest.fixture
def gpu(monkeypatch):
    """A pretend CUDA machine: capability and name as set on the returned namespace."""
    fake = SimpleNamespace(bf16=True, name="NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: fake.bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: fake.name)
    monkeypatch.setattr(common.devices, "_told_no_bf16", set())
    return fake


def test_bf16_only_on_gpus_with_native_bf16_else_fp32_said_once(gpu, capsys):
    cuda = torch.device("cuda")
    assert default_precision(cuda) == "bf16" and common.autocast(cuda).fast_dtype == torch.bfloat16
    assert common.autocast(cuda)._enabled and capsys.readouterr().err == ""
    gpu.bf16, gpu.name = False, "Tesla V100-SXM2-16GB"
    assert default_precision(cuda) == "fp32" and not common.autocast(cuda)._enabled
    assert not common.autocast(cuda)._enabled
    assert capsys.readouterr().err == "note: Tesla V100-SXM2-16GB has no native bf16: running in fp32 instead\n"
    assert default_precision("cpu") == "fp32" and not common.autocast(torch.device("cpu"))._enabled


def test_cuda_rng_state_is_the_ranks_own_device_and_resumes_on_any_gpu_count(gpu, monkeypatch):
    states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    set_calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": set_calls.append(
        (int(state[0]), torch.device(device).index)))
    saved = engine.rng_state(torch.device("cuda", 1))
    assert torch.equal(saved["cuda"], states[1]) and "cuda" not in engine.rng_state(torch.device("cpu"))
    # a 4-rank run resumed on 1 GPU and a 1-rank run resumed on 4: each rank gets a state, no IndexError
    four = [{**saved, "cuda": torch.tensor([r], dtype=torch.uint8)} for r in range(4)]
    engine.restore_rng_state(four, 0, torch.device("cuda", 0))
    for rank in range(4):
        engine.restore_rng_state(four[:1], rank, torch.device("cuda", rank))
    assert set_calls == [(0, 0), (0, 0), (0, 1), (0, 2), (0, 3)]
    set_calls.clear()
    # an older checkpoint's list of every GPU's state: the device's own, else the first; none from a CPU run
    engine.set_rng_state({**saved, "cuda": [states[0], states[1]]}, torch.device("cuda", 1))
    engine.set_rng_state({**saved, "cuda": [states[0], states[1]]}, torch.device("cuda", 3))
    engine.set_rng_state(engine.rng_state(torch.device("cpu")), torch.device("cuda", 0))
    engine.set_rng_state(saved, torch.device("cpu"))
    assert set_calls == [(1, 1), (0, 3)]


# ----------------------------------------------------------------------------- caches

def test_token_cache_key_names_the_device_and_tf32(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"png")
    key = lambda device: stage2.cache_key("digest", {"k": 1}, [tmp_path / "a.png"], True, torch.device(device))  # noqa: E731
    cpu, cuda = key("cpu"), key("cuda")
    assert cpu != cuda
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", not torch.backends.cudnn.allow_tf32)
    assert key("cuda") != cuda and key("cpu") == cpu


def test_fid_statistics_cache_is_per_device(tmp_path, monkeypatch):
    computed = []

    def compute(images, model, *args):
        computed.append(next(model.parameters()).device.type)
        return np.zeros(4), np.eye(4)

    monkeypatch.setattr(feature_stats, "compute_statistics", compute)
    (tmp_path / "gt.csv").write_text("x")
    models = {d: SimpleNamespace(dims=4, weights_sha256="w", parameters=lambda d=d: iter([torch.zeros(1, device=d)]))
              for d in ("cpu", "meta")}
    for device in ("cpu", "cpu", "meta", "meta", "cpu"):
        feature_stats.cached_statistics(tmp_path / "gt.csv", None, models[device], tmp_path / "cache", progress=False)
    assert computed == ["cpu", "meta"]


# ----------------------------------------------------------------------------- two gloo processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(tmp_path: Path, script: str, *args: str, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run `script` as ranks 0 and 1 of a gloo group (the environment torchrun sets), each its own
    process, so that each rank's exit code and output can be checked; a hang fails at `timeout`."""
    worker = tmp_path / "worker.py"
    worker.write_text("import sys\nimport torch\ntorch.set_num_threads(1)\n" + textwrap.dedent(script))
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # the workers import the training scripts
    procs = [subprocess.Popen([sys.executable, str(worker), *args], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in (0, 1)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    return results


STAGE1_WORKER = """
import os
from training import vqgan as stage1
from common import run_cli
from models.config import load_vqgan_file
poison_at = int(os.environ.get("POISON_STEP", "-1"))
if os.environ["RANK"] == os.environ.get("POISON_RANK"):  # this rank's images turn to NaN from that step on
    flip, calls = stage1.random_flip, []
    def poisoned(images):
        calls.append(1)
        return flip(images) * (float("nan") if len(calls) > poison_at else 1.0)
    stage1.random_flip = poisoned
def main():
    args = stage1.parse_args(sys.argv[1:])
    vqgan, step = stage1.train(args, load_vqgan_file(args.config))
    torch.save({"step": step, "vqgan": vqgan.state_dict()}, f"rank{os.environ['RANK']}.pt")
run_cli(main)
"""


def test_stage1_ddp_renews_dead_codes_and_stays_in_step(ws, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    argv = stage1_argv(ws, run, "--batch-size", "2", "--max-steps", "4", "--log-every", "1")[1:]
    ranks = two_ranks(tmp_path, STAGE1_WORKER, *argv)  # reinit_every 4 in the tiny config: one re-init
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stderr[-3000:] + ranks[1].stderr[-3000:]
    weights = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert weights[0]["step"] == weights[1]["step"] == 4
    assert_same_weights(weights[0]["vqgan"], weights[1]["vqgan"])
    renewed = [r["reinit_codes"] for r in engine.RunLog(run).records if "reinit_codes" in r]
    assert renewed[-1] > 0, renewed  # 16 codes, 4 steps of 2 x 2 small images: some stayed unused
    state = load_checkpoint(run / "last.pt")
    assert len(state["rng"]) == 2 and len(state["code_counts"]) == 2


def test_a_nan_on_one_rank_stops_every_rank_with_one_message(ws, tmp_path):  # noqa: F811
    argv = stage1_argv(ws, tmp_path / "run", "--batch-size", "2", "--max-steps", "4")[1:]
    os.environ.update(POISON_RANK="1", POISON_STEP="1")
    try:
        ranks = two_ranks(tmp_path, STAGE1_WORKER, *argv, timeout=90)
    finally:
        del os.environ["POISON_RANK"], os.environ["POISON_STEP"]
    assert [r.returncode for r in ranks] == [2, 2], ranks[0].stderr[-3000:] + ranks[1].stderr[-3000:]
    message = "error: loss is NaN or infinite at step 1 on rank(s) 1 of 2; every rank stops."
    assert message in ranks[0].stderr and "Traceback" not in ranks[0].stderr
    assert "error" not in ranks[1].stderr and "Traceback" not in ranks[1].stderr


def test_the_token_cache_wait_outlasts_the_main_groups_timeout(tmp_path):
    script = """
    import os, time
    from datetime import timedelta
    import torch.distributed as dist
    from training import engine
    init = dist.init_process_group
    dist.init_process_group = lambda **kw: init(**kw, timeout=timedelta(seconds=2))  # a short main timeout
    rank, world, device = engine.setup_distributed("cpu")
    if rank == 0:
        time.sleep(5)  # rank 0 building the token cache
    tokens = engine.broadcast_from_main(torch.arange(6) if rank == 0 else None, world)
    assert torch.equal(tokens, torch.arange(6)), tokens
    dist.destroy_process_group()
    print("ok")
    """
    ranks = two_ranks(tmp_path, script, timeout=60)
    assert [r.stdout.strip() for r in ranks] == ["ok", "ok"], ranks[0].stderr[-2000:] + ranks[1].stderr[-2000:]
