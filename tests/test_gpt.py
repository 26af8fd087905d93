"""The transformer experiment (issue 13): model, attention biases, corpus splits, training runs,
tuning through the ``tune`` machinery, and ``ecdopt train gpt`` through the real entry point."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from ecdopt.experiments import registry
from ecdopt.experiments.gpt import data as D
from ecdopt.experiments.gpt.experiment import (
    ExperimentConfig,
    cell_hyperparameters,
    settings_of,
    tuning_objective,
)
from ecdopt.experiments.gpt.model import (
    GPT,
    AttentionBias,
    BiasSpec,
    GPTConfig,
    draw_biases,
    mean_biases,
)
from ecdopt.experiments.gpt.training import OPTIMIZERS, PRESETS, RunSpec, train_run

ROOT = Path(__file__).resolve().parents[1]
ECDOPT = [sys.executable, "-m", "ecdopt.cli"]
TINY = GPTConfig(vocab_size=256, context=12, n_layer=2, n_head=2, n_embd=16)

pytestmark = [pytest.mark.xdist_group("gpt"), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def small_corpus() -> D.Corpus:
    """A few kilobytes of the real standard-library corpus (fast runs)."""
    full = D.load_corpus()
    return D.Corpus(
        train=full.train[:20000],
        val=full.val[:4000],
        test=full.test[:4000],
        source="stdlib (head)",
        description={},
    )


def _spec(optimizer: str, **changes) -> RunSpec:  # type: ignore[no-untyped-def]
    base = dict(
        optimizer=optimizer,
        hyperparameters=cell_hyperparameters(optimizer, {}),
        model=TINY,
        bias=BiasSpec("qv"),
        batch_size=4,
        steps=5,
        eval_every=5,
        eval_windows=4,
        seed=3,
        device="cpu",
    )
    base.update(changes)
    return RunSpec(**base)


# ----------------------------------------------------------------------------------------------
# model


@pytest.mark.parametrize("kind", ["none", "qv"])
def test_output_at_t_does_not_depend_on_later_tokens(kind: str) -> None:
    torch.manual_seed(0)
    model = GPT(TINY)
    biases = draw_biases(BiasSpec(kind, 0.5, 0.3), TINY, torch.Generator().manual_seed(1), "cpu")
    x = torch.randint(0, 256, (3, TINY.context))
    t = 5
    changed = x.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1 + torch.arange(TINY.context - t - 1)) % 256
    with torch.no_grad():
        a, b = model(x, biases), model(changed, biases)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3  # later outputs do see them


def test_biases_are_inputs_not_parameters_and_change_the_output() -> None:
    torch.manual_seed(0)
    model = GPT(TINY)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "bias_q" in n or "b_q" in n.lower()]
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in GPT(TINY).parameters()
    )
    biases = draw_biases(BiasSpec("qv"), TINY, torch.Generator().manual_seed(0), "cpu")
    params = {id(p) for p in model.parameters()}
    for layer in biases:
        for b in (layer.query, layer.value):
            assert b is not None and id(b) not in params and not b.requires_grad
    x = torch.randint(0, 256, (2, TINY.context))
    loss = F.cross_entropy(model(x, biases).flatten(0, 1), x.flatten())
    loss.backward()
    assert all(b.grad is None for layer in biases for b in (layer.query, layer.value))
    with torch.no_grad():
        assert (model(x, biases) - model(x)).abs().max() > 1e-4


def test_biases_absent_when_off_and_zero_biases_change_nothing() -> None:
    spec = BiasSpec("none")
    assert draw_biases(spec, TINY, torch.Generator(), "cpu") is None
    assert mean_biases(spec, TINY, "cpu") is None
    torch.manual_seed(0)
    model = GPT(TINY)
    x = torch.randint(0, 256, (2, TINY.context))
    zero = torch.zeros(TINY.head_dim)
    with torch.no_grad():
        plain = model(x)
        torch.testing.assert_close(model(x, [AttentionBias(zero, zero)] * TINY.n_layer), plain)
    q_only = draw_biases(BiasSpec("q"), TINY, torch.Generator().manual_seed(0), "cpu")
    v_only = draw_biases(BiasSpec("v"), TINY, torch.Generator().manual_seed(0), "cpu")
    assert all(b.value is None and b.query is not None for b in q_only)
    assert all(b.query is None and b.value is not None for b in v_only)


def test_draws_are_fresh_per_call_per_layer_with_the_asked_mean_and_std() -> None:
    spec = BiasSpec("qv", mean=0.5, std=0.2)
    gen = torch.Generator().manual_seed(0)
    draws = [draw_biases(spec, TINY, gen, "cpu") for _ in range(400)]
    first, second = draws[0], draws[1]
    assert not torch.equal(first[0].query, second[0].query)  # a new draw per batch
    assert not torch.equal(first[0].query, first[1].query)  # and per layer
    assert not torch.equal(first[0].query, first[0].value)
    values = torch.stack([d[0].query for d in draws] + [d[1].value for d in draws])
    assert abs(values.mean().item() - 0.5) < 0.01
    assert abs(values.std().item() - 0.2) < 0.01
    mean = mean_biases(spec, TINY, "cpu")
    assert all(torch.equal(b.query, torch.full((TINY.head_dim,), 0.5)) for b in mean)


def test_a_key_bias_would_cancel_in_softmax() -> None:
    """Why no key bias is offered: softmax(q·(k + b)) = softmax(q·k)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 7, 4, generator=gen) for _ in range(3))
    b = torch.randn(4, generator=gen)
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k + b, v, is_causal=True), plain)


