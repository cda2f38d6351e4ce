"""The fast path's training step: forward, loss and backward of one batch, replayed from a CUDA graph.

At the study's batch sizes (64-100) a GPU step is launch-bound: a few hundred small kernels, each
launched from Python. Captured once in a CUDA graph, the step becomes one launch. The optimizer
update stays outside the graph (torch's multi-tensor `_foreach` ops: a handful of launches), so
every optimizer, Lightning's optimizer hooks and `global_step` work as on the default path.

Off CUDA (and for a batch of another size, such as an epoch's last) the same step runs eagerly,
which is what the CPU test compares with the default path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

WARMUP_STEPS = 3  # eager steps before capture: cuDNN/cuBLAS choose and allocate their workspaces


class GraphedTrainStep:
    """Runs `loss_fn(images, labels).backward()` for a module's parameters, replayed from a CUDA graph.

    Whatever `loss_fn` updates in place (the module's epoch sums, BatchNorm statistics) is updated
    by every replay too; the random numbers of dropout are drawn afresh at each replay.
    """

    def __init__(
        self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], module: nn.Module, use_graph: bool = True
    ):
        self.loss_fn, self.module = loss_fn, module
        device = next(module.parameters()).device
        self.use_graph = use_graph and device.type == "cuda"
        self.loss: torch.Tensor | None = None  # the last batch's loss (for a graph, rewritten by each replay)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_batch_size: int | None = None
        self.static_images = self.static_labels = None
        self.graph_grads: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.eager_steps = 0
        self.stream = torch.cuda.Stream(device) if self.use_graph else None

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        loss = self.loss_fn(images, labels)
        loss.backward()
        self.loss = loss.detach()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Leave this batch's gradients in `.grad` of every trainable parameter; return its loss."""
        if self.graph is None and self.use_graph and self.eager_steps >= WARMUP_STEPS:
            self._capture(images, labels)
        if self.graph is not None and labels.shape[0] == self.graph_batch_size:
            self._replay(images, labels)
        else:
            self._eager(images, labels)
        return self.loss

    def _replay(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self._hand_back_grads()
        self.static_images.copy_(images)
        self.static_labels.copy_(labels)
        self.graph.replay()

    def _hand_back_grads(self) -> None:
        """Point `.grad` at the tensors the graph writes: Lightning sets `.grad` to None before each
        validation (`on_validation_model_zero_grad`), which would leave the optimizer nothing to read."""
        for param, grad in self.graph_grads:
            if param.grad is not grad:
                param.grad = grad

    def _eager(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.graph is None:
            self.module.zero_grad(set_to_none=True)
        else:  # accumulate into the graph's gradient tensors, which the optimizer reads
            self._hand_back_grads()
            self.module.zero_grad(set_to_none=False)
        if self.stream is not None:  # warm-up on the stream the capture will use
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self._forward_backward(images, labels)
            torch.cuda.current_stream().wait_stream(self.stream)
        else:
            self._forward_backward(images, labels)
        self.eager_steps += 1

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Record the step for this batch shape; on failure warn once and stay eager."""
        self.static_images, self.static_labels = images.clone(), labels.clone()
        # Gradients set to None so that backward allocates them inside the graph's memory pool.
        self.module.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self._forward_backward(self.static_images, self.static_labels)
        except Exception as error:  # noqa: BLE001 - whatever fails the capture, the eager step still works
            torch.cuda.synchronize()
            self.use_graph = False
            self.module.zero_grad(set_to_none=True)
            rank_zero_warn(f"CUDA graph capture failed, training continues eagerly: {error}")
            return
        self.graph, self.graph_batch_size = graph, labels.shape[0]
        self.graph_grads = [(p, p.grad) for p in self.module.parameters() if p.grad is not None]
        rank_zero_info(f"fast path: training step captured in a CUDA graph (batches of {self.graph_batch_size})")
