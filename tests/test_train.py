"""Training: CLI, presets, objectives, resume exactness, 2-process DDP, a short run that learns."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aribbps.datasets import DatasetError
from aribbps.config import get_config
from aribbps.models import build_nets
from aribbps.models.deepen import deepen
from aribbps.train import (
    InsObjective,
    ModeUnavailable,
    SigObjective,
    TrainOptions,
    build_objective,
    get_preset,
    load_checkpoint,
    train,
)
from aribbps.train.__main__ import build_parser, main, resolve_options
from aribbps.train.objectives import keep_logits_float32
from aribbps.train.weight_average import WeightAverage
from aribbps.weights import load_model, save_model, state_tensors

REPO = Path(__file__).resolve().parents[1]
TINY = get_config("tiny-context")


def _smooth_images(folder: Path, n: int, size: int = 8, seed: int = 0) -> Path:
    """Structured images: a colour gradient in a random direction, plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    for i in range(n):
        slope = rng.uniform(-12, 12, 2)
        base = x * slope[0] + y * slope[1] + rng.uniform(60, 190)
        colour = base[..., None] + rng.uniform(-40, 40, 3)
        pixels = np.clip(colour + rng.normal(0, 2, colour.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the tiny nets gain nothing from more, and OpenMP
    threads spinning on a shared, busy machine make steps 10-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _smooth_images(tmp_path_factory.mktemp("data") / "imgs", 16)


def _opts(data: Path, save: Path, **kw) -> TrainOptions:
    base = dict(
        mode="sig", config="tiny-context", dataset_type="filedataset", data_dir=str(data),
        save_dir=str(save), valid_num=3, batch_size=2, num_iters=6, log_interval=2,
        valid_interval=4, lr=3e-3, dropout=0.2, device="cpu",
    )
    base.update(kw)
    return TrainOptions(**base)


def _exit_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


# --- CLI ---------------------------------------------------------------------------

def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data_dir", "--data-dir", "--batch_size", "--preset", "--master_port", "--num_gpus"):
        assert option in out
    with pytest.raises(SystemExit) as info:
        main(["combine", "--help"])
    assert info.value.code == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "IN128"], "unknown preset 'IN128'"),
        (["--config", "tiny-context", "--data_dir", "/no/such/dir"], "data folder '/no/such/dir' does not exist"),
        (["--config", "tiny-context", "--dataset_type", "cifar10"], "CIFAR-10 batches not found"),
        (["--config", "tiny-context", "--batch_size", "0"], "--batch_size must be >= 1"),
        (["--config", "tiny-context", "--amp", "--device", "cpu"], "--amp needs a CUDA device"),
        (["--config", "tiny-context", "--qp_path", "qp.txt"], "only used by --mode finetune"),
        (["--config", "tiny", "--mode", "finetune"], "needs per-image qp lists from 'generate-finetune'"),
        (["--config", "tiny-context", "--mode", "finetune"], "no latent model to fine-tune"),
        (["--config", "no-such-config"], "unknown config 'no-such-config'"),
        (["--config", "tiny", "--kl_warmup", "-1"], "--kl_warmup must be >= 0"),
        (["--config", "tiny", "--ema", "1"], "--ema must be in [0, 1)"),
        (["--config", "tiny", "--mode", "ins", "--kl-warmup", "5"], "--kl_warmup applies to the latent model"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    extra: list[str], message: str, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--mode", "sig", "--data_dir", str(images), "--save_dir", str(tmp_path / "run"), *extra]
    code, err = _exit_code(argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_data_dir_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_code(["--mode", "ins", "--save_dir", str(tmp_path)], capsys)
    assert code == 2 and "--data_dir" in err and len(err.strip().splitlines()) == 1


def test_preset_fills_settings_and_flags_override(monkeypatch: pytest.MonkeyPatch, images: Path) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    row = get_preset("IN64(small)", "ins")
    assert (row.lr, row.total_batch, row.num_iters, row.valid_interval) == (2e-4, 128, 740_000, 2_800)
    assert (row.decay_rate, row.decay_interval, row.dropout, row.valid_num) == (0.99, 2_800, 0.0, 50_000)
    assert get_preset("cifar10", "finetune").num_iters == 56_000
    assert get_preset("in32", "sig").dropout == 0.2
    parser = build_parser()
    common = ["--data-dir", str(images), "--save-dir", "x", "--device", "cpu"]
    args = parser.parse_args(["--mode", "ins", "--preset", "imagenet32", "--num_gpus", "4", "--lr", "1e-3", *common])
    opts, nprocs = resolve_options(args)
    assert nprocs == 4 and opts.batch_size == 32  # table's total 128 over 4 processes
    assert opts.lr == 1e-3 and opts.num_iters == 700_000 and opts.valid_num == 50_000
    assert opts.config == "imagenet32" and opts.decay_rate == 0.965
    args = parser.parse_args(["--mode", "ins", "--preset", "cifar10", "--config", "tiny-context",
                              "--batch_size", "3", *common])
    opts, nprocs = resolve_options(args)
    assert nprocs == 1 and opts.batch_size == 3 and opts.config == "tiny-context" and opts.dropout == 0.3
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: this process is one of 2
    opts, nprocs = resolve_options(parser.parse_args(["--mode", "sig", "--preset", "cifar10", *common]))
    assert nprocs == 1 and opts.batch_size == 8


# --- objectives ---------------------------------------------------------------------

def test_objectives_train_one_net_and_freeze_the_other() -> None:
    torch.manual_seed(0)
    sig, ins = build_nets(TINY, dropout=0.1)
    obj = build_objective("ins", TINY, sig, ins)
    assert isinstance(obj, InsObjective) and set(obj.trained()) == {"ins"}
    assert not any(p.requires_grad for p in sig.parameters()) and not sig.training
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    bpsp, metrics = obj.loss(x)
    assert bpsp.requires_grad and abs(bpsp.item() - 4.0) < 1e-5  # untrained heads: 1 bit per bit
    assert set(metrics) == {"bpsp", "bpsp_p5", "bpsp_p6", "bpsp_p7", "bpsp_p8"}
    assert isinstance(build_objective("sig", TINY, *build_nets(TINY)), SigObjective)
    with pytest.raises(ModeUnavailable, match="finetune"):
        build_objective("finetune", TINY, *build_nets(TINY))


def test_sig_objective_with_latent_model_adds_latent_bits() -> None:
    cfg = get_config("tiny")
    torch.manual_seed(0)
    sig, ins = build_nets(cfg, dropout=0.1)
    obj = build_objective("sig", cfg, sig, ins)
    assert "latent" in dict(obj.trained()["sig"].named_children())
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    bpsp, metrics = obj.loss(x)
    assert set(metrics) == {"bpsp", "bpsp_p1", "bpsp_p2", "bpsp_p3", "bpsp_p4", "bpsp_latent"}
    planes = sum(metrics[f"bpsp_p{k}"] for k in range(1, 5))
    assert torch.allclose(bpsp.detach(), planes + metrics["bpsp_latent"])
    bpsp.backward()
    assert all(p.grad is not None for p in sig.parameters())  # every latent weight is used (DDP)
    with pytest.raises(ModeUnavailable, match="generate-finetune"):
        build_objective("finetune", cfg, *build_nets(cfg))


def test_latent_weight_scales_the_loss_but_not_the_reported_bits() -> None:
    cfg = get_config("tiny")
    torch.manual_seed(0)
    obj = build_objective("sig", cfg, *build_nets(cfg))
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    torch.manual_seed(1)
    full, ref = obj.loss(x)
    obj.latent_weight = 0.25
    torch.manual_seed(1)  # the same latent sample
    loss, metrics = obj.loss(x)
    planes = sum(metrics[f"bpsp_p{k}"] for k in range(1, 5))
    assert torch.allclose(metrics["bpsp"], ref["bpsp"]) and torch.allclose(metrics["bpsp"], full.detach())
    assert torch.allclose(loss.detach(), planes + 0.25 * metrics["bpsp_latent"])
    assert metrics["bpsp_latent"].abs() > 1e-3  # the test would not tell the weights apart otherwise


def test_kl_warmup_raises_the_latent_weight_linearly(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    original = SigObjective.loss

    def spy(self: SigObjective, x: torch.Tensor, names=None):  # noqa: ANN001
        if self.sig.training:
            seen.append(self.latent_weight)
        return original(self, x, names)

    monkeypatch.setattr(SigObjective, "loss", spy)
    train(_opts(images, tmp_path / "run", config="tiny", num_iters=6, kl_warmup=4, dropout=0.0))
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_mixed_precision_keeps_probability_maths_float32() -> None:
    torch.manual_seed(0)
    sig, ins = build_nets(TINY)
    with torch.no_grad():
        for p in ins.parameters():
            p.add_(torch.randn_like(p))  # confident predictions
    keep_logits_float32(ins)
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    head = ins.head(5, 1).entropy
    seen = []
    head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    ref, _ = InsObjective(TINY, sig, ins).loss(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bpsp, _ = InsObjective(TINY, sig, ins).loss(x)
    assert seen[-1] == torch.float32 and bpsp.dtype == torch.float32
    assert torch.isfinite(bpsp) and abs(bpsp.item() - ref.item()) < 0.05 * ref.item()
    assert all(p.dtype == torch.float32 for p in ins.parameters())


# --- resume -------------------------------------------------------------------------

def _checkpoint_state(save: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(save)
    flat = {f"{m}.{k}": v for m, sd in ckpt["modules"].items() for k, v in sd.items()}
    for pid, state in ckpt["optimizer"]["state"].items():
        flat.update({f"adam.{pid}.{k}": v for k, v in state.items()})
    if ckpt.get("ema") is not None:
        flat.update({f"ema.{i}": v for i, v in enumerate(ckpt["ema"]["average"])})
    return flat


@pytest.mark.parametrize("config", ["tiny-context", "tiny"])
def test_resume_continues_bit_exactly(config: str, images: Path, tmp_path: Path) -> None:
    # 7 training images, batch 2: 3 batches per epoch, so 4 + 4 steps cross epochs
    # on both sides of the resume; dropout, random crops, flips and (tiny) the
    # latent samples all draw randomness.
    kw = dict(random_crop=4 if config == "tiny" else 6, hflip=True, valid_num=9, valid_interval=3,
              decay_interval=3, decay_rate=0.5, config=config, kl_warmup=6 if config == "tiny" else 0,
              ema=0.6 if config == "tiny" else 0.0)
    full = tmp_path / "full"
    train(_opts(images, full, num_iters=8, **kw))
    part = tmp_path / "part"
    first = train(_opts(images, part, num_iters=4, **kw))
    assert first.iterations == 4
    ckpt = load_checkpoint(part / "checkpoint.pt")
    assert ckpt["iteration"] == 4 and (ckpt["epoch"], ckpt["batch_in_epoch"]) == (1, 1)
    assert {"torch", "numpy", "python"} <= set(ckpt["rng"][0]) and ckpt["config"] == get_config(config).to_dict()
    assert ckpt["args"]["num_iters"] == 4
    result = train(_opts(images, part, num_iters=8, resume=str(part), **kw))
    assert result.iterations == 8
    a, b = _checkpoint_state(full), _checkpoint_state(part)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert load_checkpoint(full)["scheduler"] == load_checkpoint(part)["scheduler"]
    assert load_model(full / "final_sig.safetensors")[3] == load_model(part / "final_sig.safetensors")[3]
    log = (part / "train.log").read_text().splitlines()
    headers = [line for line in log if line.startswith("#")]
    assert len(headers) == 2 and "start_iter=4" in headers[1]


def test_resume_at_another_lr_keeps_the_decay_reached(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    kw = dict(decay_interval=3, decay_rate=0.5, valid_interval=4, lr=3e-3)
    train(_opts(images, run, num_iters=4, **kw))
    assert load_checkpoint(run)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1.5e-3)
    train(_opts(images, run, num_iters=8, resume=str(run), resume_lr=1e-3, **kw))
    ckpt = load_checkpoint(run)
    assert ckpt["scheduler"]["base_lrs"] == [1e-3]
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2.5e-4)  # decayed again at 6
    header = [line for line in (run / "train.log").read_text().splitlines() if line.startswith("#")][-1]
    assert "start_iter=4" in header and "lr=5.000e-04" in header
    with pytest.raises(ValueError, match="resume_lr needs resume"):
        train(_opts(images, tmp_path / "fresh", resume_lr=1e-3))


def test_lr_on_resume_is_the_checkpoints_unless_given(images: Path) -> None:
    parser = build_parser()
    common = ["--mode", "ins", "--data-dir", str(images), "--save-dir", "x", "--device", "cpu", "--resume", "r"]
    assert resolve_options(parser.parse_args(common))[0].resume_lr is None
    assert resolve_options(parser.parse_args([*common, "--lr", "3e-5"]))[0].resume_lr == 3e-5
    fresh = parser.parse_args(["--mode", "ins", "--data-dir", str(images), "--save-dir", "x", "--lr", "3e-5"])
    assert resolve_options(fresh)[0].resume_lr is None


def test_mixed_sizes_train_in_size_grouped_batches_and_resume_bit_exactly(tmp_path: Path) -> None:
    data = _smooth_images(tmp_path / "mixed", 10, size=8)
    _smooth_images(tmp_path / "big", 6, size=16, seed=1)
    for f in sorted((tmp_path / "big").iterdir()):
        f.rename(data / f"big_{f.name}")
    with pytest.raises(DatasetError, match="different sizes"):
        train(_opts(data, tmp_path / "stacked", valid_num=0, num_iters=4, batch_size=4))
    # 128 pixels: batches of two 8x8 images or one 16x16 image
    kw = dict(batch_pixels=128, hflip=True, valid_num=3, valid_select="hash", valid_interval=3)
    full = tmp_path / "full"
    train(_opts(data, full, num_iters=16, **kw))
    part = tmp_path / "part"
    train(_opts(data, part, num_iters=5, **kw))
    ckpt = load_checkpoint(part / "checkpoint.pt")
    assert ckpt["batch_pixels"] == 128 and ckpt["epoch"] == 0 and ckpt["batch_in_epoch"] == 5
    train(_opts(data, part, num_iters=16, resume=str(part), **kw))
    a, b = _checkpoint_state(full), _checkpoint_state(part)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert load_checkpoint(part)["epoch"] == load_checkpoint(full)["epoch"] >= 1
    assert "batch=128pxx1" in (part / "train.log").read_text()


# --- DDP ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "launcher, mode, config",
    [("torchrun", "ins", "tiny-context"), ("num_gpus", "sig", "tiny")],  # tiny: SIG + latent model
)
def test_two_process_ddp_on_cpu(launcher: str, mode: str, config: str, images: Path, tmp_path: Path) -> None:
    save, debug = tmp_path / "ddp", tmp_path / "debug"
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "aribbps.train"]
    else:  # the paper code's way: the trainer spawns the processes itself
        port = 20000 + os.getpid() % 20000
        cmd = [sys.executable, "-m", "aribbps.train", "--num_gpus", "2", "--master_port", str(port)]
    cmd += [
        "--mode", mode, "--config", config, "--data_dir", str(images),
        "--save_dir", str(save), "--valid_num", "3", "--batch_size", "2", "--num_iters", "4",
        "--log_interval", "2", "--valid_interval", "2", "--lr", "3e-3", "--dropout", "0.2",
        "--device", "cpu", "--debug-dir", str(debug),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((debug / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["hash"] == ranks[1]["hash"]  # DDP kept the replicas identical
    assert ranks[1]["written"] == []  # only rank 0 writes
    assert "checkpoint.pt" in ranks[0]["written"] and f"final_{mode}.safetensors" in ranks[0]["written"]
    ckpt = load_checkpoint(save)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["iteration"] == 4
    assert load_model(save / f"final_{mode}.safetensors")[3] == ranks[0]["hash"]
    log = (save / "train.log").read_text()
    assert log.count("# aribbps.train") == 1 and "processes=2" in log and "batch=2x2" in log


def write_cifar_batches(folder: Path) -> Path:
    """A fake CIFAR-10 python-batches folder: data_batch_1..5 and test_batch, 2 random images each."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [0, 1]}, f)
    return folder


def test_cifar10_batches_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    code, err = _exit_code([
        "--mode", "ins", "--config", "tiny-context", "--dataset_type", "cifar10", "--data_dir", str(tmp_path),
        "--save_dir", str(tmp_path / "run"), "--valid_num", "2", "--batch_size", "2", "--num_iters", "2",
        "--device", "cpu", "--random-crop", "8",
    ], capsys)
    assert code == 0, err
    assert "valid_num=2" in (tmp_path / "run" / "train.log").read_text()


# --- a short run that learns, the exports and combine ------------------------------

def test_short_training_learns_and_exports(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _smooth_images(tmp_path / "imgs", 24, seed=1)
    run = tmp_path / "sig"
    code, _ = _exit_code([
        "--mode", "sig", "--config", "tiny-context", "--data_dir", str(data), "--save_dir", str(run),
        "--valid_num", "4", "--batch_size", "4", "--num_iters", "36", "--log_interval", "6",
        "--valid_interval", "12", "--lr", "5e-3", "--device", "cpu", "--hflip",
    ], capsys)
    assert code == 0
    valid = [float(line.split("valid ")[1].split()[0]) for line in (run / "train.log").read_text().splitlines()
             if "valid " in line and "valid -" not in line]
    assert len(valid) == 3
    assert valid[-1] < 3.6 < 4.0  # 4 planes start at 1 bit each (8.0 for all 8 planes)
    assert valid[-1] < valid[0]
    cfg, sig, ins, _ = load_model(run / "best_sig.safetensors")
    assert cfg == TINY
    torch.manual_seed(0)
    _, fresh_ins = build_nets(TINY)
    assert all(torch.equal(a, b) for a, b in zip(ins.state_dict().values(), fresh_ins.state_dict().values()))

    # ins run starting from a model file: the frozen SIG is exported unchanged.
    ins_run = tmp_path / "ins"
    train(_opts(data, ins_run, mode="ins", config=None, init=str(model_file), num_iters=2, valid_num=0))
    assert not (ins_run / "best_ins.safetensors").exists()  # no validation set
    _, init_sig, init_ins, _ = load_model(model_file)
    _, out_sig, out_ins, _ = load_model(ins_run / "final_ins.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(init_sig.state_dict().values(), out_sig.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(init_ins.state_dict().values(), out_ins.state_dict().values()))

    combined = tmp_path / "model.safetensors"
    code, _ = _exit_code(["combine", "--sig", str(run / "best_sig.safetensors"),
                          "--ins", str(ins_run / "final_ins.safetensors"), "-o", str(combined)], capsys)
    assert code == 0
    got = state_tensors(*load_model(combined)[1:3])
    want_sig = state_tensors(sig, out_ins)
    assert got.keys() == want_sig.keys() and all(torch.equal(got[k], want_sig[k]) for k in got)

    other = tmp_path / "other.safetensors"
    save_model(other, get_config("tiny"), *build_nets(get_config("tiny")))
    code, err = _exit_code(["combine", "--sig", str(other), "--ins", str(combined), "-o", str(tmp_path / "x")],
                           capsys)
    assert code == 2 and "differ" in err and len(err.strip().splitlines()) == 1


def test_init_with_a_deeper_config_grows_the_model(
    tmp_path: Path, images: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deeper = dataclasses.replace(TINY, name="tiny-context-deep", sig_plane_depth=2, ins_entropy_depth=2)
    config = tmp_path / "deep.json"
    config.write_text(deeper.to_json())
    run = tmp_path / "deep"
    train(_opts(images, run, mode="ins", config=str(config), init=str(model_file), num_iters=2, valid_num=0))
    cfg, out_sig, _, _ = load_model(run / "final_ins.safetensors")
    assert cfg == deeper
    _, init_sig, init_ins, _ = load_model(model_file)
    grown_sig, _ = deepen(TINY, (init_sig, init_ins), deeper)
    assert all(torch.equal(a, b) for a, b in zip(grown_sig.state_dict().values(), out_sig.state_dict().values()))

    wider = tmp_path / "wide.json"
    wider.write_text(dataclasses.replace(TINY, space_width=16).to_json())
    code, err = _exit_code(["--mode", "ins", "--config", str(wider), "--init", str(model_file), "--data_dir",
                            str(images), "--save_dir", str(tmp_path / "wide"), "--num_iters", "1"], capsys)
    assert code == 2 and "does not fit --init" in err and "space_width (8 -> 16)" in err


def test_train_only_the_refinements_of_a_model_grown_into_a_split_config(
    tmp_path: Path, images: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = dataclasses.replace(TINY, name="tiny-context-split", split_first_step=True, refine_width=8)
    config = tmp_path / "split.json"
    config.write_text(split.to_json())
    run = tmp_path / "split"
    train(_opts(images, run, mode="ins", config=str(config), init=str(model_file), num_iters=3, valid_num=0,
                train_only="refine", dropout=0.0))
    cfg, _, out_ins, _ = load_model(run / "final_ins.safetensors")
    assert cfg == split
    _, _, init_ins, _ = load_model(model_file)
    before, after = init_ins.state_dict(), out_ins.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the trunk is as --init had it
    assert any(k.startswith("refine.") and v.abs().sum() > 0 for k, v in after.items() if "conv_out" in k)
    code, err = _exit_code(["--mode", "ins", "--config", str(config), "--init", str(model_file), "--data_dir",
                            str(images), "--save_dir", str(tmp_path / "none"), "--num_iters", "1",
                            "--train-only", "nothing_like_this"], capsys)
    assert code == 2 and "no trained parameter" in err


def test_ema_exports_and_validates_the_weight_average(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "ema"
    train(_opts(images, run, mode="ins", num_iters=6, valid_interval=6, ema=0.5, dropout=0.0))
    ckpt = load_checkpoint(run)
    average = ckpt["ema"]["average"]
    _, _, exported, _ = load_model(run / "final_ins.safetensors")
    params = list(exported.parameters())
    assert len(params) == len(average) and all(torch.equal(p, a) for p, a in zip(params, average))
    raw = ckpt["modules"]["ins"]
    assert any(not torch.equal(raw[k], exported.state_dict()[k]) for k in raw)
    logged = float([line for line in (run / "train.log").read_text().splitlines() if "valid " in line][-1]
                   .split("valid ")[1].split()[0])
    assert load_model(run / "best_ins.safetensors")[3] == load_model(run / "final_ins.safetensors")[3]
    assert logged == pytest.approx(ckpt["best_valid_bpsp"], abs=1e-4)


def test_weight_average_update_and_swap() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    avg = WeightAverage([p], 0.9)
    with torch.no_grad():
        p.fill_(10.0)
    avg.update(0)  # decay min(0.9, 1/10) = 0.1
    assert torch.allclose(avg.average[0], torch.full((3,), 9.0))
    with avg.swapped_in():
        assert torch.equal(p.detach(), avg.average[0])
    assert torch.equal(p.detach(), torch.full((3,), 10.0))
    state = avg.state_dict()
    other = WeightAverage([p], 0.9)
    other.load_state_dict(state)
    assert torch.equal(other.average[0], avg.average[0])
    with pytest.raises(ValueError, match="does not fit"):
        WeightAverage([torch.nn.Parameter(torch.zeros(4))], 0.9).load_state_dict(state)


def test_ema_resumed_from_a_checkpoint_without_one_starts_from_its_weights(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train(_opts(images, run, mode="ins", num_iters=4, valid_interval=4, dropout=0.0))
    before = load_checkpoint(run)["modules"]["ins"]
    train(_opts(images, run, mode="ins", num_iters=5, valid_interval=5, dropout=0.0, ema=0.5, resume=str(run)))
    assert "no weight average" in capsys.readouterr().err
    ckpt = load_checkpoint(run)
    after = ckpt["modules"]["ins"]
    names = [n for n, p in build_nets(TINY)[1].named_parameters()]
    d = 5 / 14  # the ramp min(0.5, (1 + t) / (10 + t)) at step t = 4
    for name, avg in zip(names, ckpt["ema"]["average"]):
        assert torch.allclose(avg, d * before[name] + (1 - d) * after[name], atol=1e-6), name
    train(_opts(images, run, mode="ins", num_iters=6, valid_interval=6, dropout=0.0, resume=str(run)))
    assert "weight average is dropped" in capsys.readouterr().err
