"""The KubeRay manifests, the serving image and the serveConfigV2 generator.

Docker and Kubernetes do not run here, so everything is checked by construction:

* structure, always: serveConfigV2 and serve_config.gpu.yaml are what ``python -m
  cluster.generate`` makes from serve_config.yaml (drift fails); the @serve.deployment
  defaults equal serve_config.yaml; each config passes Ray's own ``ServeDeploySchema`` and the app's
  ``AppArgs``; head without CPUs, GPU workers with requests, limits and tolerations,
  autoscaling, readiness through Serve, the Service on 8000, image tags matching the pinned
  Ray; the Dockerfile only names files that exist; job entrypoints parse with the real CLIs.
* schema, when ``../shared/reference/kuberay`` (beside the repository) holds the KubeRay v1
  CRDs: every manifest validates against their openAPIV3Schema, made strict (unknown fields
  are errors: Kubernetes would silently drop them). RayJob has no CRD there, so its
  ``rayClusterSpec`` is validated against the RayCluster spec schema.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from cluster import generate

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
# KubeRay's CRDs (ray-project/kuberay, ray-operator/config/crd/bases/): beside the clone as CI
# has them, or wherever KUBERAY_CRD_DIR says.
CRD_DIR = Path(os.environ.get("KUBERAY_CRD_DIR", REPO.parent / "shared" / "reference" / "kuberay"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAY_VERSION = next(re.fullmatch(r"ray\[[^\]]*\]==(.+)", d).group(1)
                   for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray["))
PYTHON_TAG = "py311"
PROJECT_VERSION = PYPROJECT["project"]["version"]

SERVICES = {"rayservice.yaml": "gpu", "rayservice-cpu.yaml": "cpu"}
JOBS = {"rayjob-batch.yaml": "gpu", "rayjob-train.yaml": "gpu"}
MANIFESTS = {**SERVICES, **JOBS}
MODEL_DEPLOYMENTS = ("TextEncoder", "AudioEncoder", "FusionHead")
# RayJobSpec's fields (KubeRay ray-operator/apis/ray/v1/rayjob_types.go); no RayJob CRD is
# in the reference folder, so the fields outside rayClusterSpec are checked against this.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule",
}


def load(name: str) -> dict:
    docs = list(yaml.safe_load_all((CLUSTER / name).read_text()))
    assert len(docs) == 1, name
    return docs[0]


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterConfig"] if doc["kind"] == "RayService" else doc["spec"]["rayClusterSpec"]


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    spec = cluster_spec(doc)
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(group["groupName"], group["template"]["spec"]) for group in spec.get("workerGroupSpecs", [])]
    return pods


def serve_config(doc: dict) -> dict:
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def deployments(config: dict) -> dict:
    [app] = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


def quantity(value) -> float:
    """A Kubernetes CPU/GPU quantity as a number ("500m" -> 0.5)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ---- serveConfigV2: generated, current, valid -------------------------------------


def test_generated_configs_are_current():
    for variant in generate.VARIANTS:
        assert variant.target.read_text() == generate.render(variant), (
            f"{variant.target.name} is out of date: run `python -m cluster.generate`")
    assert generate.main(["--check"]) == 0


@pytest.mark.parametrize("variant", generate.VARIANTS, ids=lambda v: v.name)
def test_drift_is_detected(tmp_path, variant):
    """A change to serve_config.yaml that a generated file does not carry must be caught."""
    base = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    base["applications"][0]["args"]["settings"]["limits"]["max_text_chars"] += 1
    changed = tmp_path / "serve_config.yaml"
    changed.write_text(yaml.safe_dump(base, sort_keys=False))
    assert generate.render(variant, changed) != variant.target.read_text()


