"""The fast path (trainer=gpu_fast, trainer=cpu_fast) computes what the default path computes: checked
on the CPU, where its graphed step runs eagerly, with the same data order and the same random draws."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from fmnist.data.datamodule import FashionMNISTDataModule, InMemoryImages, epoch_batches
from fmnist.training.callbacks import epoch_share
from fmnist.training.console import _epoch_batches
from fmnist.training.fit import train
from fmnist.training.setup import fast_path_notes
from fmnist.utils.errors import FmnistError
from tests.conftest import assert_error_names, compose_train

FIELDS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "steps", "epochs")


def _run(tiny_root, out, model: str, *extra: str, epochs: int = 3, cpu: bool = True) -> tuple[dict, dict]:
    cfg = compose_train(
        [
            f"model={model}",
            f"data.root={tiny_root}",
            "data.search_dirs=[]",
            f"output_dir={out}",
            f"trainer.max_epochs={epochs}",
            "trainer.enable_progress_bar=false",
            "data.batch_size=30",
            *(["trainer.deterministic=true"] if cpu else []),
            "logger={}",
            *extra,
            *(["trainer.accelerator=cpu"] if cpu else []),
        ]
    )
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    weights = torch.load(out / metrics["best_checkpoint"], weights_only=True)["state_dict"]
    return metrics, weights


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "rnn", "bilstm"])
def test_fast_path_follows_the_default_path(tiny_root, tmp_path, model):
    # 400 tiny images, 10 % validation: 360 / 30 = 12 batches per epoch, in chunks of 5 (5 + 5 + 2).
    default, default_weights = _run(tiny_root, tmp_path / "default", model)
    fast, fast_weights = _run(
        tiny_root, tmp_path / "fast", model, "trainer=cpu_fast", "data.batches_per_step=5", "data.eval_batch_size=30"
    )
    assert fast["steps"] == default["steps"] == 36
    for key in FIELDS:
        assert fast[key] == pytest.approx(default[key], rel=1e-5, abs=1e-6), key
    for name, tensor in default_weights.items():
        torch.testing.assert_close(fast_weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    summary = json.loads((tmp_path / "fast" / "metrics.json").read_text())
    assert summary["steps"] == 36


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["cnn", "rnn", "bilstm"])
def test_fast_path_on_the_gpu_learns_what_the_default_gpu_path_learns(tiny_root, tmp_path, model):
    # On the GPU the fast path replays a CUDA graph and cuDNN picks its kernels (trainer.benchmark): the same
    # data order and draws, but float sums in another order, so the accuracies agree within a few images.
    default, _ = _run(tiny_root, tmp_path / "default", model, "trainer=gpu", epochs=2, cpu=False)
    fast, _ = _run(
        tiny_root,
        tmp_path / "fast",
        model,
        "trainer=gpu_fast",
        "data.batches_per_step=5",
        "data.eval_batch_size=30",
        epochs=2,
        cpu=False,
    )
    assert not default["device"].startswith("cpu") and fast["device"] == default["device"]  # the GPU's name
    assert fast["steps"] == default["steps"] == 24
    assert fast["val/acc"] == pytest.approx(default["val/acc"], abs=2 / 40)  # 40 validation images
    assert fast["test/acc"] == pytest.approx(default["test/acc"], abs=3 / 120)  # 120 test images
    assert fast["train/loss"] == pytest.approx(default["train/loss"], rel=0.05)


def test_chunks_cover_each_epoch_once_in_the_default_order(tiny_root):
    from fmnist.data.datamodule import FashionMNISTDataModule

    plain = FashionMNISTDataModule(root=str(tiny_root), search_dirs=[], batch_size=30)
    chunked = FashionMNISTDataModule(root=str(tiny_root), search_dirs=[], batch_size=30, batches_per_step=5)
    plain.setup(), chunked.setup()
    torch.manual_seed(0)
    batches = list(plain.train_dataloader())
    torch.manual_seed(0)
    chunks = list(chunked.train_dataloader())
    assert [len(c) for c in chunks] == [5, 5, 2]
    flat = [b for chunk in chunks for b in chunk]
    assert len(flat) == len(batches)
    for (x1, y1), (x2, y2) in zip(batches, flat, strict=False):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


class _ReplayLikeAGraph:
    """Stands in for a captured CUDA graph on the CPU: replay writes the batch's gradients into the
    tensors that were `.grad` at capture time, wherever `.grad` points now."""

    def __init__(self, step):
        self.step = step
        self.grads = [(p, p.grad) for p in step.module.parameters() if p.grad is not None]

    def replay(self):
        import torch.nn.functional as F

        params = [p for p, _ in self.grads]
        loss = F.cross_entropy(self.step.module(self.step.static_images), self.step.static_labels)
        for grad, value in zip([g for _, g in self.grads], torch.autograd.grad(loss, params), strict=False):
            grad.copy_(value)


def test_graph_gradients_survive_lightning_dropping_grad():
    """Lightning sets `.grad` to None before each validation; the optimizer must still see the
    gradients that the graph writes (the bug: training silently stopped after the first epoch)."""
    import torch.nn.functional as F

    from fmnist.models import SimpleRNN
    from fmnist.models.graphed import GraphedTrainStep

    torch.manual_seed(0)
    model = SimpleRNN().eval()  # eval: BatchNorm statistics do not move between the two passes
    images, labels = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    step = GraphedTrainStep(model.training_loss, model)
    step._eager(images, labels)  # leaves .grad allocated, as the capture does
    step.static_images, step.static_labels = images.clone(), labels.clone()
    step.graph, step.graph_batch_size = _ReplayLikeAGraph(step), 8
    step.graph_grads = step.graph.grads

    model.zero_grad(set_to_none=True)  # what Lightning's on_validation_model_zero_grad does
    step(images, labels)
    expected = torch.autograd.grad(F.cross_entropy(model(images), labels), [p for p, _ in step.graph_grads])
    for (param, _), grad in zip(step.graph_grads, expected, strict=False):
        assert param.grad is not None
        torch.testing.assert_close(param.grad, grad)


@pytest.mark.parametrize(
    "override, words", [("trainer.gradient_clip_val=1.0", "gradient_clip_val"), ("data.num_workers=2", "num_workers")]
)
def test_fast_path_refuses_what_it_cannot_do_in_one_line(tiny_root, tmp_path, override, words):
    from fmnist.utils.errors import FmnistError

    cfg = compose_train(["model=rnn", "trainer=gpu_fast", f"data.root={tiny_root}", f"output_dir={tmp_path}", override])
    with pytest.raises(FmnistError, match=words):
        train(cfg)
    GlobalHydra.instance().clear()


def test_an_epochs_length_counts_the_chunks_batches_once():
    # 360 images in batches of 30: 12 batches, in chunks of 5 (5 + 5 + 2)
    data = FashionMNISTDataModule(batch_size=30, batches_per_step=5)
    data.train_set = InMemoryImages(torch.zeros(360, 1, 28, 28, dtype=torch.uint8), torch.zeros(360, dtype=torch.long))
    assert epoch_batches(data, 3) == 12  # the last chunk holds what is left
    assert epoch_batches(data, 2) == 10  # trainer.limit_train_batches=2: two whole chunks
    assert epoch_batches(data, 2, world_size=2) == 6  # each of two processes takes half the split
    trainer = SimpleNamespace(num_training_batches=2, world_size=1, datamodule=data)
    assert epoch_share(trainer, data) == {"epoch_images": 300, "train_images": 360}
    assert "10 batches (2 steps of up to 5)" in _epoch_batches(trainer)


def test_lightnings_note_on_one_training_batch_says_a_fast_step_is_a_chunk():
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        with fast_path_notes(100):
            L.Trainer(limit_train_batches=1, logger=False, enable_progress_bar=False, accelerator="cpu")
        L.Trainer(limit_train_batches=1, logger=False, enable_progress_bar=False, accelerator="cpu")
    finally:
        logger.removeHandler(handler)
    fast, default = [m for m in seen if "limit_train_batches" in m]
    assert "100" in fast and "1 batch per epoch" not in fast
    assert "1 batch per epoch" in default  # the default path's batch is one batch: Lightning says it as it is


@pytest.mark.parametrize(
    "state",
    [{"chunk_done": 5}, {"chunk_done": 0}, {"chunk_done": "2"}, {"chunk_done": 2, "chunk_rng": "x"}, {"other": 1}],
)
def test_a_checkpoints_cut_chunk_is_a_count_within_a_chunk(state):
    data = FashionMNISTDataModule(batch_size=30, batches_per_step=5)
    with pytest.raises(FmnistError) as info:
        data.load_state_dict(state)
    assert_error_names(str(info.value), f"chunk_done={state.get('chunk_done')!r}")
    data.load_state_dict({"chunk_done": 2, "chunk_rng": None})  # what cut_chunk saves
