"""ctm_core.checkpoint: safetensors round trip, atomic writes, and a clear error for every bad file."""

import ast
import hashlib
import json
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoint_files import (
    CREATED_AT,
    MONOTONE,
    NETWORK,
    NOISE,
    TRAINING,
    assert_state_dicts_equal,
    file_header,
    load_error,
    metadata_json,
    sample_metadata,
    seeded_model,
    student_tensors,
    write_file,
)
from safetensors.torch import save_file

import ctm_core
import ctm_core.checkpoint as checkpoint_module
from ctm_core.checkpoint import (
    FORMAT_VERSION,
    MAX_FILE_BYTES,
    MAX_HEADER_BYTES,
    METADATA_KEY,
    Metrics,
    TaskInfo,
    atomic_write_bytes,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint,
)
from ctm_core.config import CTMConfig, NetworkConfig, NoiseConfig, TrainConfig
from ctm_core.network import CTMNetwork, MonotoneNetwork

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A valid student-only checkpoint."""
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, student=seeded_model(0), teacher=None, metadata=sample_metadata())
    return path


# ---- round trip --------------------------------------------------------------------------------


def test_round_trip_with_teacher_and_state(tmp_path: Path) -> None:
    student, teacher = seeded_model(1), seeded_model(2)
    state = {"rng": torch.arange(5, dtype=torch.uint8), "optim.0.exp_avg": torch.randn(3, 4)}
    metadata = sample_metadata()
    path = tmp_path / "sub" / "dir" / "model.safetensors"  # parents are created
    save_checkpoint(path, student=student, teacher=teacher, metadata=metadata, state=state)

    ckpt = load_checkpoint(path)
    assert_state_dicts_equal(ckpt.student, student)
    assert ckpt.teacher is not None
    assert_state_dicts_equal(ckpt.teacher, teacher)
    # The two networks really were different (so the test can tell them apart).
    assert not torch.equal(
        ckpt.student.state_dict()["net.mlp.0.weight"], teacher.state_dict()["net.mlp.0.weight"]
    )
    assert ckpt.state.keys() == state.keys()
    for key, value in state.items():
        assert ckpt.state[key].dtype == value.dtype
        assert torch.equal(ckpt.state[key], value)

    assert ckpt.metadata == metadata and ckpt.format_version == FORMAT_VERSION
    assert ckpt.metadata.created_at == CREATED_AT
    assert ckpt.noise == NOISE
    data = path.read_bytes()
    assert ckpt.sha256 == hashlib.sha256(data).hexdigest()
    assert ckpt.size_bytes == len(data) == path.stat().st_size
    assert ckpt.path == path
    # Ready to serve: eval mode, no gradients, and the same outputs as the saved network.
    assert not ckpt.student.training and not ckpt.teacher.training
    assert not any(p.requires_grad for p in ckpt.student.parameters())
    x, t, s = torch.linspace(-3, 3, 7), torch.full((7,), 5.0), torch.full((7,), 0.1)
    with torch.no_grad():
        assert torch.equal(ckpt.student.jump(x, t, s), student.jump(x, t, s))


def test_round_trip_of_a_monotone_model(tmp_path: Path) -> None:
    """The default kind: its conditioner and head come back, with the data mean, and jump the same."""
    noise = NOISE.model_copy(update={"data_mean": 0.7})
    student, teacher = seeded_model(1, MONOTONE, 0.7), seeded_model(2, MONOTONE, 0.7)
    with torch.no_grad():  # off the initialisation, so that every coefficient matters
        for p in (*student.parameters(), *teacher.parameters()):
            p.add_(0.3 * torch.randn_like(p))
    path = tmp_path / "monotone.safetensors"
    save_checkpoint(path, student=student, teacher=teacher, metadata=sample_metadata(MONOTONE, noise))

    ckpt = load_checkpoint(path)
    assert isinstance(ckpt.student.net, MonotoneNetwork) and isinstance(ckpt.teacher.net, MonotoneNetwork)
    assert ckpt.metadata.network.kind == "monotone"
    assert_state_dicts_equal(ckpt.student, student)
    assert_state_dicts_equal(ckpt.teacher, teacher)
    assert {k.split(".")[1] for k in ckpt.student.state_dict()} == {"trunk", "head"}
    assert ckpt.student.data_mean == 0.7 and ckpt.noise.data_mean == 0.7
    x = 0.7 + torch.linspace(-30, 30, 301)
    for t, s in [(10.0, 0.002), (3.0, 1.0), (0.5, 0.01)]:
        tt, ss = torch.tensor(t), torch.tensor(s)
        with torch.no_grad():
            assert torch.equal(ckpt.student.jump(x, tt, ss), student.jump(x, tt, ss))
            assert torch.equal(ckpt.teacher.denoise(x, tt), teacher.denoise(x, tt))
    # The two kinds do not load into each other: a monotone file claiming to be an MLP is refused.
    path = tmp_path / "claims_mlp.safetensors"
    save_checkpoint(path, student=student, teacher=None, metadata=sample_metadata(NETWORK, noise))
    assert "do not match the architecture" in load_error(path)


def test_mlp_kind_round_trips_as_an_mlp(good: Path) -> None:
    assert isinstance(load_checkpoint(good).student.net, CTMNetwork)


@pytest.mark.parametrize(
    ("noise", "mean", "std"),
    [
        (NOISE, 0.0, math.sqrt(10.0**2 + 0.5**2)),
        (NoiseConfig(sigma_min=0.01, sigma_max=5.0, sigma_data=2.0, data_mean=-1.5), -1.5, math.sqrt(29.0)),
    ],
)
def test_the_wide_prior_follows_from_the_noise_range(
    tmp_path: Path, noise: NoiseConfig, mean: float, std: float
) -> None:
    """The prior N(μ, σ_max² + σ_d²) is not stored (format 3): the saved noise range gives it."""
    path = tmp_path / "prior.safetensors"
    save_checkpoint(path, student=seeded_model(0), teacher=None, metadata=sample_metadata(noise=noise))
    loaded = load_checkpoint(path).noise
    assert (loaded.data_mean or 0.0) == pytest.approx(mean, abs=1e-15)
    assert loaded.prior_std == pytest.approx(std, rel=1e-12)


def _keys(value: Any) -> list[str]:
    """Every key of every object in a JSON value."""
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in [k, *_keys(v)]]
    return [k for item in value for k in _keys(item)] if isinstance(value, list) else []


def test_format_3_stores_each_fact_once(good: Path) -> None:
    """σ_d, the data mean, the network and the noise range: one place each; no prior, no copies."""
    assert FORMAT_VERSION == 3
    length = struct.unpack("<Q", good.read_bytes()[:8])[0]
    raw = json.loads(json.loads(good.read_bytes()[8 : 8 + length])["__metadata__"][METADATA_KEY])
    described = {"network", "noise", "task", "training", "metrics", "package_version", "created_at"}
    assert set(raw) == described | {"format_version", "has_teacher"}
    keys = _keys(raw)
    for key in ("sigma_data", "data_mean", "network", "noise", "holdout", "width", "sigma_max"):
        assert keys.count(key) == 1, key
    assert "prior" not in keys and "architecture" not in keys


def test_round_trip_without_teacher(good: Path) -> None:
    ckpt = load_checkpoint(good)
    assert ckpt.teacher is None
    assert ckpt.state == {}
    assert_state_dicts_equal(ckpt.student, seeded_model(0))


def test_save_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path in (a, b):
        save_checkpoint(path, student=seeded_model(0), teacher=seeded_model(1), metadata=sample_metadata())
    assert a.read_bytes() == b.read_bytes()


def test_default_created_at_is_an_iso_timestamp() -> None:
    meta = checkpoint_metadata(network=NETWORK, noise=NOISE, task=TaskInfo(name="x", description="y"))
    assert meta.created_at[:2] == "20" and meta.created_at.endswith("+00:00")
    with pytest.raises(ValueError, match="sigma_data"):
        checkpoint_metadata(network=NETWORK, noise=NoiseConfig(), task=TaskInfo(name="x"))


# ---- atomic writes -----------------------------------------------------------------------------


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, student=seeded_model(0), teacher=None, metadata=sample_metadata())
    save_checkpoint(path, student=seeded_model(1), teacher=None, metadata=sample_metadata())  # replace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert_state_dicts_equal(load_checkpoint(path).student, seeded_model(1))


def test_failed_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, student=seeded_model(0), teacher=None, metadata=sample_metadata())
    before = path.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, student=seeded_model(1), teacher=None, metadata=sample_metadata())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# ---- bad files ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in load_error(tmp_path / "absent.safetensors")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "looks_like.safetensors"
    folder.mkdir()
    assert "not a regular file" in load_error(folder)


def test_broken_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link.safetensors"
    link.symlink_to(tmp_path / "gone.safetensors")
    assert "broken symbolic link" in load_error(link)


def test_symlink_to_a_good_file_loads(good: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.safetensors"
    link.symlink_to(good)
    assert load_checkpoint(link).sha256 == hashlib.sha256(good.read_bytes()).hexdigest()


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    assert "empty file" in load_error(path)


def test_shorter_than_the_length_field(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02\x03\x04\x05")
    message = load_error(path)
    assert "truncated" in message and "5 bytes" in message


def test_larger_than_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    with path.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    assert "larger than" in load_error(path)


def test_truncated_file(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good.read_bytes()[:-16])
    assert "not a valid safetensors file" in load_error(path)


def test_truncated_inside_the_header(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good.read_bytes()[:40])
    assert "header runs past the end" in load_error(path)


def test_header_length_larger_than_the_file(tmp_path: Path) -> None:
    path = tmp_path / "liar.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    assert "header runs past the end" in load_error(path)


def test_header_length_above_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "giant_header.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}" * 8)
    message = load_error(path)
    assert f"header claims {MAX_HEADER_BYTES + 1} bytes" in message
    assert "not a safetensors checkpoint" in message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"this is not json", "header is not valid JSON"),
        (b"\xff\xfe\xfd", "header is not valid JSON"),
        (b"[1, 2, 3]", "header is not a JSON object"),
        (b"{}", f"no '{METADATA_KEY}' metadata"),
        (b'{"__metadata__": null}', f"no '{METADATA_KEY}' metadata"),
    ],
)
def test_bad_header(tmp_path: Path, header: bytes, expected: str) -> None:
    path = tmp_path / "bad_header.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    assert expected in load_error(path)


def test_metadata_field_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "bad_header.safetensors"
    header = b'{"__metadata__": "a string"}'
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    load_error(path)


def test_foreign_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    message = load_error(path)
    assert f"no '{METADATA_KEY}' metadata" in message and "not a ctm-serve checkpoint" in message


def test_foreign_file_with_other_metadata(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, path, metadata={"format": "pt"})
    assert "not a ctm-serve checkpoint" in load_error(path)


def test_metadata_not_json(tmp_path: Path) -> None:
    path = write_file(tmp_path / "m.safetensors", student_tensors(seeded_model(0)), {METADATA_KEY: "{oops"})
    assert f"'{METADATA_KEY}' metadata is not valid JSON" in load_error(path)


def test_metadata_not_an_object(tmp_path: Path) -> None:
    path = write_file(tmp_path / "m.safetensors", student_tensors(seeded_model(0)), {METADATA_KEY: "[1, 2]"})
    assert f"'{METADATA_KEY}' metadata is not a JSON object" in load_error(path)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.pop("network"), "lacks a valid architecture"),
        (lambda m: m.pop("noise"), "lacks a valid architecture"),
        (lambda m: m["network"].update(width=0), "lacks a valid architecture"),
        (lambda m: m["network"].update(colour="red"), "lacks a valid architecture"),
        (lambda m: m["noise"].update(sigma_min=20.0), "lacks a valid architecture"),
        (lambda m: m["noise"].update(sigma_data=None), "noise.sigma_data must be set"),
    ],
)
def test_bad_architecture_metadata(tmp_path: Path, edit: Any, expected: str) -> None:
    meta = metadata_json()
    edit(meta)
    path = write_file(tmp_path / "arch.safetensors", student_tensors(seeded_model(0)), file_header(meta))
    assert expected in load_error(path, one_line=False)


def test_invalid_network_settings_give_a_one_line_message(tmp_path: Path) -> None:
    meta = metadata_json()
    meta["network"]["width"] = 0
    path = write_file(tmp_path / "arch.safetensors", student_tensors(seeded_model(0)), file_header(meta))
    assert "lacks a valid architecture" in load_error(path, one_line=True)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.update(colour="red"), "invalid metadata, unknown field colour"),
        (lambda m: m["task"].update(colour="red"), "unknown field task.colour"),
        (lambda m: m["training"]["state"].update(epoch=3), "unknown field training.state.epoch"),
        (lambda m: m["metrics"].update(qW1_onestep=1.25), "unknown field metrics.qW1_onestep"),
        (lambda m: m.pop("task"), "invalid metadata, missing field task"),
        (lambda m: m.pop("created_at"), "missing field created_at"),
        (lambda m: m["task"].pop("name"), "missing field task.name"),
        (lambda m: m["training"].pop("state"), "missing field training.state"),
        (lambda m: m["training"]["state"].update(phase="halfway"), "training.state.phase: Input should be"),
        (lambda m: m["training"]["ctm"].update(steps=-1), "training.ctm.steps: Input should be greater"),
        (lambda m: m["metrics"].update(rows="many"), "metrics.rows: Input should be a valid list"),
        (
            lambda m: m["task"].update(kde_points=[1.0, "2"]),
            "task.kde_points.1: Input should be a valid number",
        ),
        (lambda m: m.update(training=[]), "training: Input should be a valid dictionary"),
        (lambda m: m.update(created_at=None), "created_at: Input should be a valid string"),
    ],
)
def test_malformed_metadata_is_refused_with_the_field_named(tmp_path: Path, edit: Any, expected: str) -> None:
    """Any field unknown, missing or of the wrong kind: one line naming it, and what to do."""
    meta = metadata_json()
    edit(meta)
    path = write_file(tmp_path / "meta.safetensors", student_tensors(seeded_model(0)), file_header(meta))
    message = load_error(path)
    assert expected in message and "retrain it" in message


def test_wrong_tensor_shape(tmp_path: Path) -> None:
    path = tmp_path / "shape.safetensors"
    wide = seeded_model(0, NetworkConfig(kind="mlp", width=32, depth=2))
    save_checkpoint(path, student=wide, teacher=None, metadata=sample_metadata(NETWORK))  # claims width 16
    message = load_error(path)
    assert "student.net.mlp.0.weight" in message
    assert "[32," in message and "expected torch.float32[16," in message


def test_wrong_number_of_monotone_units(tmp_path: Path) -> None:
    path = tmp_path / "units.safetensors"
    more = seeded_model(0, MONOTONE.model_copy(update={"units": 16}))
    save_checkpoint(path, student=more, teacher=None, metadata=sample_metadata(MONOTONE))  # claims 8 units
    message = load_error(path)
    # The head gives 3 coefficients per unit and 3 more (b, l, ρ): 51 rows for 16 units, 27 for 8.
    assert "student.net.head.weight" in message
    assert "[51, 16]" in message and "expected torch.float32[27, 16]" in message


def test_wrong_dtype(tmp_path: Path) -> None:
    path = tmp_path / "double.safetensors"
    save_checkpoint(path, student=seeded_model(0).double(), teacher=None, metadata=sample_metadata())
    message = load_error(path)
    assert "torch.float64" in message and "expected torch.float32" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(tmp_path: Path, value: float) -> None:
    model = seeded_model(0)
    with torch.no_grad():
        model.net.mlp[2].weight[3, 4] = value
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, student=model, teacher=None, metadata=sample_metadata())
    message = load_error(path)
    assert "student.net.mlp.2.weight" in message and "NaN or infinite" in message


def test_non_finite_teacher_weights(tmp_path: Path) -> None:
    teacher = seeded_model(1)
    with torch.no_grad():
        teacher.net.mlp[0].bias[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, student=seeded_model(0), teacher=teacher, metadata=sample_metadata())
    assert "teacher.net.mlp.0.bias holds NaN" in load_error(path)


def test_missing_tensor(tmp_path: Path) -> None:
    tensors = student_tensors(seeded_model(0))
    del tensors["student.net.mlp.2.bias"]
    path = write_file(tmp_path / "missing.safetensors", tensors, file_header(sample_metadata()))
    message = load_error(path)
    assert "do not match the architecture" in message and "net.mlp.2.bias" in message


def test_a_mismatch_names_the_first_three_of_each_kind(tmp_path: Path) -> None:
    tensors = student_tensors(seeded_model(0))
    missing = sorted(k for k in tensors if k.startswith("student.net."))[:5]
    for key in missing:
        tensors[key.replace("student.net.", "student.old.")] = tensors.pop(key)
    path = write_file(tmp_path / "renamed.safetensors", tensors, file_header(sample_metadata()))
    names = [k.removeprefix("student.") for k in missing]
    unexpected = sorted(n.replace("net.", "old.") for n in names)
    assert load_error(path) == (
        f"{path}: student weights do not match the architecture "
        f"(missing {names[:3]}, unexpected {unexpected[:3]})"
    )


def test_missing_teacher(tmp_path: Path) -> None:
    path = write_file(
        tmp_path / "t.safetensors", student_tensors(seeded_model(0)), file_header(sample_metadata(), True)
    )
    message = load_error(path)
    assert "teacher weights do not match" in message and "missing" in message


def test_extra_tensor_inside_a_known_prefix(tmp_path: Path) -> None:
    tensors = student_tensors(seeded_model(0)) | {"student.net.extra": torch.zeros(3)}
    path = write_file(tmp_path / "extra.safetensors", tensors, file_header(sample_metadata()))
    message = load_error(path)
    assert "unexpected ['net.extra']" in message


def test_extra_tensor_outside_the_known_prefixes(tmp_path: Path) -> None:
    tensors = student_tensors(seeded_model(0)) | {"payload": torch.zeros(3)}
    path = write_file(tmp_path / "extra.safetensors", tensors, file_header(sample_metadata()))
    assert "unexpected tensors ['payload']" in load_error(path)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_renamed_to_safetensors(tmp_path: Path, protocol: int) -> None:
    # Hostile input produced in the test only; nothing is ever unpickled.
    path = tmp_path / "model.safetensors"
    payload = {"student.net.mlp.0.weight": [[0.0] * 19] * 16, "note": "x" * 64}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    message = load_error(path)
    assert "not a safetensors checkpoint" in message or "not valid JSON" in message


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes()
    )
    load_error(path)


def test_random_bytes_behind_a_plausible_length(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    body = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(1)).byte().numpy().tobytes()
    path.write_bytes(struct.pack("<Q", 100) + body)
    assert "header is not valid JSON" in load_error(path)


def test_corrupted_tensor_offsets(good: Path, tmp_path: Path) -> None:
    data = good.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    name = next(k for k in header if k != "__metadata__")
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 4]  # overlaps the next tensor
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "offsets.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + header_len :])
    assert "not a valid safetensors file" in load_error(path)


# ---- no pickle anywhere in the shipped code ----------------------------------------------------

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve"}


def _pickle_uses(source: str) -> list[str]:
    """Lines that could unpickle: pickle-family imports, torch.load, np.load without allow_pickle=False."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [
                f"{node.lineno}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in _PICKLE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLE_MODULES:
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            name = f"{owner}.{node.func.attr}"
            if name in {"torch.load", "pd.read_pickle", "pandas.read_pickle"} or owner in _PICKLE_MODULES:
                found.append(f"{node.lineno}: {name}(")
            elif node.func.attr == "load" and owner in {"np", "numpy"}:
                safe = any(
                    k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in node.keywords
                )
                if not safe:
                    found.append(f"{node.lineno}: {name}( without allow_pickle=False")
    return found


