"""Post-training int8 quantization: what it converts, that predictions survive, and clear refusals."""

import lightning as L
import pytest
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
import yaml
from torch import nn

from research.commands.quantize import main
from research.data import SyntheticDataModule
from research.models import create_model
from research.quantization import model_size_mb, quantize_dynamic, quantize_static, unsupported_static_layers
from research.tasks import ImageClassification

CNN = {"name": "five_layer_cnn", "num_classes": 4, "img_size": 16, "hidden_dim": 64}


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model(CNN["name"], **{k: v for k, v in CNN.items() if k != "name"}).eval()


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x).argmax(-1) == b(x).argmax(-1)).float().mean())


def test_dynamic_quantizes_linear_layers_only():
    model = cnn()
    quantized = quantize_dynamic(model)
    assert isinstance(quantized.hidden, nnqd.Linear) and isinstance(quantized.fc, nnqd.Linear)
    assert type(quantized.features[0]) is nn.Conv2d  # convs stay fp32
    x = torch.randn(64, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), model(x), atol=0.05, rtol=0.05)
    assert model_size_mb(quantized) < 0.8 * model_size_mb(model)  # 4 bytes -> 1 per Linear weight (~40% here)
    assert isinstance(model.hidden, nn.Linear)  # the original is left alone


def test_static_quantizes_convs_after_fusing_and_keeps_predictions():
    model = cnn()
    x = torch.randn(64, 1, 16, 16)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so fusion matters
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    quantized = quantize_static(model, [x[:32], x[32:]])
    kinds = {type(m) for m in quantized.modules()}
    assert {nniq.ConvReLU2d, nnq.Linear, nnq.Quantize, nnq.DeQuantize} <= kinds, kinds  # every conv had a ReLU
    assert nn.BatchNorm2d not in kinds and nn.Conv2d not in kinds  # BatchNorm folded into the int8 convs
    assert agreement(model, quantized, x) >= 0.9
    assert model_size_mb(quantized) < 0.4 * model_size_mb(model)


def test_unsupported_layers_are_named():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 4))
    assert unsupported_static_layers(model) == ["1 (GELU)"]
    with pytest.raises(ValueError, match=r"no kernels for these layers of Sequential: 1 \(GELU\).*--mode dynamic"):
        quantize_static(model, [torch.randn(2, 1, 16, 16)])


def test_an_op_without_int8_kernel_in_forward_is_a_clear_error():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + x  # a float add: quantized tensors need FloatFunctional

    with pytest.raises(ValueError, match=r"Sequential fails in the forward of 1 \(Residual\): .* no int8 kernel"):
        quantize_static(nn.Sequential(nn.ReLU(), Residual()), [torch.randn(2, 1, 8, 8)])


def test_dynamic_on_a_model_without_linear_layers_is_a_clear_error():
    with pytest.raises(ValueError, match=r"nn.Linear layers only and Sequential has none \(its layers: Conv2d, ReLU\)"):
        quantize_dynamic(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()))


def test_command_reports_size_latency_and_accuracy_before_and_after(tmp_path, capsys):
    L.seed_everything(0)
    data = {"num_samples": 96, "num_classes": 4, "img_size": 16, "in_chans": 1, "batch_size": 32}
    task = ImageClassification(CNN, optim={"lr": 3e-3, "schedule": "constant"})
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=SyntheticDataModule(**data))
    trainer.save_checkpoint(tmp_path / "cnn.ckpt")
    config = tmp_path / "cnn.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "research.tasks.ImageClassification", "init_args": {"model": CNN}},
        "data": {"class_path": "research.data.SyntheticDataModule", "init_args": data},
    }))
    args = ["--ckpt_path", str(tmp_path / "cnn.ckpt"), "--config", str(config), "--repeats", "3"]
    for mode in ("static", "dynamic"):
        results = main([*args, "--mode", mode, "--data.init_args.batch_size", "8"])
        fp32, int8 = results["fp32"], results[f"int8 {mode}"]
        assert fp32["acc"] > 0.5  # learnable data, so the comparison means something
        assert abs(int8["acc"] - fp32["acc"]) <= 0.1
        assert int8["size_mb"] < fp32["size_mb"] and int8["speedup"] > 0 and int8["batch"] == 8
    table = capsys.readouterr().out
    assert "| int8 static |" in table and "| int8 dynamic |" in table and "speed-up vs fp32" in table
