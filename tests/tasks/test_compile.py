"""The tasks' ``compile`` and ``channels_last`` options: the compiled model runs every call, checkpoints unchanged.

Most tests compile with the ``aot_eager`` backend (dynamo's graph capture and AOTAutograd's
forward/backward split, without Inductor's code generation), so the wiring is tested in seconds;
one slow test runs Inductor itself.
"""

from functools import partial

import pytest
import torch
from conftest import trainer as quiet_trainer
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd

from research.callbacks import AdversarialTraining, RobustEvaluation
from research.data import SyntheticDataModule
from research.tasks import ImageClassification, Regression
from research.tasks.base import compile_arguments

trainer = partial(quiet_trainer, num_sanity_val_steps=0, limit_val_batches=0)
SGD = {"name": "sgd", "lr": 0.05, "weight_decay": 0.0, "schedule": "constant"}


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


def task(**options) -> ImageClassification:
    return ImageClassification(cnn(), num_classes=4, optim=SGD, **options)


def data(**kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(num_samples=32, num_classes=4, img_size=8, in_chans=1, batch_size=8, **kwargs)


class Counting:
    """An AOTAutograd backend that counts the calls of the compiled forward and backward graphs."""

    def __init__(self):
        self.forward = self.backward = 0
        self.backend = aot_autograd(fw_compiler=self._wrap("forward"), bw_compiler=self._wrap("backward"))

    def _wrap(self, which: str):
        def compiler(graph: torch.fx.GraphModule, example_inputs):
            def run(*args):
                setattr(self, which, getattr(self, which) + 1)
                return graph(*args)
            return make_boxed_func(run)
        return compiler


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # no compiled code (or recompile count) leaks from one test into the next
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("bad", [1, "yes", {"mode": "default", "modee": "x"}])
def test_a_bad_compile_option_stops_at_construction(bad):
    with pytest.raises(ValueError, match="compile"):
        task(compile=bad)


def test_compile_options_are_torch_compiles_arguments():
    assert compile_arguments(False) is None
    assert compile_arguments(True) == {}
    assert compile_arguments({"mode": "max-autotune-no-cudagraphs"}) == {"mode": "max-autotune-no-cudagraphs"}


def test_the_attack_callbacks_run_forward_and_backward_through_the_compiled_model():
    counting = Counting()
    compiled, eager = task(compile={"backend": counting.backend}), task()
    for t in (compiled, eager):
        torch.manual_seed(1)
        trainer(callbacks=[AdversarialTraining(eps=0.1, steps=3)], max_steps=2).fit(t, datamodule=data())
    # Two steps of 3 attack iterations (each a forward and a backward with respect to the input), then the step
    assert (counting.forward, counting.backward) == (2 * 4, 2 * 4)
    for a, b in zip(compiled.state_dict().values(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the same training, up to float rounding

    counting.forward = counting.backward = 0
    robust = RobustEvaluation(eps=0.1, num_samples=8, pgd_steps=2)
    trainer(callbacks=[robust], limit_val_batches=1).validate(compiled, datamodule=data())
    assert counting.backward >= 2 and counting.forward >= 2 + 1  # PGD's steps, then the attacked images


def test_compiled_training_under_bf16_autocast():
    counting = Counting()
    t = task(compile={"backend": counting.backend})
    trainer(callbacks=[AdversarialTraining(eps=0.1, steps=2)], max_steps=2, precision="bf16-mixed").fit(
        t, datamodule=data())
    assert counting.backward >= 2 * 3
    assert all(torch.isfinite(p).all() for p in t.parameters())


def test_checkpoints_of_a_compiled_task_load_without_compile_and_back(tmp_path):
    compiled = task(compile={"backend": "aot_eager"})
    t = trainer(tmp_path, max_steps=2)
    t.fit(compiled, datamodule=data())
    assert compiled.model._compiled_call_impl is not None  # the model itself is compiled, not wrapped
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    path = tmp_path / "compiled.ckpt"
    t.save_checkpoint(path)

    x = torch.rand(4, 1, 8, 8)
    compiled.eval()
    expected = compiled(x)
    eager = ImageClassification.load_from_checkpoint(path, model=cnn(), compile=False).eval()
    assert eager.compile_kwargs is None
    torch.testing.assert_close(eager(x), expected)

    # and back: an eager checkpoint into a compiled task, by Trainer (configure_model compiles before the restore)
    eager_path = tmp_path / "eager.ckpt"
    t = trainer(tmp_path, max_steps=2)
    t.fit(eager, datamodule=data())
    t.save_checkpoint(eager_path)
    again = task(compile={"backend": "aot_eager"})
    trainer(tmp_path).validate(again, datamodule=data(), ckpt_path=eager_path)
    assert again.model._compiled_call_impl is not None
    eager.eval(), again.eval()
    torch.testing.assert_close(again(x), eager(x))


def test_a_task_compiles_once_across_trainer_runs():
    t = Regression(nn.Linear(3, 1), compile={"backend": "aot_eager"})
    t.configure_model()
    compiled_call = t.model._compiled_call_impl
    t.configure_model()
    assert compiled_call is not None and t.model._compiled_call_impl is compiled_call


def test_channels_last_converts_the_weights_and_the_input_and_keeps_the_outputs():
    contiguous, nhwc = task(), task(channels_last=True)
    nhwc.load_state_dict(contiguous.state_dict())
    for t in (contiguous, nhwc):
        trainer().validate(t, datamodule=data())  # the Trainer's start converts the model
    convs = [m.weight for m in nhwc.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # 3x3 kernels with several channels: really NHWC
    x = torch.rand(5, 1, 8, 8)
    assert nhwc.normalize(x).is_contiguous(memory_format=torch.channels_last)
    contiguous.eval(), nhwc.eval()
    torch.testing.assert_close(nhwc(x), contiguous(x), rtol=1e-5, atol=1e-6)
    assert nhwc.hparams.channels_last and not contiguous.hparams.channels_last  # a checkpoint keeps the option


def test_channels_last_and_compile_train_together():
    t = task(channels_last=True, compile={"backend": "aot_eager"})
    trainer(callbacks=[AdversarialTraining(eps=0.1, steps=2)], max_steps=2).fit(t, datamodule=data())
    assert t.model[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_inductor_compiles_an_adversarial_training_step():
    compiled, eager = task(compile=True), task()
    for t in (compiled, eager):
        torch.manual_seed(1)
        trainer(callbacks=[AdversarialTraining(eps=0.1, steps=2)], max_steps=2).fit(t, datamodule=data())
    for a, b in zip(compiled.state_dict().values(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
