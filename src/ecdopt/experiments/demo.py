"""``ecdopt demo``: reduced versions of the synthetic experiments (§4.1-4.3) and of the
time-averaged basin occupation, in about a minute.

Prints a paper-vs-measured table (counts with 95% Wilson intervals, ratios with 95% intervals)
and writes ``DIR/synthetic_<stage>.json`` (each stage's file
as soon as it finishes, and after each optimizer or direction within it; ``complete`` says
whether the stage finished) and PNG plots. The full protocols are
``ecdopt synthetic ackley|zakharov|basins|occupation`` (see docs/synthetic.md).

The stages are a list (:func:`demo_stages`): each names its protocol run, its plot, its step
count for the progress bar and its rows of the table, so adding, removing or resizing a stage
touches that list only.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ecdopt.experiments.cli_common import (
    ResultsFile,
    add_common_options,
    check_outputs,
    progress_bar,
    show_progress,
)
from ecdopt.experiments.synthetic.occupation import (
    OccupationConfig,
    occupation_protocol,
    smoke_config,
)
from ecdopt.experiments.synthetic.protocols import (
    AckleyConfig,
    BasinsConfig,
    ZakharovConfig,
    ackley_protocol,
    basins_protocol,
    zakharov_protocol,
)
from ecdopt.stats import wilson_interval

__all__ = ["Stage", "add_parser", "demo_configs", "demo_stages", "run_demo"]

Row = tuple[str, str, str]
Progress = Callable[[int], None]
OnResult = Callable[[dict], None]


@dataclass(frozen=True)
class Stage:
    """One step of the demo: ``run(progress, on_result) -> (summary, extras)``, its plot
    ``plot(summary, extras, out_dir)``, its number of steps (for the bar) and its table rows."""

    name: str
    run: Callable[[Progress, OnResult], tuple[dict, dict]]
    plot: Callable[[dict, dict, Path], list[Path]]
    steps: int
    rows: Callable[[dict], list[Row]]


def demo_configs(
    smoke: bool = False, seed: int = 0
) -> tuple[AckleyConfig, ZakharovConfig, BasinsConfig, OccupationConfig]:
    """The reduced protocols of the demo (``smoke``: seconds, for tests). ≤ 90 s on 2 cores."""
    ack = AckleyConfig(
        b=0.02,
        trials=100,
        tune_steps=200,
        batch=50,
        starts=20,
        repeats=5,
        steps=10_000,
        methods=("bbi", "sgdm"),
        seed=seed,
        # the values the full protocol tuned (docs/synthetic.md): 100 trials of 200 steps from
        # (−4, 3), a local minimum, mostly see no lower loss, so a short search is a lottery
        params={"bbi": {"lr": 0.00982}, "sgdm": {"lr": 0.175, "momentum": 0.19}},
    )
    zak = ZakharovConfig(
        trials=40, tune_steps=2500, batch=40, steps=5000, methods=("bbi", "sgdm", "adam"), seed=seed
    )
    bas = BasinsConfig(runs=1000, steps=5000, trajectories=10, seed=seed)
    occ = OccupationConfig(
        dynamics=("every-7.5",),
        dts=(0.02,),
        particles=4000,
        time=100.0,
        burn_in=10.0,
        radii=(1.0,),
        prediction_points=1000,
        seed=seed,
    )
    if smoke:
        ack = replace(ack, trials=4, tune_steps=30, batch=4, starts=3, repeats=2, steps=200)
        zak = replace(zak, trials=4, tune_steps=50, batch=4, steps=200)
        bas = replace(bas, runs=20, steps=800, trajectories=2)
        occ = replace(smoke_config(occ), dts=(0.02,))
    return ack, zak, bas, occ


def _count(k: int, n: int) -> str:
    iv = wilson_interval(k, n)
    return f"{k}/{n} [{100 * iv.low:.0f}-{100 * iv.high:.0f}%]"


def _ratio(iv: dict | None) -> str:
    if not iv or iv["value"] is None or not math.isfinite(iv["value"]):
        return "n/a"
    return f"{iv['value']:.2f} [{iv['low']:.2f}, {iv['high']:.2f}]"


def _ackley_rows(ack: dict) -> list[Row]:
    a, rows = ack["results"], []
    if "bbi" in a:
        rows.append(
            (
                f"4.1 Ackley (b={ack['ackley_b']}): BBI starts < 5e-4",
                "90/100 (5 tries, 3e4 it.)",
                f"{_count(a['bbi']['successes'], a['bbi']['starts'])} "
                f"({ack['protocol']['repeats']} tries, {ack['protocol']['steps']:.0e} it., "
                f"Δt = {ack['hyperparameters']['bbi']['lr']:g})",
            )
        )
    if "sgdm" in a:
        rows.append(
            (
                "4.1 Ackley: GDM starts < 5e-4",
                "2/100",
                _count(a["sgdm"]["successes"], a["sgdm"]["starts"]),
            )
        )
    return rows


def _zakharov_rows(zak: dict) -> list[Row]:
    z, rows = zak["results"], []
    if "bbi" in z:
        rows.append(
            ("4.2 Zakharov: BBI final loss", "1e-22 (floor)", f"{z['bbi']['final_loss']:.2e}")
        )
    if "sgdm" in z:
        rows.append(
            ("4.2 Zakharov: tuned GDM final loss", "far higher", f"{z['sgdm']['final_loss']:.2e}")
        )
    return rows


def _basins_rows(bas: dict) -> list[Row]:
    return [
        (
            f"4.3 first-passage ratio I/II, {d} bounces ({bas['runs']} runs)",
            f"{bas['predicted_ratio']:.3f} pred., within 11%",
            _ratio(entry["ratio_interval"]),
        )
        for d, entry in bas["by_direction"].items()
    ]


def _occupation_rows(occ: dict) -> list[Row]:
    rows = []
    for name, entry in occ["dynamics"].items():
        for run in entry["runs"]:
            rows.append(
                (
                    f"time-averaged occupation ratio I/II, {name} "
                    f"({run['particles']} particles, t = {run['measured_time']:g})",
                    f"{entry['predicted']['1']['ratio_full']:.3f} (eq. 40)",
                    _ratio(run["regions"]["1"]["ratio"]),
                )
            )
    return rows


def _tuned_steps(cfg: AckleyConfig | ZakharovConfig) -> int:
    return len(cfg.methods) * (cfg.trials * cfg.tune_steps + cfg.steps)


def demo_stages(smoke: bool = False, seed: int = 0) -> list[Stage]:
    """The demo's stages, in order."""
    from ecdopt.experiments.synthetic.plots import (
        plot_ackley,
        plot_basins,
        plot_occupation,
        plot_zakharov,
    )

    ack, zak, bas, occ = demo_configs(smoke, seed)
    directions = ("uniform", "gaussian")
    return [
        Stage(
            "ackley",
            lambda progress, on_result: ackley_protocol(ack, progress, True, on_result),
            plot_ackley,
            _tuned_steps(ack),
            _ackley_rows,
        ),
        Stage(
            "zakharov",
            lambda progress, on_result: zakharov_protocol(zak, progress, on_result),
            plot_zakharov,
            _tuned_steps(zak),
            _zakharov_rows,
        ),
        Stage(
            "basins",
            lambda progress, on_result: basins_protocol(bas, directions, progress, on_result),
            plot_basins,
            len(directions) * bas.steps,
            _basins_rows,
        ),
        Stage(
            "occupation",
            lambda progress, on_result: (occupation_protocol(occ, progress, on_result), {}),
            lambda summary, extras, out: plot_occupation(summary, out),
            sum(round((occ.burn_in + occ.time) / dt) for dt in occ.dts) * len(occ.dynamics),
            _occupation_rows,
        ),
    ]