def test_pickle_scanner_catches_the_patterns() -> None:
    bad = (
        "import pickle\nimport cloudpickle\nfrom joblib import load\nimport torch, numpy as np\n"
        "torch.load('x')\nnp.load('x')\nnp.load('x', allow_pickle=True)\npickle.loads(b'')\n"
    )
    assert len(_pickle_uses(bad)) == 7
    assert _pickle_uses("import numpy as np\nnp.load('x', allow_pickle=False)\n# torch.load(x)\n") == []


def test_no_pickle_in_shipped_code() -> None:
    files = [p for folder in ("ctm_core", "service", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    assert any(p.name == "checkpoint.py" for p in files)
    offenders = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(ROOT)}:{hit}" for hit in _pickle_uses(source)]
        # Belt and braces against dynamic spellings that the AST walk would not see.
        if "torch.load(" in source or "joblib.load" in source or "cloudpickle" in source:
            offenders.append(f"{path.relative_to(ROOT)}: text match")
    assert offenders == []


# ---- what a checkpoint records, and how it is written ------------------------------------------------


def test_the_metadata_holds_every_fact_under_its_documented_key(good: Path) -> None:
    meta = load_checkpoint(good).metadata
    assert (meta.network, meta.noise) == (NETWORK, NOISE)
    assert meta.task == TaskInfo(name="two_gmm_1D", description="test task")
    assert meta.training == TRAINING and meta.training.ctm.steps == 7 and meta.training.seed == 3
    assert meta.training.train_config(NETWORK, NOISE) == TrainConfig(
        seed=3, ctm=CTMConfig(steps=7), network=NETWORK, noise=NOISE
    )
    assert meta.metrics == Metrics(rows=[{"label": "student onestep", "qW1": 0.5}])
    assert meta.package_version == ctm_core.__version__
    assert meta.created_at == CREATED_AT
    bare = checkpoint_metadata(network=NETWORK, noise=NOISE, task=TaskInfo(name="t"))
    assert bare.training is None and bare.metrics == Metrics()
    written = bare.model_dump(mode="json")  # absent, not null
    assert (
        "training" not in written
        and written["metrics"] == {}
        and written["task"] == {"name": "t", "description": ""}
    )
    with pytest.raises(
        ValueError, match=r"noise.sigma_data must be set \(the value the model was trained with\)"
    ):
        checkpoint_metadata(network=NETWORK, noise=NoiseConfig(), task=TaskInfo(name="t"))


def test_the_header_is_written_with_sorted_keys(good: Path) -> None:
    # Sorted keys: the same model and metadata give the same bytes, so the same sha256.
    length = struct.unpack("<Q", good.read_bytes()[:8])[0]
    header = json.loads(good.read_bytes()[8 : 8 + length])
    text = header["__metadata__"][METADATA_KEY]
    assert text == json.dumps(json.loads(text), sort_keys=True)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_written_file_has_the_usual_mode(tmp_path: Path, umask: int) -> None:
    # mkstemp makes 0600 files; a checkpoint is written 0666 less the umask, like any new file.
    previous = os.umask(umask)
    try:
        path = tmp_path / "m.safetensors"
        atomic_write_bytes(path, b"payload")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.umask(previous) == previous  # the process's umask is left as it was


def test_the_temporary_file_is_hidden_beside_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In the target's folder (a rename across file systems is not atomic), hidden, named after it.
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(tmp_path / "m.safetensors", b"payload")
    ((src, dst),) = seen
    assert Path(src).parent == tmp_path and Path(src).name.startswith(".m.safetensors.")
    assert str(src).endswith(".tmp") and Path(dst) == tmp_path / "m.safetensors"


def test_a_failed_write_reports_the_write_error_not_the_cleanup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(tmp_path / "m.safetensors", b"payload")
    assert list(tmp_path.iterdir()) == []


# ---- exact messages at the limits (each boundary checked from both sides) ----------------------


def test_invalid_metadata_message_in_full(tmp_path: Path) -> None:
    meta = metadata_json()
    meta.update(colour="red")
    path = write_file(tmp_path / "one.safetensors", student_tensors(seeded_model(0)), file_header(meta))
    assert load_error(path) == (
        f"{path}: invalid metadata, unknown field colour: the file is damaged or was not "
        "written by ctm-serve; retrain it"
    )
    meta = metadata_json()
    meta.update(colour="red", flavour="sweet")
    path = write_file(tmp_path / "two.safetensors", student_tensors(seeded_model(0)), file_header(meta))
    assert load_error(path) == (
        f"{path}: invalid metadata, unknown field colour (and 1 more): the file is damaged or was not "
        "written by ctm-serve; retrain it"
    )


def test_a_file_of_exactly_the_size_limit_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "MAX_FILE_BYTES", 64)
    path = tmp_path / "edge.safetensors"
    path.write_bytes(struct.pack("<Q", 56) + b" " * 56)  # 64 bytes: past the size check, then JSON
    assert load_error(path) == f"{path}: the safetensors header is not valid JSON"
    path.write_bytes(struct.pack("<Q", 57) + b" " * 57)
    assert load_error(path) == f"{path}: 65 bytes is larger than the 64-byte limit"


def test_a_length_field_alone_and_a_header_of_exactly_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "eight.safetensors"
    path.write_bytes(struct.pack("<Q", 0))  # 8 bytes: the length field whole, an empty header
    assert load_error(path) == f"{path}: the safetensors header is not valid JSON"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES) + b"{}")
    assert load_error(path) == f"{path}: truncated (header runs past the end of the file)"


def test_the_length_field_is_unsigned(tmp_path: Path) -> None:
    path = tmp_path / "all_ones.safetensors"
    path.write_bytes(b"\xff" * 8 + b"{}")
    assert f"header claims {2**64 - 1} bytes" in load_error(path)


def test_a_read_error_is_named(tmp_path: Path, good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_read(self: Path) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "read_bytes", failing_read)
    assert load_error(good) == f"{good}: cannot read (Input/output error)"


def test_unknown_tensors_are_named_three_at_most(tmp_path: Path) -> None:
    tensors = student_tensors(seeded_model(0)) | {f"junk.{c}": torch.zeros(1) for c in "abcd"}
    path = write_file(tmp_path / "junk.safetensors", tensors, file_header(sample_metadata()))
    message = load_error(path)
    assert message.startswith(f"{path}: unexpected tensors [") and message.count("'junk.") == 3