def test_gpu_config_is_the_laptop_config_with_gpus():
    """serve_config.gpu.yaml: every deployment of serve_config.yaml, model deployments on GPU
    fractions that fit one card, full batches possible, and the laptop's bind address."""
    from ray.serve.schema import ServeDeploySchema

    from deployments.app import AppArgs

    config = yaml.safe_load((REPO / "serve_config.gpu.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    [app] = config["applications"]
    AppArgs(**app["args"])
    assert config["http_options"]["host"] == "127.0.0.1"
    deps, laptop = deployments(config), deployments(yaml.safe_load((REPO / "serve_config.yaml").read_text()))
    assert list(deps) == list(laptop)
    gpus = {n: deps[n]["ray_actor_options"].get("num_gpus", 0) for n in MODEL_DEPLOYMENTS}
    assert all(0 < g <= 1 for g in gpus.values()) and sum(gpus.values()) <= 1.0 + 1e-9, gpus
    for name in MODEL_DEPLOYMENTS:
        assert deps[name]["max_ongoing_requests"] >= deps[name]["user_config"]["max_batch_size"]
        assert deps[name]["user_config"]["max_batch_size"] > laptop[name]["user_config"]["max_batch_size"]


def _code_deployments() -> dict:
    from deployments.app import AudioEncoderDeployment, Driver, FusionHeadDeployment, TextEncoderDeployment

    return {d.name: d for d in (Driver, TextEncoderDeployment, AudioEncoderDeployment, FusionHeadDeployment)}


def _plain(value):
    """An option as serve_config.yaml writes it (pydantic configs as dicts)."""
    return value.model_dump(exclude_unset=True) if hasattr(value, "model_dump") else value


def test_decorator_defaults_equal_serve_config():
    """serve_config.yaml is the one source of resources, queue bounds and batch sizes: every
    option a @serve.deployment decorator sets must be there too, with the same value."""
    from deployments.replica import BatchingConfig

    laptop = deployments(yaml.safe_load((REPO / "serve_config.yaml").read_text()))
    code = _code_deployments()
    assert set(code) == set(laptop)
    for name, deployment in code.items():
        config = deployment._deployment_config
        options = set(config.user_configured_option_names) - {"name"}
        required = {"ray_actor_options", "max_ongoing_requests", "max_queued_requests"}
        if name in MODEL_DEPLOYMENTS:
            required.add("user_config")
        assert required <= options, (name, required - options)
        for option in sorted(options):
            assert option in laptop[name], f"{name}: the decorator sets {option}, serve_config.yaml does not"
            in_code = _plain(getattr(deployment, option, None) if option in ("ray_actor_options", "user_config")
                             else getattr(config, option))
            assert in_code == laptop[name][option], (
                f"{name}.{option}: decorator {in_code!r} != serve_config.yaml {laptop[name][option]!r}")
        if name in MODEL_DEPLOYMENTS:
            BatchingConfig(**deployment.user_config)


def test_decorator_check_catches_a_contradiction(monkeypatch):
    """The check above is not vacuous: a decorator default that differs from the file fails it."""
    text = deployments(yaml.safe_load((REPO / "serve_config.yaml").read_text()))["TextEncoder"]
    changed = _code_deployments()["TextEncoder"].options(max_ongoing_requests=text["max_ongoing_requests"] + 1)
    monkeypatch.setattr("deployments.app.TextEncoderDeployment", changed)
    with pytest.raises(AssertionError, match="TextEncoder.max_ongoing_requests"):
        test_decorator_defaults_equal_serve_config()


def test_overlay_rejects_unknown_deployments():
    base = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    with pytest.raises(generate.OverlayError):
        generate.apply_overlay(base, {"applications": {"sentiment": {"deployments": {"TextEncodr": {}}}}})


def test_splice_keeps_the_rest_of_the_manifest():
    text = "a: 1\nspec:\n  serveConfigV2: |\n    old: 1\n\n    older: 2\n  next: 3\n"
    assert generate.splice(text, ["new: 1"]) == "a: 1\nspec:\n  serveConfigV2: |\n    new: 1\n  next: 3\n"


@pytest.mark.parametrize("name", SERVICES)
def test_serve_config_v2_passes_ray_serve_schema(name):
    from ray.serve.schema import ServeDeploySchema

    from deployments.app import AppArgs

    config = serve_config(load(name))
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == 8000
    assert str(getattr(schema.proxy_location, "value", schema.proxy_location)) == "EveryNode"
    [app] = config["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    AppArgs(**{k: v for k, v in app["args"].items()})  # settings typos fail here
    laptop = deployments(yaml.safe_load((REPO / "serve_config.yaml").read_text()))
    assert set(deployments(config)) == set(laptop), "the cluster must run the same deployments"


@pytest.mark.parametrize("name,flavour", SERVICES.items())
def test_gpu_fractions_and_autoscaling(name, flavour):
    config = serve_config(load(name))
    deps = deployments(config)
    gpus = {n: deps[n]["ray_actor_options"].get("num_gpus", 0) for n in deps}
    if flavour == "gpu":
        assert all(0 < gpus[n] <= 1 for n in MODEL_DEPLOYMENTS), gpus
        assert gpus["Driver"] == 0
        # One replica of each model deployment fits on a one-GPU worker pod.
        assert sum(gpus[n] for n in MODEL_DEPLOYMENTS) <= 1.0 + 1e-9
    else:
        assert not any(gpus.values()), gpus
    for dep_name in (*MODEL_DEPLOYMENTS, "Driver"):
        auto = deps[dep_name]["autoscaling_config"]
        assert "num_replicas" not in deps[dep_name]
        assert 1 <= auto["min_replicas"] <= auto["initial_replicas"] <= auto["max_replicas"]
        assert auto["max_replicas"] > auto["min_replicas"]
    for dep_name in MODEL_DEPLOYMENTS:
        # Batches can only fill if a replica may hold that many requests at once.
        user = deps[dep_name].get("user_config", {})
        assert deps[dep_name]["max_ongoing_requests"] >= user.get("max_batch_size", 1)


@pytest.mark.parametrize("name,flavour", SERVICES.items())
def test_worker_pods_fit_one_replica_of_each(name, flavour):
    doc = load(name)
    deps = deployments(serve_config(doc))
    need_cpu = sum(d["ray_actor_options"]["num_cpus"] for d in deps.values())
    need_gpu = sum(d["ray_actor_options"].get("num_gpus", 0) for d in deps.values())
    for group in cluster_spec(doc)["workerGroupSpecs"]:
        [container] = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert quantity(limits["cpu"]) >= need_cpu, (group["groupName"], need_cpu)
        assert quantity(limits.get("nvidia.com/gpu", 0)) >= need_gpu


# ---- the Kubernetes side ---------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_kind_and_api_version(name):
    doc = load(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == ("RayService" if name.startswith("rayservice") else "RayJob")
    assert doc["metadata"]["name"]


@pytest.mark.parametrize("name,flavour", MANIFESTS.items())
def test_head_and_worker_groups(name, flavour):
    doc = load(name)
    spec = cluster_spec(doc)
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    if doc["kind"] == "RayService" or "-m jobs" in doc["spec"]["entrypoint"]:
        assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        [container] = group["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], "Ray sizes itself from limits; requests must match"
        if "nvidia.com/gpu" in resources["limits"]:
            assert flavour == "gpu"
            assert quantity(resources["requests"]["nvidia.com/gpu"]) >= 1
            tolerations = group["template"]["spec"]["tolerations"]
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    has_gpu_group = any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
                        for g in spec["workerGroupSpecs"])
    assert has_gpu_group == (flavour == "gpu")


@pytest.mark.parametrize("name", SERVICES)
def test_service_readiness_and_upgrade_strategy(name):
    doc = load(name)
    spec = doc["spec"]
    ports = spec["serveService"]["spec"]["ports"]
    assert any(p["port"] == 8000 and p["targetPort"] == 8000 for p in ports)
    assert spec["excludeHeadPodFromServeSvc"] is True
    for group in spec["rayClusterConfig"]["workerGroupSpecs"]:
        [container] = group["template"]["spec"]["containers"]
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"path": "/-/healthz", "port": 8000}  # Serve's proxy health route
        assert {"containerPort": 8000, "name": "serve"} in container["ports"]
    assert spec["upgradeStrategy"]["type"] in {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
    text = (CLUSTER / name).read_text()
    assert "# type: NewClusterWithIncrementalUpgrade" in text, "the alternative strategy is documented in place"


@pytest.mark.parametrize("name,flavour", MANIFESTS.items())
def test_images_match_the_pinned_ray(name, flavour):
    expected = f"{PROJECT_VERSION}-ray{RAY_VERSION}-{PYTHON_TAG}-{flavour}"
    for _, pod in pod_specs(load(name)):
        for container in pod["containers"]:
            assert container["image"].rsplit(":", 1)[1] == expected, container["image"]


@pytest.mark.parametrize("name", [m for m in MANIFESTS if m.startswith("rayservice")])
def test_serving_pods_use_the_same_serve_request_path_as_make_run(name):
    from deployments.ray_env import SERVE_ENV

    for where, pod in pod_specs(load(name)):
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV, (where, container["name"])


@pytest.mark.parametrize("name", MANIFESTS)
def test_volumes_and_secrets(name):
    storage = list(yaml.safe_load_all((CLUSTER / "storage.yaml").read_text()))
    claims = {d["metadata"]["name"] for d in storage if d["kind"] == "PersistentVolumeClaim"}
    doc = load(name)
    for where, pod in pod_specs(doc):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (where, mount)
            for env in container.get("env", []):
                if re.search(r"KEY|TOKEN|SECRET|PASSWORD", env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (where, env["name"])
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    if doc["kind"] == "RayService":
        # The bundle path in serveConfigV2 lies on a volume mounted on every pod.
        bundle = serve_config(doc)["applications"][0]["args"]["bundle"]
        for where, pod in pod_specs(doc):
            mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])]
            assert any(bundle.startswith(m.rstrip("/") + "/") for m in mounts), (where, bundle)


def test_batch_job_entrypoint_parses_with_the_real_cli():
    from jobs.cli import build_parser

    doc = load("rayjob-batch.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs"]
    args = build_parser().parse_args(argv[3:])
    assert args.mode == "score"
    head = dict(pod_specs(doc))["head"]
    head_mounts = [m["mountPath"] for m in head["containers"][0]["volumeMounts"] if not m.get("readOnly")]
    assert any(args.out.startswith(m + "/") for m in head_mounts), "the driver writes shards on the head"


def test_train_job_entrypoint_parses_with_the_real_cli():
    from model.training.config import build_parser

    argv = shlex.split(load("rayjob-train.yaml")["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "model.training"]
    args = build_parser().parse_args(argv[3:])
    assert str(args.out).startswith("/models/") and str(args.manifest).startswith("/data/")


# ---- the image -------------------------------------------------------------------


def dockerfile_lines() -> list[str]:
    # Join continuation lines, drop comments.
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_base_image_matches_the_pins():
    lines = dockerfile_lines()
    args = dict(re.match(r"ARG (\w+)=(\S+)", line).groups() for line in lines if re.match(r"ARG \w+=", line))
    assert args["RAY_VERSION"] == RAY_VERSION
    assert args["PYTHON"] == PYTHON_TAG and args["FLAVOUR"] == "gpu"
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-${FLAVOUR}" in lines
    low, high = re.findall(r"[\d.]+", PYPROJECT["project"]["requires-python"])
    assert tuple(map(int, low.split("."))) <= (3, 11) < tuple(map(int, high.split(".")))


def test_dockerfile_copies_only_existing_files_and_runs_real_commands():
    lines = dockerfile_lines()
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    copies = [line.split()[1:] for line in lines if line.startswith("COPY")]
    assert copies
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
            assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), (
                f"COPY {source} is excluded by Dockerfile.dockerignore")
    run = " ".join(line for line in lines if line.startswith("RUN"))
    for script in re.findall(r"python (\S+\.py)", run):
        assert (REPO / script).is_file(), script
    for module in re.findall(r"import ([\w., ]+?);", run)[0].split(","):
        module = module.strip()
        if module != "ray":
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module
    # No secret and no bundle is baked into the image.
    for line in lines:
        if line.startswith(("ENV", "ARG")):
            assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", line), line
    assert not any("artifacts" in " ".join(parts) for parts in copies)
    assert "artifacts" not in allowed and ".venv" not in allowed


def test_image_requirements_are_the_pyproject_pins():
    from cluster.requirements import dependencies

    deps = dependencies()
    assert f"ray[serve,data]=={RAY_VERSION}" in deps
    assert any(d.startswith("torch==") for d in deps)
    assert deps == PYPROJECT["project"]["dependencies"]


# ---- bundles from object storage -------------------------------------------------


def test_fetch_bundle_copies_and_checks(tiny_bundle, tmp_path):
    from cluster.fetch_bundle import fetch_bundle
    from model.errors import BundleError

    dest = tmp_path / "models" / "tiny"
    bundle = fetch_bundle(f"file://{tiny_bundle}", dest)
    assert bundle.name == "tiny-test" and (dest / "text_encoder").is_dir()
    with pytest.raises(FileExistsError):
        fetch_bundle(str(tiny_bundle), dest)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text("{}")
    with pytest.raises(BundleError):
        fetch_bundle(str(broken), tmp_path / "models" / "broken")
    assert not (tmp_path / "models" / "broken").exists()
    assert not list((tmp_path / "models").glob(".*partial"))


# ---- the README walks through real files and commands ------------------------------


def test_readme_names_real_files_and_commands():
    readme = (CLUSTER / "README.md").read_text()
    for path in set(re.findall(r"cluster/[\w.-]+", readme)):
        assert (REPO / path).exists(), f"cluster/README.md names {path}, which does not exist"
    for step in ("helm install kuberay-operator", "kubectl apply -f cluster/rayservice.yaml",
                 "kubectl port-forward", "python -m cluster.generate", "docker build",
                 "python -m jobs score", "kubectl apply -f cluster/rayjob-batch.yaml"):
        assert step in readme, step


# ---- CRD schema validation (skipped where the CRDs are absent) -------------------------


def strict(schema):
    """The CRD schema with unknown fields forbidden wherever the CRD lists the fields."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schema(filename: str) -> dict:
    if not CRD_DIR.is_dir():
        pytest.skip(f"no KubeRay CRDs at {CRD_DIR} (KUBERAY_CRD_DIR names another folder)")
    return copy.deepcopy(_crd_schema(filename))


@functools.lru_cache(maxsize=None)
def _crd_schema(filename: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 20k lines
    crd = yaml.load((CRD_DIR / filename).read_text(), Loader=loader)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict(version["schema"]["openAPIV3Schema"])


def validator(schema):
    import jsonschema

    # OpenAPI v3.0 schemas follow draft 4 semantics (e.g. boolean exclusiveMinimum).
    return jsonschema.Draft4Validator(schema)


def errors(schema, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"[:300] for e in validator(schema).iter_errors(doc)]


@pytest.mark.parametrize("name", SERVICES)
def test_rayservice_validates_against_the_crd(name):
    schema = crd_schema("ray.io_rayservices.yaml")
    assert errors(schema, load(name)) == []


@pytest.mark.parametrize("name", JOBS)
def test_rayjob_cluster_spec_validates_against_the_raycluster_crd(name):
    schema = crd_schema("ray.io_rayclusters.yaml")["properties"]["spec"]
    doc = load(name)
    assert errors(schema, doc["spec"]["rayClusterSpec"]) == []
    assert set(doc["spec"]) <= RAYJOB_SPEC_FIELDS, set(doc["spec"]) - RAYJOB_SPEC_FIELDS


def test_crd_validation_catches_a_typo():
    schema = crd_schema("ray.io_rayservices.yaml")
    doc = copy.deepcopy(load("rayservice.yaml"))
    doc["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "1"
    found = errors(schema, doc)
    assert any("rayStartParam" in e for e in found) and any("minReplicas" in e for e in found), found


def test_laptop_config_fits_two_cpus_even_at_max_replicas():
    """Autoscaling must never ask for a replica the 2-CPU `make run` head cannot place."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    total = 0.0
    for d in config["applications"][0]["deployments"]:
        replicas = d.get("autoscaling_config", {}).get("max_replicas", d.get("num_replicas", 1))
        total += replicas * d["ray_actor_options"]["num_cpus"]
    assert total <= 2.0 + 1e-9, total
