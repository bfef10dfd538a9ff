"""The model registry: name → loaded, validated checkpoint. Names are file stems; lookups never touch disk.

Requests read one immutable `RegistrySnapshot` (models and rejected files together); `reload` builds
the next snapshot aside, loading only the files whose stamp changed, and publishes it with a single
assignment. A request that looked its model up keeps that `LoadedModel` (weights and sha256) to the
end, so it runs entirely on the old version or entirely on the new one.

Only regular files whose real path lies inside the checkpoint directory are read: a symbolic link
that leads outside it, a directory or a device named `*.safetensors` is rejected without opening it.
"""

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from ctm_core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ctm_core.model import checked_runtime
from ctm_core.parametrization import CTMParametrization
from ctm_core.runtime import Runtime, batch_invariant
from service.schemas import ModelInfo, RejectedCheckpoint

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file without reading it: the target's device, inode, size, mtime."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileStamp":
        st = path.stat()  # follows a symbolic link: a retargeted link has a new stamp
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to serve, and its public description; never changed once built.

    `runtime`: what requests run on (`ctm_core.runtime`), built and verified against the model when
    the file loads; `batchable`: whether it computes a row the same way amid others, so that
    requests may share a batch (`ctm_core.runtime.batch_invariant`).
    """

    name: str
    checkpoint: Checkpoint
    info: ModelInfo
    runtime: Runtime | torch.nn.Module
    batchable: bool
    stamp: FileStamp | None = None

    @property
    def network(self) -> CTMParametrization:
        """The served CTM (the checkpoint's evaluation-EMA student), in eval mode."""
        return self.checkpoint.student

    @property
    def sha256(self) -> str:
        """The version: sha256 of the checkpoint file's bytes."""
        return self.info.sha256


@dataclass(frozen=True)
class Rejection:
    """A checkpoint file that failed validation, why, and the stamp it had then (so it is not retried)."""

    file_name: str
    reason: str
    stamp: FileStamp | None


@dataclass(frozen=True)
class RegistrySnapshot:
    """Models by name and rejected files by file name, as published together by one (re)load."""

    models: Mapping[str, LoadedModel] = field(default_factory=lambda: MappingProxyType({}))
    rejections: Mapping[str, Rejection] = field(default_factory=lambda: MappingProxyType({}))

    def serving(self, rejection: Rejection) -> LoadedModel | None:
        """The model still served from a rejected file's previous version, if any."""
        # A model's name is its file's stem: the same name is the same file.
        return self.models.get(rejection.file_name.removesuffix(CHECKPOINT_SUFFIX))

    def describe_rejections(self) -> list[RejectedCheckpoint]:
        """The rejected files as the API shows them, by file name."""
        described = []
        for name in sorted(self.rejections):
            rejection = self.rejections[name]
            serving = self.serving(rejection)
            described.append(
                RejectedCheckpoint(
                    file_name=name,
                    reason=rejection.reason,
                    serving_sha256=serving.sha256 if serving is not None else None,
                )
            )
        return described


@dataclass(frozen=True)
class Changes:
    """Model names added, replaced (new sha256), removed and unchanged by one (re)load."""

    added: list[str]
    replaced: list[str]
    removed: list[str]
    unchanged: list[str]


@dataclass(frozen=True)
class ReloadReport:
    """What one (re)load changed, the snapshot it published, and how long it took."""

    changes: Changes
    snapshot: RegistrySnapshot
    seconds: float

    @property
    def added(self) -> list[str]:
        return self.changes.added

    @property
    def replaced(self) -> list[str]:
        return self.changes.replaced

    @property
    def removed(self) -> list[str]:
        return self.changes.removed

    @property
    def unchanged(self) -> list[str]:
        return self.changes.unchanged

    @property
    def rejected(self) -> list[Rejection]:
        return list(self.snapshot.rejections.values())

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed)


class ModelRegistry:
    """Loaded models by name; the snapshot is replaced as a whole, never edited in place."""

    def __init__(self) -> None:
        self._snapshot = RegistrySnapshot()
        self._reload_lock = threading.Lock()  # one (re)load at a time: the poller's and the admin's

    def snapshot(self) -> RegistrySnapshot:
        """The current models and rejections, consistent with each other."""
        return self._snapshot

    def get(self, name: str) -> LoadedModel | None:
        """The model called `name`, or None; `name` is only compared with loaded names."""
        return self._snapshot.models.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._snapshot.models)

    @property
    def models(self) -> list[LoadedModel]:
        snapshot = self._snapshot.models
        return [snapshot[name] for name in sorted(snapshot)]

    @property
    def rejected(self) -> Mapping[str, str]:
        """File name → reason, for the checkpoints that failed validation at the last (re)load."""
        return {name: r.reason for name, r in self._snapshot.rejections.items()}

    def __len__(self) -> int:
        return len(self._snapshot.models)

    def default_name(self, configured: str) -> str:
        """The model a request that names none gets: the configured default (CTM_DEFAULT_MODEL) when
        it is loaded, else the only loaded model when there is exactly one, else the configured name
        (which then answers 404 saying it did not load)."""
        models = self._snapshot.models
        if configured not in models and len(models) == 1:
            return next(iter(models))
        return configured

    def load_directory(self, directory: Path, device: torch.device) -> ReloadReport:
        """Load every `*.safetensors` in `directory`, skip (and log) the bad ones, publish the rest."""
        return self.reload(directory, device)

    def reload(self, directory: Path, device: torch.device) -> ReloadReport:
        """Bring the registry in line with `directory`: load new and changed files, drop removed ones.

        A file whose stamp is unchanged is not read again. A changed file that fails validation is
        rejected and its previous version, if any, keeps serving.
        """
        with self._reload_lock:
            start = time.perf_counter()
            models, rejections, changes = _reconcile(self._snapshot, directory, device)
            snapshot = RegistrySnapshot(MappingProxyType(models), MappingProxyType(rejections))
            self._snapshot = snapshot
            return ReloadReport(changes, snapshot, time.perf_counter() - start)


