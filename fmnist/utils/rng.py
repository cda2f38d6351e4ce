"""torch's random state (the CPU generator and, once CUDA is initialised, every GPU's) as one value to save
and put back: what dropout and the augmentations draw from."""

from __future__ import annotations

import torch


def random_state() -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """A copy of torch's global random state: {"cpu": state, "cuda": [one state per GPU]}."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_random_state(state: dict) -> None:
    """Put back a state from `random_state` (its GPU states only where CUDA is initialised)."""
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_random_state(value: object) -> bool:
    """Whether `value` has the form `random_state` returns (byte tensors): checked before one from a file is set."""

    def byte_tensor(tensor: object) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8 and tensor.dim() == 1

    return (
        isinstance(value, dict)
        and value.keys() == {"cpu", "cuda"}
        and byte_tensor(value["cpu"])
        and value["cpu"].numel() == torch.get_rng_state().numel()
        and isinstance(value["cuda"], list)
        and all(byte_tensor(t) for t in value["cuda"])
    )
