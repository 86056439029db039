"""Kubernetes (KubeRay) packaging: the serving image, RayService/RayJob manifests and their generator.

``generate`` derives serve_config.gpu.yaml and each manifest's ``serveConfigV2`` from
``serve_config.yaml``.

Nothing here is imported by the model or the deployments; the cluster runs exactly the
same ``deployments.app:build_app`` as a laptop.
"""
