"""The application builder that ``serve_config.yaml`` imports.

    import_path: deployments.app:build_app
    args: {bundle: artifacts/demo-bundle, settings: {...}}
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict
from ray.serve import Application

from deployments.audio_encoder import AudioEncoderDeployment
from deployments.driver import Driver, DriverSettings
from deployments.fusion_head import FusionHeadDeployment
from deployments.text_encoder import TextEncoderDeployment
from model.bundle import Bundle

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str = "artifacts/demo-bundle"
    settings: DriverSettings = DriverSettings()
    # Per-deployment ``.options()`` overrides keyed by deployment name, for callers
    # that build the app in Python (tests, benchmarks) rather than from a config file.
    deployments: dict[str, dict] = {}


def resolve_bundle(path: str) -> Path:
    """Absolute paths as given; relative ones against the working directory, then the project root."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate.resolve()
    return (PROJECT_ROOT / candidate).resolve()


def build_app(args: dict) -> Application:
    parsed = AppArgs(**(args or {}))
    bundle_path = resolve_bundle(parsed.bundle)
    # Fail the deploy now, with a clear message, if the bundle or its weights are bad,
    # before any replica starts.
    Bundle.load(bundle_path).load_fusion()
    path = str(bundle_path)

    def configured(deployment):
        return deployment.options(**parsed.deployments.get(deployment.name, {}))

    return configured(Driver).bind(
        configured(TextEncoderDeployment).bind(path),
        configured(AudioEncoderDeployment).bind(path),
        configured(FusionHeadDeployment).bind(path),
        path,
        parsed.settings.model_dump(),
    )
