"""Honest cost measurement: synchronised wall-clock timing, summaries, FLOPs, peak memory, the machine."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work; CUDA kernels run asynchronously, so a timer without this measures nothing."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def stopwatch(device: torch.device | str) -> Iterator[dict]:
    """`with stopwatch(dev) as t: ...` then t["ms"]: synchronised before and after."""
    result: dict = {}
    synchronize(device)
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result["ms"] = (time.perf_counter() - start) * 1000.0


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, p90, mean, min, max and count (p90 by linear interpolation between order statistics)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    rank = 0.9 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    p90 = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return {
        "median": statistics.median(ordered),
        "p90": p90,
        "mean": statistics.fmean(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, as counted by PyTorch (matmuls; use eager attention so attention is counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


class PeakMemory:
    """Peak memory of a phase: GPU max allocated, or on CPU the process's resident high-water mark (VmHWM)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # "5" resets VmHWM to the current resident size (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @property
    def kind(self) -> str:
        return "cuda max_memory_allocated" if self.device.type == "cuda" else "process peak RSS (VmHWM)"


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What the numbers were measured on."""
    import transformers

    info = {
        "cpu": _cpu_model(),
        # The vector instructions torch's CPU kernels use (DEFAULT, AVX2, AVX512, ...): machines that differ here round
        # differently, and a chaotic fine-tuning can end elsewhere (benchmarks/README.md, the stability study).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
