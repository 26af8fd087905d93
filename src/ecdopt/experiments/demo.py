"""``ecdopt demo``: reduced versions of the three synthetic experiments (§4.1-4.3) in minutes.

Prints a paper-vs-measured table and writes ``DIR/synthetic_*.json`` and PNG plots. The full
protocols are ``ecdopt synthetic ackley|zakharov|basins`` (see docs/synthetic.md).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from ecdopt.experiments.synthetic.protocols import (
    AckleyConfig,
    BasinsConfig,
    ZakharovConfig,
    ackley_protocol,
    basins_protocol,
    zakharov_protocol,
)

__all__ = ["add_parser", "demo_configs", "run_demo"]


def demo_configs(smoke: bool = False) -> tuple[AckleyConfig, ZakharovConfig, BasinsConfig]:
    """The reduced protocols of the demo (``smoke``: seconds, for tests)."""
    ack = AckleyConfig(
        b=0.02,
        trials=100,
        tune_steps=200,
        batch=50,
        starts=40,
        repeats=5,
        steps=30_000,
        methods=("bbi", "sgdm"),
    )
    zak = ZakharovConfig(trials=100, tune_steps=2500, batch=50, methods=("bbi", "sgdm", "adam"))
    bas = BasinsConfig(runs=2000, occupation_runs=50, occupation_steps=5000, trajectories=10)
    if smoke:
        ack = replace(ack, trials=4, tune_steps=30, batch=4, starts=3, repeats=2, steps=200)
        zak = replace(zak, trials=4, tune_steps=50, batch=4, steps=200)
        bas = replace(
            bas,
            runs=20,
            steps=800,
            occupation_runs=5,
            occupation_steps=200,
            occupation_burn_in=50,
            trajectories=2,
        )
    return ack, zak, bas


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _rows(ack: dict, zak: dict, bas: dict) -> list[tuple[str, str, str]]:
    a, z = ack["results"], zak["results"]
    rows = [
        (
            f"4.1 Ackley (b={ack['ackley_b']}): BBI starts < 5e-4",
            "90/100 (5 tries, 3e4 it.)",
            f"{a['bbi']['successes']}/{a['bbi']['starts']} ({ack['protocol']['repeats']} tries, "
            f"{ack['protocol']['steps']:.0e} it.)",
        ),
        (
            "4.1 Ackley: GDM starts < 5e-4",
            "2/100",
            f"{a['sgdm']['successes']}/{a['sgdm']['starts']}",
        ),
        ("4.2 Zakharov: BBI final loss", "1e-22 (floor)", f"{z['bbi']['final_loss']:.2e}"),
        (
            "4.2 Zakharov: tuned GDM final loss",
            "far higher",
            f"{z['sgdm']['final_loss']:.2e}",
        ),
    ]
    for d, entry in bas["by_direction"].items():
        rows.append(
            (
                f"4.3 basins ratio I/II, {d} bounces ({bas['runs']} runs)",
                f"{bas['predicted_ratio']:.3f} pred., within 11%",
                _fmt(entry["measured_ratio"]),
            )
        )
        occ = entry.get("occupation")
        if occ:
            rows.append(
                (
                    f"   time-averaged occupation ratio, {d}",
                    f"{occ['predicted_ratio_eq40']:.3f} (eq. 40)",
                    _fmt(occ["measured_ratio"]),
                )
            )
    return rows


def run_demo(out: Path, smoke: bool = False, progress: bool = True) -> list[tuple[str, str, str]]:
    """Run the three reduced experiments, write JSON and plots into ``out``, return the table."""
    from tqdm import tqdm

    from ecdopt.experiments.synthetic.plots import plot_ackley, plot_basins, plot_zakharov

    ack_cfg, zak_cfg, bas_cfg = demo_configs(smoke)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=3, desc="demo", disable=not progress, leave=False) as bar:
        t0 = time.perf_counter()
        ack, ack_x = ackley_protocol(ack_cfg)
        ack["seconds"] = round(time.perf_counter() - t0, 1)
        plot_ackley(ack, ack_x, out)
        bar.update()
        t0 = time.perf_counter()
        zak, zak_x = zakharov_protocol(zak_cfg)
        zak["seconds"] = round(time.perf_counter() - t0, 1)
        plot_zakharov(zak, zak_x, out)
        bar.update()
        t0 = time.perf_counter()
        bas, bas_x = basins_protocol(bas_cfg, ("uniform", "gaussian"))
        bas["seconds"] = round(time.perf_counter() - t0, 1)
        plot_basins(bas, bas_x, out)
        bar.update()
    for name, summary in (("ackley", ack), ("zakharov", zak), ("basins", bas)):
        (out / f"synthetic_{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return _rows(ack, zak, bas)


def _main(args: argparse.Namespace) -> int:
    rows = run_demo(Path(args.out), smoke=args.smoke, progress=args.progress)
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
        description="Reduced versions of ecdopt synthetic ackley|zakharov|basins (minutes).",
    )
    p.add_argument("--out", default="results", metavar="DIR", help="JSON and PNG output folder")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for tests")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_main)
    return p
