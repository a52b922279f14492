"""The recipe: one typed config tree for a whole run, validated at load with errors naming the field.

A recipe is a TOML (or YAML) file. Each component owns its config class (``rollout.config``,
``rollout.engine.config``, ``learner.config``); this module composes them into :class:`Recipe` and
adds the run-level parts (data, schedule, cluster, outputs). Every model is ``extra="forbid"``, so a
misspelt key fails at load naming its dotted path, and every field carries a docstring.

``load_recipe(path, overrides)`` applies ``--set a.b.c=value`` overrides (value parsed as TOML, or
kept as a string) before validation, so an override is checked like the file itself.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cluster.consistency import gpu_problems, serve_problems
from learner.config import LearnerConfig
from rollout.config import RoleConfig, RolloutConfig
from rollout.engine.config import EngineConfig


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RecipeError(ValueError):
    """A recipe failed to load: the message names the file, the field and the reason."""


class RoleRuntime(_Config):
    """Where one role runs: its base model, its rollout engine and (if trained) its learner."""

    model: str = "builtin:tiny-qwen2-vl"
    """Base model: "builtin:NAME" (built offline by deploy.offline_models) or a HF directory."""
    engine: EngineConfig = EngineConfig()
    """The vLLM engine serving this role's model on every rollout worker."""
    learner: LearnerConfig | None = LearnerConfig()
    """The learner group training this role's adapter; None keeps the role frozen (base model)."""
    proof_tolerance: float | None = Field(None, gt=0)
    """Largest |log-prob| gap between a rollout worker's and the learner's probe scores that proves
    a sync of this role's adapter; None: by dtype (``cluster.weight_sync.PROOF_TOLERANCE``: 1e-4 when
    engine and learner are fp32, 0.15 when either is bf16)."""


class RewardTerm(_Config):
    """One term of the run's reward: a registered reward name or "pkg.mod:Factory"."""

    name: str
    """Reward name (see ``rewards.registered_rewards()``) or a dotted path to a user's reward."""
    weight: float = 1.0
    """Weight in the composite sum; every term's score is also kept as a component."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the reward's factory."""


