"""The serve config the benchmark deploys: ``serve_config.yaml`` with the bundle, a loopback
port and ``--set`` overrides applied, and the facts the benchmark reads back from it."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

APP_NAME = "sentiment"
DEPLOYMENTS = ("Driver", "TextEncoder", "AudioEncoder", "FusionHead")
TOP_LEVEL_KEYS = ("proxy_location", "http_options", "grpc_options", "logging_config")
# An override value that removes the key instead of setting it.
DROP = object()


def set_path(tree: dict, dotted: str, value) -> None:
    """Overrides: ``Deployment.key.sub=value`` (a deployment by name), ``app.key=value``
    (the application), or a top-level key such as ``logging_config.enable_access_log=false``.
    ``value`` ``DROP`` removes the key."""
    name, *keys = dotted.split(".")
    app = tree["applications"][0]
    if name in TOP_LEVEL_KEYS:
        target, keys = tree, [name, *keys]
    elif name == "app":
        target = app
    else:
        target = next((d for d in app.setdefault("deployments", []) if d["name"] == name), None)
        if target is None:
            target = {"name": name}
            app["deployments"].append(target)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    if value is DROP:
        target.pop(keys[-1], None)
    else:
        target[keys[-1]] = value


def fixed_replicas(deployment: str, n: int) -> dict:
    """Overrides that run ``deployment`` at exactly ``n`` replicas: ``num_replicas`` set and
    its ``autoscaling_config`` removed (Serve refuses both at once)."""
    return {f"{deployment}.num_replicas": n, f"{deployment}.autoscaling_config": DROP}


def derive_config(base: Path, bundle: Path, port: int, overrides: dict[str, object] | None = None) -> dict:
    """``serve_config.yaml`` with the bundle, a loopback port and any overrides applied."""
    config = yaml.safe_load(Path(base).read_text())
    config = copy.deepcopy(config)
    config.setdefault("http_options", {}).update({"host": "127.0.0.1", "port": port})
    app = config["applications"][0]
    app.setdefault("args", {})["bundle"] = str(Path(bundle).resolve())
    for dotted, value in (overrides or {}).items():
        set_path(config, dotted, value)
    return config


def scale_up_trigger(config: dict) -> tuple[int | None, float]:
    """The lowest concurrency that can make an autoscaled deployment add a replica (its
    ``target_ongoing_requests``), and the longest time its autoscaler takes to decide
    (look-back window plus upscale delay, with Ray's defaults where unset)."""
    from ray.serve.config import AutoscalingConfig

    triggers = []
    for dep in config["applications"][0].get("deployments", []):
        auto = dep.get("autoscaling_config")
        if auto and auto.get("max_replicas", 1) > auto.get("min_replicas", 1):
            full = AutoscalingConfig(**auto)
            triggers.append((full.target_ongoing_requests, full.look_back_period_s + full.upscale_delay_s))
    if not triggers:
        return None, 0.0
    return int(min(t for t, _ in triggers)), max(d for _, d in triggers)


def deployment_option(config: dict, name: str, *keys, default=None):
    """``config``'s value at ``keys`` under the deployment ``name``, or ``default``."""
    for dep in config["applications"][0].get("deployments", []):
        if dep["name"] == name:
            value = dep
            for key in keys:
                if not isinstance(value, dict) or key not in value:
                    return default
                value = value[key]
            return value
    return default
