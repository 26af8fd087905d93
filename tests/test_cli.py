"""The ``ecdopt`` command's shared plumbing: lazy sub-commands, the optimizer registry and the
one CLI convention (argparse ranges, output checks, strict atomic JSON)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecdopt._errors import CommandError
from ecdopt.experiments import cli_common as C
from ecdopt.experiments import registry

ECDOPT = [sys.executable, "-m", "ecdopt.cli"]


def test_help_lists_every_command_without_importing_them() -> None:
    code = (
        "import sys; from ecdopt.cli import build_parser; p = build_parser(); "
        "text = p.format_help(); "
        "print(sorted(m for m in sys.modules if m.startswith('ecdopt.experiments'))); "
        "print(text)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, _, text = out.stdout.partition("\n")
    assert first == "[]"
    for name in ("demo", "synthetic", "pde", "train", "tune"):
        assert name in text


def test_each_command_imports_only_its_own_module() -> None:
    code = (
        "import sys; from ecdopt.cli import build_parser; build_parser('tune'); "
        "print(sorted(m for m in sys.modules if m.startswith('ecdopt.experiments.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # a printed list of strings
    assert "ecdopt.experiments.tune.cli" in loaded
    assert not [m for m in loaded if m.split(".")[2] in ("pde", "vision", "synthetic", "demo")]


def test_sub_command_help_through_the_entry_point() -> None:
    out = subprocess.run([*ECDOPT, "pde", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--preset" in out.stdout


# --------------------------------------------------------------------------------------------
# registry


@pytest.mark.parametrize("name", registry.OPTIMIZERS)
def test_registry_builds_every_optimizer_and_it_steps(name: str) -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    settings = {"lr": 0.01}
    opt = registry.make_optimizer(name, [w], settings, seed=0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    before = w.detach().clone()
    opt.step(closure)
    assert not torch.equal(before, w.detach())


def test_registry_ranges_name_the_hyperparameter() -> None:
    assert registry.check_hyperparameter("bounce_period", 20.0) == 20
    assert isinstance(registry.check_hyperparameter("bounce_period", 20.0), int)
    for name, bad in [
        ("lr", -1.0),
        ("lr", math.nan),
        ("extra_energy", -1.0),
        ("bounce_period", 0),
        ("bounce_period", 1.5),
        ("n_bounces", -1),
        ("momentum", -0.5),
        ("momentum", 1.0),
        ("loss_power", 0.0),
    ]:
        with pytest.raises(ValueError, match=name):
            registry.check_hyperparameter(name, bad)


def test_every_search_space_lies_in_the_allowed_ranges() -> None:
    for spaces in registry.SEARCH_SPACES.values():
        for space in spaces.values():
            for name, (lo, hi, _log) in space.items():
                spec = registry.HYPERPARAMETERS[name]
                assert spec.contains(lo) and lo < hi, (name, lo, hi)
    for grid in registry.GRIDS.values():
        for name, values in grid.items():
            assert all(registry.HYPERPARAMETERS[name].contains(v) for v in values)


# --------------------------------------------------------------------------------------------
# argparse types


def _parse(kind, text: str):
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--x", type=kind)
    return parser.parse_args(["--x", text]).x


def test_argparse_types_enforce_ranges() -> None:
    assert _parse(C.seed_type, "0") == 0
    assert _parse(C.seed_type, str(2**63 - 1)) == 2**63 - 1
    for bad in ("-1", str(2**63), "1.5", "abc"):
        with pytest.raises(argparse.ArgumentError):
            _parse(C.seed_type, bad)
    positive = C.float_type(0, low_open=True)
    assert _parse(positive, "1e-3") == 1e-3
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentError):
            _parse(positive, bad)
    assert _parse(C.hyperparameter_type("bounce_period"), "20") == 20
    for bad in ("0", "0.5", "1.5", "nan"):
        with pytest.raises(argparse.ArgumentError):
            _parse(C.hyperparameter_type("bounce_period"), bad)


# --------------------------------------------------------------------------------------------
# output paths and JSON


def test_output_paths_are_checked_before_work(tmp_path: Path) -> None:
    assert C.check_json_path(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert (tmp_path / "new").is_dir()
    with pytest.raises(CommandError, match="is a folder"):
        C.check_json_path(tmp_path)
    with pytest.raises(CommandError, match="empty"):
        C.check_json_path("")
    with pytest.raises(CommandError, match="not a regular file"):
        C.check_json_path("/dev/null")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CommandError, match="not a folder"):
        C.check_out_dir(tmp_path / "file")
    with pytest.raises(CommandError, match="cannot write"):
        C.check_out_dir(tmp_path / "file" / "below")
    assert C.check_out_dir(tmp_path / "plots").is_dir()


def test_strict_json_replaces_non_finite_values_and_says_why(tmp_path: Path) -> None:
    doc = {"a": math.nan, "b": [1.0, math.inf], "c": {"d": -math.inf, "e": 2}, "t": torch.ones(2)}
    path = C.write_json(tmp_path / "r.json", doc)
    text = path.read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert loaded["a"] is None and loaded["b"] == [1.0, None] and loaded["c"] == {"d": None, "e": 2}
    assert loaded["t"] == [1.0, 1.0]
    assert loaded["non_finite"] == {"a": "nan", "b[1]": "inf", "c.d": "-inf"}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_results_file_rewrites_atomically(tmp_path: Path) -> None:
    results = C.ResultsFile(tmp_path / "r.json", {"stage": []})
    for k in range(3):
        results.doc["stage"].append(k)
        results.write()
        assert json.loads((tmp_path / "r.json").read_text())["stage"] == list(range(k + 1))
    assert str(tmp_path / "r.json") in C.saved_summary()
