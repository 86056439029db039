"""CPU per request by process role: per-pid CPU deltas over a window, divided by requests answered."""

from __future__ import annotations

from harness import RAY_SYSTEM

# Report order: the front door, the request path, the models, then Ray's fixed costs.
ROLE_ORDER = ("HAProxy", "HAProxyManager", "Proxy", "Driver", "TextEncoder", "AudioEncoder", "FusionHead",
              "Controller", RAY_SYSTEM)
# The two roles whose CPU is the models' own work; everything else is serving cost.
ENCODERS = ("TextEncoder", "AudioEncoder")


def cpu_delta_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role used between two ``ProcessSampler.cpu_by_pid()`` snapshots.

    Per pid, so a process that started in the window counts from zero and one that
    exited counts up to its last sample (a per-role total would go negative when a
    process with a long history leaves). The role is the later snapshot's: a process
    title is set only after it starts.
    """
    out: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        used = cpu - before.get(pid, (role, 0.0))[1]
        if used > 0:
            out[role] = out.get(role, 0.0) + used
    return out


def ms_per_request(cpu_s_by_role: dict[str, float], answered: int) -> dict[str, float | None]:
    """Milliseconds of CPU per answered request, per role, in ``ROLE_ORDER`` (unknown roles last)."""
    roles = [r for r in ROLE_ORDER if r in cpu_s_by_role] + sorted(set(cpu_s_by_role) - set(ROLE_ORDER))
    return {r: round(1000.0 * cpu_s_by_role[r] / answered, 2) if answered else None for r in roles}


def serving_ms_per_request(cpu_s_by_role: dict[str, float], answered: int) -> float | None:
    """CPU ms per answered request of every process except the two encoders: the front
    door, Driver, FusionHead, controller and Ray's own processes."""
    if not answered:
        return None
    return round(1000.0 * sum(v for r, v in cpu_s_by_role.items() if r not in ENCODERS) / answered, 2)