def test_training_draws_new_biases_for_every_step(
    small_corpus: D.Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ecdopt.experiments.gpt import training

    seen = []

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = draw_biases(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(training, "draw_biases", recording)
    train_run(_spec("bbi", steps=4, eval_every=4), small_corpus)
    assert len(seen) == 4
    queries = [s[0].query for s in seen]
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(queries))


def test_bad_model_settings_name_the_argument() -> None:
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="kind"):
        BiasSpec("k")
    with pytest.raises(ValueError, match="std"):
        BiasSpec("qv", std=-1.0)
    with pytest.raises(ValueError, match="context"):
        GPT(TINY)(torch.zeros(1, TINY.context + 1, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# data


def _fake_stdlib(root: Path) -> None:
    files = {
        "os.py": "import sys\n" * 50,
        "json/__init__.py": "x = 1\n" * 40,
        "json/decoder.py": "y = 2\n" * 30,
        "test/test_os.py": "left out\n",
        "site-packages/pkg.py": "left out\n",
        "idlelib/run.py": "left out\n",
        "_sysconfigdata__linux.py": "left out\n",
        "notes.txt": "not python\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_stdlib_files_sorted_and_without_tests_or_third_party(tmp_path: Path) -> None:
    _fake_stdlib(tmp_path)
    assert D.stdlib_files(tmp_path) == ["json/__init__.py", "json/decoder.py", "os.py"]
    real = D.stdlib_files()
    assert real == sorted(real) and len(real) > 100
    assert not [f for f in real if set(f.split("/")[:-1]) & D.EXCLUDED_DIRS]


def test_split_is_per_file_deterministic_and_independent_of_other_files(tmp_path: Path) -> None:
    _fake_stdlib(tmp_path)
    first = D.load_stdlib(tmp_path)
    again = D.load_stdlib(tmp_path)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert first.description["sha256"] == again.description["sha256"]
    total = sum(len((tmp_path / f).read_bytes()) for f in D.stdlib_files(tmp_path))
    assert sum(first.description["bytes"].values()) == total
    before = {f: D.split_of(f) for f in D.stdlib_files(tmp_path)}
    (tmp_path / "zzz_new.py").write_text("z = 3\n")
    assert {f: D.split_of(f) for f in before} == before  # adding a file moves no other file
    # the real corpus: about 5 % of the files each held out, every split non-empty
    real = D.load_corpus().description
    counts = real["files_per_split"]
    assert counts["val"] > 0 and counts["test"] > 0 and counts["train"] > 10 * counts["val"]


def test_a_file_splits_90_5_5_contiguously(tmp_path: Path) -> None:
    path = tmp_path / "text.txt"
    payload = bytes(range(256)) * 8
    path.write_bytes(payload)
    corpus = D.corpus_from_file(path)
    assert [len(corpus.train), len(corpus.val), len(corpus.test)] == [1843, 102, 103]
    joined = torch.cat([corpus.train, corpus.val, corpus.test])
    assert bytes(joined.tolist()) == payload
    corpus.check_context(64)
    with pytest.raises(D.DataError, match="val split"):
        corpus.check_context(200)
    with pytest.raises(D.DataError, match="cannot read"):
        D.corpus_from_file(tmp_path / "missing.txt")


def test_batches_are_windows_of_the_split_and_repeat_with_the_seed() -> None:
    split = torch.arange(1000) % 251
    split = split.to(torch.uint8)
    a = D.sample_batch(split, 8, 16, torch.Generator().manual_seed(5))
    b = D.sample_batch(split, 8, 16, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (8, 17) and a.dtype == torch.int64
    for row in a:  # consecutive bytes of the split
        assert torch.equal((row[1:] - row[:-1]) % 251, torch.ones(16, dtype=torch.int64))
    windows = D.eval_windows(split, 10, 16)
    assert windows.shape == (10, 17) and torch.equal(windows, D.eval_windows(split, 10, 16))
    assert windows[0, 0] == split[0] and windows[-1, -1] == split[-1]


# ----------------------------------------------------------------------------------------------
# runs


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_trains_a_few_steps(optimizer: str, small_corpus: D.Corpus) -> None:
    run = train_run(_spec(optimizer, steps=6, eval_every=3), small_corpus)
    assert run["steps"] == 6 and not run["diverged"]
    assert run["curves"]["step"] == [0, 3, 6]
    start, end = run["curves"]["train_loss"][1], run["curves"]["train_loss"][2]
    assert run["test_loss"] < run["curves"]["test_loss"][0]  # it learned something
    assert start is not None and end is not None
    if optimizer in ("bbi", "ecdsep", "unit_speed"):
        assert isinstance(run["off_shell_steps"], int) and run["skipped_steps"] == 0
    else:
        assert run["off_shell_steps"] is None


def test_a_run_repeats_exactly_with_its_seed(small_corpus: D.Corpus) -> None:
    a = train_run(_spec("unit_speed"), small_corpus)
    b = train_run(_spec("unit_speed"), small_corpus)
    c = train_run(_spec("unit_speed", seed=4), small_corpus)
    assert a["curves"] == b["curves"] and a["test_loss"] == b["test_loss"]
    assert c["test_loss"] != a["test_loss"]


def test_a_diverging_run_stops_and_keeps_no_loss(small_corpus: D.Corpus) -> None:
    hyper = {"lr": 1e6, "momentum": 0.9}
    run = train_run(_spec("sgdm", hyperparameters=hyper, steps=20), small_corpus)
    assert run["diverged"] and run["val_loss"] is None and run["test_loss"] is None
    assert run["steps"] < 20


def test_registry_builds_the_new_optimizers() -> None:
    from ecdopt import UnitSpeedECD

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    us = registry.make_optimizer("unit_speed", [w], {"lr": 0.1, "loss_power": 100.0}, seed=0)
    assert isinstance(us, UnitSpeedECD) and us.config.loss_power == 100.0
    adamw = registry.make_optimizer("adamw", [w], {"lr": 0.1, "weight_decay": 0.01})
    assert isinstance(adamw, torch.optim.AdamW)
    for name in OPTIMIZERS:
        assert set(registry.SEARCH_SPACES["gpt"][name]) <= set(registry.ACCEPTS[name])


def test_tuning_goes_through_the_tune_machinery(tmp_path: Path, small_corpus: D.Corpus) -> None:
    from ecdopt.experiments.tune.study import TuneConfig, TuneError, make_objective, run_worker

    settings = settings_of(ExperimentConfig(preset="smoke"))
    cfg = TuneConfig(
        task="gpt",
        optimizer="unit_speed",
        study="s",
        trials=2,
        storage=f"sqlite:///{tmp_path / 't.db'}",
        seed=0,
        extra={"settings": settings, "bias": "qv", "corpus": small_corpus},
    )
    study = run_worker(cfg, log=lambda _line: None)
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.value is not None and t.value < 6 for t in trials)
    assert trials[0].user_attrs["run"]["hyperparameters"]["loss_power"] == 100.0
    assert study.user_attrs["ecdopt"]["settings"] == settings
    # the objective scores a trial by its final validation loss
    objective = tuning_objective("unit_speed", 0, cfg.extra, small_corpus)
    assert objective(trials[0]) == pytest.approx(trials[0].value)
    with pytest.raises(TuneError, match="gpt task only"):
        make_objective(TuneConfig(task="digits", optimizer="unit_speed", study="x"))


def test_fixed_options_leave_the_search_and_must_apply() -> None:
    from ecdopt.experiments.gpt.experiment import (
        ExperimentError,
        cell_space,
        check_config,
    )

    assert "lr" not in cell_space("adamw", {"lr": 1e-3})
    assert cell_hyperparameters("sgdm", {"momentum": 0.8, "loss_floor": 1.0}) == {
        "lr": pytest.approx(cell_hyperparameters("sgdm", {})["lr"]),
        "momentum": 0.8,
    }
    with pytest.raises(ExperimentError, match="--momentum applies to none"):
        check_config(ExperimentConfig(optimizers=("adamw",), fixed={"momentum": 0.9}))
    with pytest.raises(ExperimentError, match="--resume needs --json"):
        check_config(ExperimentConfig(resume=True))


# ----------------------------------------------------------------------------------------------
# the command, through the real entry point


def _ecdopt(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*ECDOPT, *args], capture_output=True, text=True, timeout=timeout)


def test_train_gpt_smoke_through_the_entry_point(tmp_path: Path) -> None:
    out = _ecdopt(
        "train", "gpt", "--smoke", "--threads", "1", "--json", str(tmp_path / "r.json"),
        "--out", str(tmp_path / "plots"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["complete"] and doc["bias_kinds"] == ["none", "qv"]
    assert doc["optimizers"] == list(OPTIMIZERS)
    assert set(doc["cells"]) == {f"{o}/{b}" for o in OPTIMIZERS for b in ("none", "qv")}
    smoke = PRESETS["smoke"]
    for key, cell in doc["cells"].items():
        assert len(cell["tuning"]["trials"]) == smoke.trials
        assert [r["seed"] for r in cell["runs"]] == list(range(1, smoke.runs + 1))
        for run in cell["runs"]:
            assert "off_shell_steps" in run and run["steps"] == smoke.steps
            assert (run["off_shell_steps"] is None) == key.startswith(("adamw", "sgdm"))
        assert cell["summary"]["test_loss"]["n"] == smoke.runs
        assert doc["table"][cell["optimizer"]][cell["bias"]] == cell["summary"]["test_loss"]
    for line in doc["table"]:
        assert re.search(rf"^{line}\s+\d\.\d{{4}} ± \d\.\d{{4}}", out.stdout, re.M)
    assert (tmp_path / "plots" / "gpt-curves.png").stat().st_size > 0
    assert (tmp_path / "plots" / "gpt-tuning.png").stat().st_size > 0
    assert (tmp_path / "r-tuning.db").is_file()
    # --resume: nothing left to do, the same results
    again = _ecdopt(
        "train", "gpt", "--smoke", "--threads", "1", "--json", str(tmp_path / "r.json"),
        "--resume",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert " trial " not in again.stdout and " run " not in again.stdout
    assert json.loads((tmp_path / "r.json").read_text())["table"] == doc["table"]
    # other settings: refused
    other = _ecdopt(
        "train", "gpt", "--smoke", "--steps", "7", "--json", str(tmp_path / "r.json"), "--resume"
    )
    assert other.returncode == 2 and "other settings" in other.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizer", "adam"], "--optimizer: expected a comma-separated list"),
        (["--attn-bias", "k"], "--attn-bias: expected a comma-separated list"),
        (["--attn-bias-std", "-1"], "--attn-bias-std: expected a finite number >= 0"),
        (["--optimizer", "adamw", "--momentum", "0.9"], "--momentum applies to none"),
        (["--lr", "0"], "--lr: expected a finite number > 0"),
        (["--data", "/nonexistent/file.txt"], "cannot read"),
        (["--resume"], "--resume needs --json"),
        (["--preset", "gpt2-small"], "not allowed with argument"),
    ],
)
def test_mistakes_end_in_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    from ecdopt.cli import main

    status = main(["train", "gpt", "--smoke", *args])
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("ecdopt train gpt: error:") and message in lines[-1]
    assert "Traceback" not in err


def test_a_mistake_through_the_entry_point_and_json_checked_first(tmp_path: Path) -> None:
    out = _ecdopt("train", "gpt", "--smoke", "--json", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("ecdopt train gpt: error: --json")
    assert "is a folder" in out.stderr


def test_help_of_train_gpt_and_train_digits_are_their_own(capsys: pytest.CaptureFixture) -> None:
    from ecdopt.cli import main

    for argv, wanted in (
        (["train", "gpt", "--help"], "--attn-bias-mean"),
        (["train", "--help"], "--protocol"),
    ):
        assert main(argv) == 0 and wanted in capsys.readouterr().out


def test_train_gpt_is_parsed_by_its_own_module_only() -> None:
    code = (
        "import sys; from ecdopt.cli import _chosen, build_parser; "
        "argv = ['train', 'gpt', '--smoke', '--optimizer', 'unit_speed']; "
        "assert _chosen(argv) == 'train gpt' and _chosen(['train', 'digits']) == 'train'; "
        "args = build_parser(_chosen(argv)).parse_args(argv); "
        "print(args.optimizer, "
        "sorted(m for m in sys.modules if m.startswith('ecdopt.experiments.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    chosen, loaded = out.stdout.split(" ", 1)
    assert chosen == "('unit_speed',)"
    assert "ecdopt.experiments.gpt.cli" in loaded and "vision" not in loaded


def test_ctrl_c_exits_130_naming_what_was_saved(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    proc = subprocess.Popen(
        [*ECDOPT, "train", "gpt", "--smoke", "--steps", "400", "--threads", "1",
         "--optimizer", "adamw", "--attn-bias", "none", "--json", str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not target.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        f"ecdopt train gpt: interrupted; results so far in {target}, {tmp_path / 'r-tuning.db'}"
    )
    assert "Traceback" not in err
    doc = json.loads(target.read_text())
    assert doc["complete"] is False and doc["cells"]["adamw/none"]["tuning"]["trials"]
