import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import trainer as quiet_trainer

from research.commands.fit import main
from research.data import FunctionRegressionDataModule
from research.models import create_model
from research.tasks import Regression

CONFIG = Path(__file__).resolve().parents[2] / "configs/regression/sin_mlp.yaml"


trainer = partial(quiet_trainer, max_epochs=1)


def test_loss_falls_when_overfitting_one_batch():
    dm = FunctionRegressionDataModule(num_train=64, num_val=8, num_test=8, batch_size=64)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    task = Regression({"name": "mlp_regressor", "hidden_sizes": [32, 32]})
    opt = torch.optim.Adam(task.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):
        loss = task.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.2  # sin x has variance 1/2 on the interval
    assert losses[-1] < 0.1 * losses[0]


def test_fit_logs_mse_and_mae_and_predict_gives_values(tmp_path):
    dm = FunctionRegressionDataModule(num_train=64, num_val=32, num_test=32, batch_size=16)
    task = Regression({"name": "mlp_regressor", "hidden_sizes": [8]}, optim={"schedule": "cosine"})
    run = trainer(tmp_path)
    run.fit(task, datamodule=dm)
    metrics = run.test(task, datamodule=dm, verbose=False)[0]
    assert set(metrics) == {"test/loss", "test/mae"}
    x, y = dm.test_set.tensors
    with torch.no_grad():
        prediction = task(x)
    assert metrics["test/loss"] == pytest.approx(torch.mean((prediction - y) ** 2).item(), rel=1e-4)
    assert metrics["test/mae"] == pytest.approx(torch.mean((prediction - y).abs()).item(), rel=1e-4)
    assert task.predict_step((x[:5], y[:5]), 0).shape == (5, 1)


def test_mlp_widths_and_activation():
    model = create_model("mlp_regressor", in_features=3, hidden_sizes=[4, 5], activation="relu", out_features=2)
    assert model(torch.zeros(7, 3)).shape == (7, 2)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 4), (4, 5), (5, 2)]
    assert isinstance(list(model.layers)[-1], torch.nn.Linear)  # a linear output: unbounded predictions
    linear = create_model("mlp_regressor", hidden_sizes=[])
    torch.testing.assert_close(linear(torch.tensor([[2.0]])) - linear(torch.tensor([[1.0]])), linear.layers[0].weight)


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown activation 'tahn'; did you mean 'tanh'"):
        create_model("mlp_regressor", activation="tahn")
    with pytest.raises(ValueError, match="every width must be >= 1"):
        create_model("mlp_regressor", hidden_sizes=[0])
    with pytest.raises(ValueError, match=r"expected inputs of shape \(B, 1\), got \(4,\)"):
        create_model("mlp_regressor")(torch.zeros(4))
    task = Regression({"name": "mlp_regressor"})
    with pytest.raises(ValueError, match=r"predictions have shape \(4, 1\) but targets \(4,\)"):
        task.training_step((torch.zeros(4, 1), torch.zeros(4)), 0)
    task = Regression({"name": "mlp_regressor", "in_features": 2})
    with pytest.raises(ValueError, match="in_features=2 but FunctionRegressionDataModule has 1"):
        trainer(tmp_path).fit(task, datamodule=FunctionRegressionDataModule())
    with pytest.raises(ValueError, match="unknown schedule"):
        Regression({"name": "mlp_regressor"}, optim={"schedule": "step"})


@pytest.fixture
def one_thread():
    """Matrices of 64 x 64 gain nothing from threads; on a busy 2-core machine their waits cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_configs_recipe_fits_sin_below_0_02(tmp_path, monkeypatch, one_thread):
    """configs/regression/sin_mlp.yaml as it stands: 1,280 Adam steps, seconds on a CPU."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["research.fit"])
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    cli = main(["fit", "--config", str(CONFIG), *quiet, "--trainer.logger", "false"])
    best_val = cli.trainer.checkpoint_callback.best_model_score  # the run's lowest val/loss
    assert cli.trainer.checkpoint_callback.monitor == "val/loss"
    assert best_val < 0.02  # the notes reached 0.0003
    assert cli.trainer.callback_metrics["test/loss"] < 0.02  # the test after fit, on the best checkpoint
