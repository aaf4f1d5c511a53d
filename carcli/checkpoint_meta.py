"""CheckpointMeta: the metadata of a carcli checkpoint as one typed record, checked once when it is read.

`parse_metadata` turns the JSON of a checkpoint's `carcli` metadata key into a `CheckpointMeta`, refusing
damaged metadata with a message naming the field; every command then reads typed fields, never keys.
`to_dict` gives back the JSON object: the same keys with the same values in the same order as read (keys
this carcli does not know are kept in `extra`), fields set since then following in the record's order,
so rewriting a file (calibration, pruning, hierarchy weights) changes only what was changed.
`from_export` reads the self-description of an exported model (`carcli.deploy.export_info`) into the same
record, so eval and predict treat `.onnx` files and checkpoints alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from carcli.data.taxonomy import FINE, Taxonomy
from carcli.errors import CarcliError, UsageError
from carcli.limits import check_img_size

FORMAT = 1
REQUIRED_FIELDS = ("format", "arch", "head", "img_size", "mean", "std", "tasks", "taxonomy")


@dataclass(frozen=True, kw_only=True)
class CheckpointMeta:
    """A checkpoint's metadata; the fields are in the order a checkpoint's JSON lists them (docs/checkpoints.md).

    Optional fields are None when the file does not have them; the nested records (`train`, `data`,
    `pruned`, `metrics`, `hierarchy`, `calibration`, `ensemble`) are the JSON objects as stored.
    """

    format: int | None = None  # None: not written yet (save_checkpoint writes FORMAT)
    version: str | None = None
    arch: str
    head: str
    img_size: int  # what eval, predict and export feed the model
    train_img_size: int | None = None
    eval_aspect: float | None = None  # the evaluation view's long side over its short side (None: 1, as of old)
    mean: list[float]
    std: list[float]
    tasks: dict[str, list[str]]
    taxonomy: Taxonomy
    train: dict[str, Any] | None = None  # the resolved training options (TrainConfig fields)
    data: dict[str, Any] | None = None
    members: list[CheckpointMeta] | None = None  # an ensemble's members, in member{i} order
    weights: list[float] | None = None
    ensemble: dict[str, Any] | None = None
    created: str | None = None
    pruned: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    hierarchy: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    outputs: list[str] | None = None  # an export's graph outputs (never in a checkpoint)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this carcli does not know, kept for rewrites
    order: tuple[str, ...] = ()  # the keys as the file listed them

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CheckpointMeta:
        """The record of metadata already checked by `metadata_problem` (values kept as stored)."""
        known = {f.name for f in _FIELDS}
        values = {k: v for k, v in raw.items() if k in known}
        values["taxonomy"] = Taxonomy.from_dict(raw["taxonomy"])
        if "members" in raw:
            values["members"] = [cls.from_dict(member) for member in raw["members"]]
        extra = {k: v for k, v in raw.items() if k not in known}
        return cls(**values, extra=extra, order=tuple(raw))

    @classmethod
    def from_export(cls, info: dict[str, Any]) -> CheckpointMeta:
        """The metadata an exported model's self-description (`carcli.deploy.export_info`) carries."""
        source = info.get("source") or info
        return cls(
            arch=source.get("arch"),
            head=source.get("head"),
            img_size=info["img_size"],
            eval_aspect=(info.get("preprocess") or {}).get("view_aspect"),
            mean=info["mean"],
            std=info["std"],
            tasks=info["tasks"],
            taxonomy=Taxonomy.from_dict(info["taxonomy"]),
            train=info.get("train"),
            calibration=info.get("calibration"),
            outputs=info["outputs"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this metadata: the keys as read first, in their order, then fields set since."""
        values: dict[str, Any] = {}
        for f in _FIELDS:
            value = getattr(self, f.name)
            if value is not None or f.name in self.order:
                values[f.name] = _json(value)
        values.update(self.extra)
        first = [key for key in self.order if key in values]
        return {key: values[key] for key in [*first, *(key for key in values if key not in self.order)]}

    def replace(self, **changes: Any) -> CheckpointMeta:
        """A copy with `changes` (field names as keywords)."""
        return dataclasses.replace(self, **changes)

    def view_transform(self, tta: bool = False) -> Callable[[Any], Any]:
        """The model's eval preprocessing: `carcli.data.transforms.view_transform` at this size and normalisation."""
        from carcli.data.transforms import view_transform

        return view_transform(self.img_size, self.mean, self.std, tta, self.view_aspect)

    @property
    def view_aspect(self) -> float:
        """The evaluation view's aspect (`carcli.data.images.view_box`): 1, the centre square, for older files."""
        return 1.0 if self.eval_aspect is None else float(self.eval_aspect)

    def at_view(self, img_size: int | None, aspect: float | None = None) -> CheckpointMeta:
        """This metadata evaluated at `img_size` with the view `aspect` (`--img-size`, `--eval-aspect` of eval and
        predict; None: as stored)."""
        if img_size is not None:
            check_img_size(img_size, bool(self.train_option("allow_large_images")))
        return self.replace(img_size=img_size or self.img_size, eval_aspect=aspect or self.eval_aspect)

    def train_option(self, name: str, default: Any = None) -> Any:
        """A training option as the checkpoint records it (`default` when it does not)."""
        return (self.train or {}).get(name, default)

    @property
    def is_ensemble(self) -> bool:
        return self.members is not None

    @property
    def fine_names(self) -> list[str]:
        """The fine classes, in the model's output order."""
        return self.tasks[FINE]

    @property
    def class_counts(self) -> dict[str, int]:
        """{task: number of classes} for every task, as the model's head is built."""
        return {task: len(names) for task, names in self.tasks.items()}

    @property
    def temperatures(self) -> dict[str, float]:
        """The fitted temperature per task ({} when the checkpoint was never calibrated)."""
        return {task: float(t) for task, t in ((self.calibration or {}).get("temperatures") or {}).items()}

    @property
    def hierarchy_weights(self) -> dict[str, float] | None:
        """The fitted hierarchy weights ({task: weight}), None when none were fitted."""
        return (self.hierarchy or {}).get("weights") or None


_FIELDS = tuple(f for f in dataclasses.fields(CheckpointMeta) if f.name not in ("extra", "order"))


def _json(value: Any) -> Any:
    if isinstance(value, Taxonomy):
        return value.to_dict()
    if isinstance(value, list) and value and isinstance(value[0], CheckpointMeta):
        return [member.to_dict() for member in value]
    return value


def parse_metadata(source: str, raw: str | None) -> CheckpointMeta:
    """The checked metadata of a checkpoint from the JSON text of its `carcli` key; `source` names it in errors."""
    if raw is None:
        raise CarcliError(f"{source} is a safetensors file but not a carcli checkpoint (no carcli metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CarcliError(f"{source}: carcli metadata is not valid JSON") from exc
    missing = [f for f in REQUIRED_FIELDS if f not in meta]
    if missing:
        raise CarcliError(f"{source}: carcli metadata lacks {', '.join(missing)}")
    if not isinstance(meta["format"], int) or not isinstance(meta["tasks"], dict) or FINE not in meta["tasks"]:
        raise CarcliError(f"{source}: carcli metadata is malformed (format or tasks)")
    try:
        taxonomy = Taxonomy.from_dict(meta["taxonomy"])
    except CarcliError as exc:
        raise CarcliError(f"{source}: {exc}") from None
    if taxonomy.tasks[FINE] != meta["tasks"][FINE]:
        raise CarcliError(f"{source}: its taxonomy names other classes than its {FINE!r} task")
    if meta["format"] > FORMAT:
        raise CarcliError(
            f"{source} has checkpoint format {meta['format']}, newer than this carcli reads ({FORMAT}); upgrade carcli"
        )
    problem = metadata_problem(meta)
    if problem:
        raise CarcliError(f"{source}: {problem}; the file is damaged or was not written by carcli")
    return CheckpointMeta.from_dict(meta)


def metadata_problem(meta: dict[str, Any], prefix: str = "") -> str | None:
    """What is wrong with the types and shapes of checkpoint metadata (None: nothing), naming the field.

    Checked once, when a checkpoint is read, so every command can trust `img_size`, `mean`, `std`,
    `tasks` and the ensemble's `members`/`weights` without converting them again.
    """
    for name in ("arch", "head"):
        if not isinstance(meta.get(name), str) or not meta[name]:
            return f"field {prefix}{name!r} must be a name, got {_shown(meta.get(name))}"
    train = meta.get("train", {})
    if not isinstance(train, dict):
        return f"field {prefix}'train' must be an object, got {_shown(train)}"
    for name in ("val_fraction", "seed"):
        if name in train and not _finite(train[name]):
            return f"field {prefix}'train.{name}' must be a number, got {_shown(train[name])}"
    try:
        check_img_size(meta.get("img_size"), bool(train.get("allow_large_images")), f"field {prefix}'img_size'")
    except UsageError as exc:
        return str(exc).split(": one such")[0]
    aspect = meta.get("eval_aspect", 1.0)
    if not (_finite(aspect) and aspect >= 1):
        return f"field {prefix}'eval_aspect' must be a number of at least 1, got {_shown(aspect)}"
    for name in ("mean", "std"):
        value = meta.get(name)
        if not (isinstance(value, list) and len(value) == 3 and all(_finite(v) for v in value)):
            return f"field {prefix}{name!r} must be 3 numbers (one per colour channel), got {_shown(value)}"
    if any(v <= 0 for v in meta["std"]):
        return f"field {prefix}'std' must be positive, got {_shown(meta['std'])}"
    for task, names in meta["tasks"].items():
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            return f"field {prefix}'tasks.{task}' must be a list of class names, got {_shown(names)}"
    return _ensemble_problem(meta, prefix) if "members" in meta else None


def _ensemble_problem(meta: dict[str, Any], prefix: str) -> str | None:
    members, weights = meta["members"], meta.get("weights")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        return f"field {prefix}'members' must be a list of member metadata, got {_shown(members)}"
    if not (isinstance(weights, list) and len(weights) == len(members) and all(_finite(w) for w in weights)):
        return f"field {prefix}'weights' must be {len(members)} numbers, one per member, got {_shown(weights)}"
    for i, member in enumerate(members):
        if not isinstance(member.get("tasks"), dict):
            return f"field {prefix}'members[{i}].tasks' must be an object, got {_shown(member.get('tasks'))}"
        where = f"{prefix}members[{i}]."
        problem = metadata_problem(member, where) or _taxonomy_problem(member, where)
        if problem:
            return problem
    return None


def _taxonomy_problem(member: dict[str, Any], prefix: str) -> str | None:
    """A member's taxonomy must read as one (the ensemble's own was checked with the required fields)."""
    taxonomy = member.get("taxonomy")
    try:
        Taxonomy.from_dict(taxonomy if isinstance(taxonomy, dict) else {})
    except CarcliError:
        return f"field {prefix}'taxonomy' must be the member's taxonomy, got {_shown(taxonomy)}"
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