def run_demo(
    out: Path,
    smoke: bool = False,
    progress: bool = True,
    *,
    seed: int = 0,
    stages: list[Stage] | None = None,
    log: Callable[[str], None] | None = None,
    on_stage: Callable[[str, dict, list[Row]], None] | None = None,
) -> list[Row]:
    """Run the stages, write each one's JSON (as it goes) and plots into ``out``; return the
    table rows. ``on_stage(name, summary, rows so far)`` is called after each stage."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = demo_stages(smoke, seed) if stages is None else stages
    rows: list[Row] = []
    for k, stage in enumerate(stages):
        results = ResultsFile(out / f"synthetic_{stage.name}.json", {"complete": False})
        t0 = time.perf_counter()
        desc = f"demo {k + 1}/{len(stages)} {stage.name}"
        with progress_bar(progress, stage.steps, desc) as bar:
            summary, extras = stage.run(
                bar.update, lambda partial, r=results: r.update(**partial, complete=False)
            )
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        results.doc = {**summary, "complete": True}
        results.write()
        rows.extend(stage.rows(summary))
        if on_stage is not None:
            on_stage(stage.name, results.doc, list(rows))
        stage.plot(summary, extras, out)
        if log is not None:
            log(f"{desc}: done in {summary['seconds']} s, wrote {results.path}")
    return rows


def _main(args: argparse.Namespace) -> int:
    check_outputs(args)
    log = None if args.quiet else (lambda line: print(line, flush=True))
    combined = ResultsFile(args.json, {"stages": {}, "table": [], "complete": False})

    def on_stage(name: str, summary: dict, rows: list[Row]) -> None:
        combined.doc["stages"][name] = summary
        combined.update(table=[list(r) for r in rows])

    from ecdopt.experiments.synthetic.cli import one_thread

    with one_thread():
        rows = run_demo(
            args.out,
            smoke=args.smoke,
            progress=show_progress(args),
            seed=args.seed,
            log=log,
            on_stage=on_stage,
        )
    combined.update(complete=True)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in [*rows, ("", "paper", "")])
    print(f"{'experiment':<{w0}}  {'paper':<{w1}}  measured (reduced protocol)")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")
    print(f"JSON and plots in {args.out}/ ; full protocols: ecdopt synthetic --help")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command."""
    p = subparsers.add_parser(
        "demo",
        help="reduced synthetic experiments (§4.1-4.3) with a paper-vs-measured table",
        description="Reduced versions of ecdopt synthetic ackley|zakharov|basins|occupation "
        "(about a minute).",
    )
    add_common_options(
        p,
        seed_help="seed of every stage",
        json_help="also write every stage's summary and the table into this one file",
        out_help="JSON and PNG output folder (default: results)",
    )
    p.set_defaults(out=Path("results"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for tests")
    p.set_defaults(func=_main)
    return p