class DataConfig(_Config):
    """Where tasks come from (ignored for environment episodes, which use env seeds)."""

    source: str = "cryptogram"
    """Task source name for ``rollout.tasks.load_task_source``."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the source for the training split."""
    eval: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the source for the held-out evaluation split (must not overlap)."""
    tasks_per_step: int = Field(8, ge=1)
    """Tasks (or env seeds) per RL step; each gives a group of ``rollout.group_size`` samples."""
    eval_size: int = Field(64, ge=0)
    """Held-out tasks (or env seeds) in each evaluation; 0 disables evaluation."""
    min_pixels: int | None = Field(None, ge=1)
    """Task images smaller than this many pixels are scaled up to it at load (aspect kept), as in
    EasyR1; a Qwen2-VL image gets one token per 28x28 pixels. None leaves small images alone."""
    max_pixels: int | None = Field(None, ge=1)
    """Task images larger than this many pixels are scaled down to it at load; None: no bound."""

    @model_validator(mode="after")
    def _pixel_bounds(self) -> "DataConfig":
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is above max_pixels ({self.max_pixels})")
        return self


class SFTStage(_Config):
    """Supervised warm start before RL (IMMO stage 1; RL4VLM also starts from SFT)."""

    steps: int = Field(0, ge=0)
    """Optimizer steps of SFT on reference replies; 0 skips the stage."""
    batch_size: int = Field(16, ge=1)
    """Examples per SFT step."""
    num_examples: int = Field(256, ge=1)
    """Training tasks turned into (prompt, reference reply) pairs."""


class TrainConfig(_Config):
    """The RL loop."""

    steps: int = Field(10, ge=0)
    """RL steps (sample -> score -> update -> sync)."""
    schedule: Literal["joint", "alternating"] = "joint"
    """"joint": every trainable role learns each step; "alternating" (IMMO): one role per phase,
    the other frozen as part of the environment."""
    phase_steps: int = Field(1, ge=1)
    """Alternating schedule: steps per phase before the trained role switches."""
    role_order: tuple[str, ...] = ()
    """Alternating schedule: order of trained roles (default: the recipe's trainable roles, sorted;
    IMMO trains the observer on even phases, the reasoner on odd ones)."""
    frozen_roles: Literal["sample", "greedy"] = "sample"
    """Alternating schedule: how the roles not trained in a phase act. "sample": at their own
    sampling settings (IMMO). "greedy": temperature 0, a deterministic part of the trained role's
    environment (less reward noise from the partner; G samples of a task then differ only in the
    trained role's turns)."""
    mode: Literal["sync", "async"] = "sync"
    """"async": rollouts for step t+1 are generated while the learner trains on step t."""
    max_staleness: int = Field(1, ge=0)
    """Async mode: episodes whose adapter version lags the learner's by more are dropped (counted)."""
    eval_every: int = Field(0, ge=0)
    """Evaluate on the held-out items every N RL steps as well (labelled ``step_NNNNNN``; the learning
    benchmark draws its curves from them); 0: only before and after training."""
    checkpoint_every: int = Field(0, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    max_skipped_steps: int = Field(3, ge=1)
    """A role's update whose every optimizer step was skipped (loss or gradient norm not finite:
    nothing changed, nothing is published) counts as a skipped step; this many in a row stop the
    run with one line naming the last complete checkpoint (exit 1, :mod:`cluster.divergence`)."""
    max_learner_restarts: int = Field(2, ge=0)
    """Times the run starts a learner group again after one of its ranks died (its process killed,
    its node lost): the group is replaced, every learner and the run's counts rewind to the last
    checkpoint, its adapters are published as new versions and the steps since then are run again
    (counted as ``steps_replayed``). One death more stops the run with an error. Above 0, a run
    starting at step 0 also writes a checkpoint there (``checkpoints/step_000000``, after the warm
    start), so there is always one to go back to; 0: a learner's death ends the run."""
    sft: SFTStage = SFTStage()
    """Optional warm start."""
    max_plugin_error_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """A user plugin (a reward, an environment) that raises on an episode scores it 0 with the
    reason and is counted (``plugin_errors/<kind>/<name>``); when more than this fraction of one
    step's (or one evaluation's) episodes fail that way, the run writes a checkpoint and stops with
    one line naming the plugin and its error (exit 1). The default stops a plugin that fails most of
    a batch (a bug), not one that fails now and then (a 4-item evaluation with one failure is 25%);
    1.0 never stops."""


class ClusterConfig(_Config):
    """Ray resources."""

    address: str | None = None
    """None: a local single-node Ray started by the run, except under ``ray job submit``, where the
    job joins the cluster it was submitted to; "auto" (or an address) joins a running cluster."""
    rollout_workers: int = Field(1, ge=1)
    """Rollout worker actors (each holds one engine per base model)."""
    rollout_cpus: float = Field(1.0, gt=0)
    """CPUs per rollout worker."""
    rollout_gpus: float = Field(0.0, ge=0)
    """GPUs per rollout worker (CUDA clusters; not run on the CPU machines here)."""
    learner_ranks: int = Field(1, ge=1)
    """DeepSpeed data-parallel ranks per trained role."""
    learner_cpus: float = Field(1.0, gt=0)
    """CPUs per learner rank."""
    learner_gpus: float = Field(0.0, ge=0)
    """GPUs per learner rank."""
    strategy: Literal["PACK", "SPREAD"] = "PACK"
    """Placement of rollout workers over nodes."""
    num_cpus: int | None = None
    """Local mode only: logical CPUs Ray may hand out (None: the machine's count)."""
    placement_timeout_s: float = Field(60.0, ge=0)
    """Seconds to wait for the run's placement groups (its actors' resources) before giving up with
    what was pending; 0 waits without limit. Raise it on a cluster that must scale up first."""
    autoscaling: bool = False
    """The cluster adds nodes on demand (Ray's cluster launcher, KubeRay's autoscaler): skip the
    capacity check against the nodes alive at start and wait ``placement_timeout_s`` for the
    autoscaler to bring what the run needs (pending resources are logged every 30 s)."""
    dashboard: bool = False
    """Local mode only: start the local Ray with its dashboard (on 127.0.0.1) and its Prometheus
    metrics endpoint; the run prints both URLs. A cluster (``address`` set, ``ray job submit``) has
    its own, started by ``ray start --head --include-dashboard=true --metrics-export-port=...``."""


class OutputConfig(_Config):
    """What a run writes."""

    dir: str = "runs/{name}"
    """Run directory ("{name}" is the recipe name): metrics.parquet, transcripts/, checkpoints/,
    adapters/. A relative path is taken against the current directory; under ``ray job submit`` it
    must be absolute, on storage that every node of the run mounts at that path (checked at start)."""
    transcripts_per_step: int = Field(2, ge=0)
    """Readable transcripts saved per step."""
    progress: bool = True
    """One line per step on stdout (local runs)."""
    metrics_flush_s: float | None = Field(None, ge=0)
    """Seconds the run waits after its last evaluation, before its actors stop, so that Ray's metrics
    agent receives the values recorded last (every process exports its metrics once per
    ``RAY_metrics_report_interval_ms``, 10 s by default; what a process records after its last
    export is lost when it exits). None: one report interval plus 1 s when the metrics can be
    scraped (the run joined a cluster, or ``cluster.dashboard``), else no wait; 0: never wait."""
    report: bool = True
    """Redraw the run report (``report/index.html`` and its PNGs, see ``duet report``) after each
    evaluation and at the end of the run; a report that fails to draw is one logged line, never the
    run's end."""
    loggers: tuple[str, ...] = ("console",)
    """Where the run's figures go besides metrics.parquet (``cluster.loggers``), like verl's
    ``trainer.logger``: "console" (the lines on stdout, with a progress bar and ETA on a terminal;
    ``progress = false`` silences them too), "tensorboard" (event files in RUN_DIR/tensorboard),
    "wandb" (an offline W&B run in RUN_DIR/wandb), "mlflow" (a file store in RUN_DIR/mlruns). Each
    tracker needs its extra (``pip install duet-rl[wandb]``), checked before Ray starts."""

    @model_validator(mode="after")
    def _known_loggers(self) -> "OutputConfig":
        from cluster.loggers import unknown_loggers

        problems = unknown_loggers(self.loggers)
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True)
class Role:
    """One role of a run, both of its config branches joined (``roles.<r>`` and
    ``rollout.<kind>.<r>``): what every layer needs to know about it, resolved once."""

    name: str
    """Role name ("policy", "reasoner", "observer", or a custom kind's)."""
    model: str
    """Base model reference (``roles.<r>.model``)."""
    engine: EngineConfig
    """The rollout engine serving the role (``roles.<r>.engine``)."""
    learner: LearnerConfig | None
    """The learner group training the role's adapter; None: the role is frozen."""
    rollout: RoleConfig
    """How the role generates: system prompt, sampling, adapter (``rollout.<kind>.<r>``)."""
    adapter: str | None
    """The LoRA adapter serving the role, the ONE key its versions go by everywhere (published
    versions, required versions, served versions, staleness); None: the base model (frozen roles only)."""

    @property
    def trained(self) -> bool:
        """Whether the role has a learner."""
        return self.learner is not None


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe's roles, resolved once (:meth:`Recipe.resolve`)."""

    roles: tuple[Role, ...]
    """Every role of the rollout kind, in the kind's order (``RolloutConfig.roles()``)."""

    def role(self, name: str) -> Role:
        """The role called ``name`` (KeyError naming the roles otherwise)."""
        for r in self.roles:
            if r.name == name:
                return r
        raise KeyError(f"no role {name!r} (roles: {[r.name for r in self.roles]})")

    @property
    def trained(self) -> tuple[Role, ...]:
        """The roles with a learner (in the kind's order)."""
        return tuple(r for r in self.roles if r.trained)

    def adapters(self) -> dict[str, str | None]:
        """Role name -> adapter (None for a role on the base model)."""
        return {r.name: r.adapter for r in self.roles}


class Recipe(_Config):
    """A whole run."""

    name: str = "run"
    """Run name (directory, metric tags)."""
    seed: int = 0
    """The run's seed: the data (training-task shuffle, env seeds) and the default of
    ``rollout.seed`` (sampling) and ``roles.<r>.learner.seed`` (LoRA/value-head init, minibatch
    shuffle, dropout); a component seed set explicitly keeps its value (:mod:`cluster.seeds`)."""
    roles: dict[str, RoleRuntime] = Field(default_factory=lambda: {"policy": RoleRuntime()})
    """Runtime of each role the rollout kind uses ("policy", or "reasoner" and "observer")."""
    rollout: RolloutConfig = RolloutConfig()
    """What a rollout produces (kind, group size, prompts, sampling)."""
    rewards: tuple[RewardTerm, ...] = (RewardTerm(name="exact_match"),)
    """Reward terms, summed with their weights; components are all kept."""
    data: DataConfig = DataConfig()
    """Tasks for training and evaluation."""
    train: TrainConfig = TrainConfig()
    """The loop."""
    cluster: ClusterConfig = ClusterConfig()
    """Ray resources."""
    output: OutputConfig = OutputConfig()
    """Run outputs."""

    @model_validator(mode="before")
    @classmethod
    def _seed_is_the_default_seed(cls, data: Any) -> Any:
        from cluster.seeds import with_seed_defaults

        return with_seed_defaults(data)

    @model_validator(mode="after")
    def _roles_match_rollout(self) -> Recipe:
        wanted = set(self.rollout.roles())
        if set(self.roles) != wanted:
            raise ValueError(
                f"roles: rollout kind {self.rollout.kind!r} uses roles {sorted(wanted)}, "
                f"recipe defines {sorted(self.roles)}"
            )
        rollout_roles = self.rollout.roles()
        for name, rt in self.roles.items():
            if rt.learner is not None and rt.learner.role != name:
                raise ValueError(f"roles.{name}.learner.role: must be {name!r}, got {rt.learner.role!r}")
            if rt.learner is not None and rollout_roles[name].adapter is None:
                raise ValueError(f"rollout.{self.rollout.kind}.{name}.adapter: role {name!r} has a learner, "
                                 f"so it needs an adapter name (e.g. adapter = {name!r})")
        if not self.trainable_roles and self.train.steps > 0:
            raise ValueError("roles: train.steps > 0 but no role has a learner")
        unknown = set(self.train.role_order) - set(self.trainable_roles)
        if unknown:
            raise ValueError(f"train.role_order: {sorted(unknown)} are not trainable roles")
        if self.train.frozen_roles == "greedy" and self.train.schedule != "alternating":
            raise ValueError("train.frozen_roles: 'greedy' needs schedule = 'alternating' (with 'joint' "
                             "every role is trained every step)")
        return self

    @model_validator(mode="after")
    def _gpu_settings_agree(self) -> Recipe:
        """Device, GPU shares, tensor parallelism, memory fractions and learner backend must agree
        (:func:`cluster.consistency.gpu_problems`): caught here, before Ray starts."""
        problems = gpu_problems(self)
        if problems:
            raise ValueError("GPU settings disagree:\n    - " + "\n    - ".join(problems))
        return self

    @model_validator(mode="after")
    def _serve_modes_fit(self) -> Recipe:
        """``engine.serve = "merged"`` serves one adapter: refused here, before Ray starts, for roles
        sharing an engine between adapters (:func:`cluster.consistency.serve_problems`)."""
        problems = serve_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _plugin_arguments_known(self) -> Recipe:
        """Task source and reward names and their keyword arguments (:mod:`cluster.plugin_args`):
        a misspelt argument fails here, each error at its dotted field, not inside an actor."""
        from pydantic_core import InitErrorDetails, PydanticCustomError

        from cluster.plugin_args import plugin_problems

        problems = plugin_problems(self)
        if problems:
            details = [InitErrorDetails(type=PydanticCustomError("plugin_argument", "{problem}", {"problem": msg}),
                                        loc=loc, input=None) for loc, msg in problems]
            raise ValidationError.from_exception_data("Recipe", details)
        return self

    @model_validator(mode="after")
    def _norm_len_is_the_budget(self) -> Recipe:
        """Each trained role's ``learner.algo.norm_len`` left None becomes the role's
        ``sampling.max_tokens`` (Dr.GRPO's constant: the generation budget, issue 12); set in
        place in the recipe's own ``roles`` mapping (the models are frozen)."""
        for name, rc in self.rollout.roles().items():
            rt = self.roles.get(name)
            if rt is None or rt.learner is None or rt.learner.algo.norm_len is not None:
                continue
            algo = rt.learner.algo.model_copy(update={"norm_len": rc.sampling.max_tokens})
            self.roles[name] = rt.model_copy(update={"learner": rt.learner.model_copy(update={"algo": algo})})
        return self

    def proof_tolerance(self, role: str) -> float:
        """The sync-proof bound of ``role``: its own setting, else by its engine's and learner's dtypes."""
        from cluster.weight_sync import proof_tolerance

        rt = self.roles[role]
        if rt.proof_tolerance is not None:
            return rt.proof_tolerance
        return proof_tolerance(rt.engine.dtype, *([rt.learner.dtype] if rt.learner else []))

    def resolve(self) -> ResolvedRecipe:
        """The roles, each with its runtime and rollout settings joined (:class:`Role`)."""
        return ResolvedRecipe(tuple(
            Role(name, self.roles[name].model, self.roles[name].engine, self.roles[name].learner, rc, rc.adapter)
            for name, rc in self.rollout.roles().items()))

    @property
    def trainable_roles(self) -> tuple[str, ...]:
        return tuple(sorted(r for r, rt in self.roles.items() if rt.learner is not None))

    def run_dir(self) -> Path:
        return Path(self.output.dir.format(name=self.name))


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {dotted}: {k!r} is not a table")
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is TOML if it parses, else the raw string."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        return tomllib.loads(text)
    except Exception as err:  # noqa: BLE001 - any parse error becomes a RecipeError naming the file
        raise RecipeError(f"{path}: cannot parse recipe: {err}") from err


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid recipe"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def build_recipe(tree: Mapping[str, Any], source: str = "recipe") -> Recipe:
    """Validate a recipe tree; a :class:`RecipeError` lists each bad field's dotted path and reason."""
    try:
        return Recipe.model_validate(dict(tree))
    except ValidationError as err:
        raise RecipeError(_format_errors(source, err)) from None


def load_recipe(path: str | Path | None = None, overrides: tuple[str, ...] = ()) -> Recipe:
    """Load ``path`` (None: the embedded default recipe) and apply ``--set`` overrides."""
    from cluster.recipes import DEFAULT_RECIPE

    file = Path(path) if path is not None else DEFAULT_RECIPE
    tree = _read_file(file)
    for item in overrides:
        _set_dotted(tree, *parse_override(item))
    return build_recipe(tree, str(file))