def _reconcile(
    old: RegistrySnapshot, directory: Path, device: torch.device
) -> tuple[dict[str, LoadedModel], dict[str, Rejection], Changes]:
    """The next snapshot's contents, and what changed from `old`."""
    models: dict[str, LoadedModel] = {}
    rejections: dict[str, Rejection] = {}
    added: list[str] = []
    replaced: list[str] = []
    unchanged: list[str] = []
    if not directory.is_dir():
        logger.warning("checkpoint directory missing dir=%s", directory)
        paths: list[Path] = []
    else:
        paths = sorted(directory.glob(f"*{CHECKPOINT_SUFFIX}"))
    root = directory.resolve()
    for path in paths:
        name = path.stem
        previous = old.models.get(name)
        try:
            stamp = _stamp_inside(path, root)
        except CheckpointError as exc:
            rejection = Rejection(path.name, str(exc), None)
        else:
            if previous is not None and previous.stamp == stamp:
                models[name] = previous
                unchanged.append(name)
                continue
            earlier = old.rejections.get(path.name)
            if earlier is not None and earlier.stamp == stamp:
                rejections[path.name] = earlier  # same bytes as when it failed: not retried, not re-logged
                if previous is not None:
                    models[name] = previous
                continue
            try:
                model = load_model(path, device, stamp=stamp)
            except CheckpointError as exc:
                rejection = Rejection(path.name, _reason(path, exc), stamp)
            except Exception as exc:  # one odd file must not stop the others from serving
                rejection = Rejection(path.name, f"unexpected {type(exc).__name__} ({exc})", stamp)
            else:
                if previous is not None and previous.sha256 == model.sha256:
                    models[name] = dataclasses.replace(previous, stamp=stamp)  # touched, same bytes
                    unchanged.append(name)
                    continue
                models[name] = model
                (replaced if previous is not None else added).append(name)
                logger.info(
                    "checkpoint loaded model=%s file=%s sha256=%s%s",
                    name,
                    path.name,
                    model.sha256[:12],
                    f" replaces={previous.sha256[:12]}" if previous is not None else "",
                )
                continue
        rejections[path.name] = rejection
        if previous is not None:
            models[name] = previous
        if old.rejections.get(path.name) == rejection:
            continue  # reported already
        logger.error(
            "checkpoint rejected file=%s reason=%r%s",
            path.name,
            rejection.reason,
            f" serving_previous={previous.sha256[:12]}" if previous is not None else "",
        )
    removed = sorted(set(old.models) - set(models))
    for name in removed:
        logger.info("checkpoint removed model=%s sha256=%s", name, old.models[name].sha256[:12])
    return models, rejections, Changes(added, replaced, removed, unchanged)


def _stamp_inside(path: Path, root: Path) -> FileStamp:
    """The stamp of `path`, if it is (or links to) a regular file inside `root`; else CheckpointError."""
    target = path.resolve()
    if not target.is_relative_to(root):
        raise CheckpointError("a symbolic link to a file outside the checkpoint directory: not read")
    if path.is_symlink() and not target.exists():
        raise CheckpointError("broken symbolic link")
    try:
        stamp = FileStamp.of(path)
        is_file = path.is_file()
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror})") from None
    if not is_file:
        raise CheckpointError("not a regular file")
    return stamp


def load_model(path: Path, device: torch.device, stamp: FileStamp | None = None) -> LoadedModel:
    """Load and validate one checkpoint; raise CheckpointError with a message a person can act on."""
    checkpoint = load_checkpoint(path, device)
    runtime = checked_runtime(checkpoint)
    info = ModelInfo.from_checkpoint(path.stem, checkpoint)
    batchable = runtime is not checkpoint.student and batch_invariant(runtime)
    return LoadedModel(
        name=path.stem, checkpoint=checkpoint, info=info, runtime=runtime, batchable=batchable, stamp=stamp
    )


def _reason(path: Path, exc: Exception) -> str:
    """The error in one line, without the file's path (the API shows it; the file name is given apart)."""
    return _one_line(str(exc).removeprefix(f"{path}: "))


def _one_line(message: str) -> str:
    return " ".join(message.split())
