"""Choosing the device a job runs on (one place for every command)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from artgen.core.errors import ArtgenError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    import torch  # here, not at the top: available_memory("cpu") needs no PyTorch

    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not str(name).startswith("cuda:"):
        raise ArtgenError(f"device {name!r}: choose auto, cpu, cuda or mps")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ArtgenError(f"device {name!r}: CUDA is not available on this machine")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ArtgenError("device 'mps': Apple's Metal backend is not available on this machine")
    return torch.device(name)


def available_memory(device: Any) -> int | None:
    """Bytes that a run may still use on ``device`` (a torch.device, or "cpu"; None: unknown)."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if kind == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None
