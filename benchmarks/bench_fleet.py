"""How long a fleet update takes: 4 devices with the default batches against 1 device, and what 50 would take.

The devices are the fleet tests' local ones (tests/fleet_fixtures.py): OpenSSH servers on loopback ports,
each with its own user when run as root, the runtime installed once from a wheelhouse before anything is
timed. Each timed run deploys a fresh model version (its own sha256), so every device really updates:
copy, sha256 check, smoke test (edge-classify --verify, --info, one image), switch, one restart of the
stand-in service, its check, prune. 1-device and 4-device runs alternate, `--repeats` times each.

From Ansible's output, timed line by line, each batch's wall time is measured (from its play header to
the next). The projection for 50 devices uses ansible.cfg's forks and the default batches
[1, "25%", "100%"] (1, 12 and 37 devices) in two ways:
- forks-bound: a batch of n devices takes ceil(n / forks) times the one-device batch, as on a controller
  with a core per fork (the devices' own work runs on the devices);
- CPU-bound, as measured here: every device beyond the first in a batch adds what the second device of
  the 4-device run's last batch added (on this machine the "devices" share the controller's cores).
Both add the fixed cost of a run (the playbook's start, the summary), measured as the 1-device run's wall
time less its batch's.

    python benchmarks/bench_fleet.py [--repeats 3] [--json bench-out/fleet.json]

Needs root for the per-device users (else every device is the current user), sshd, ansible-playbook in
this venv (the [fleet] extra) and pip's cache or the registry for the wheelhouse. Trains the tests' tiny
model first (TensorFlow, about half a minute).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

# The fleet harness lives with the tests and imports deploy/ from the repository root, as pytest runs it.
sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests"), str(Path(__file__).resolve().parent.parent)]

from fleet_fixtures import (ANSIBLE_CONFIG, ANSIBLE_PLAYBOOK, DEPLOY_PLAYBOOK, REPO_ROOT, FleetSession,  # noqa: E402
                            ansible_environment, build_wheelhouse, devices_by_host, fleet_folder, local_fleet,
                            pick_smoke_image, read_summary)
from harness import cpu_model  # noqa: E402

MODEL_NAME = "model_int8.tflite"
DEVICES = ["dev1", "dev2", "dev3", "dev4"]
SERVICE = "edge-classify-camera"
DEFAULT_BATCHES = (1, "25%", "100%")
PROJECTED_DEVICES = 50
RUN_TIMEOUT_S = 900
PLAY_HEADER = "PLAY ["


def batch_sizes(count: int, serial: tuple[int | str, ...]) -> list[int]:
    """Ansible's batches for `count` hosts: each serial entry a number or a percentage (rounded down, at
    least 1) of all hosts, the last one repeated until every host is in a batch."""
    sizes, left, index = [], count, 0
    while left > 0:
        entry = serial[min(index, len(serial) - 1)]
        size = int(count * int(entry[:-1]) / 100) if isinstance(entry, str) else int(entry)
        size = min(max(size, 1), left)
        sizes.append(size)
        left -= size
        index += 1
    return sizes


def configured_forks() -> int:
    import configparser

    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    parser.read(ANSIBLE_CONFIG)
    return parser.getint("defaults", "forks", fallback=5)


def timed_deploy(session: FleetSession, model_path: Path, inventory: Path, summary: Path) -> dict[str, Any]:
    """Run deploy.yml, timing each line of its output; the wall time, the rollout play's batch times and
    the devices' statuses."""
    variables = session.folder / f"bench-vars-{time.monotonic_ns()}.json"
    variables.write_text(json.dumps({"edge_model_src": str(model_path), "edge_fleet_summary": str(summary)}))
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(DEPLOY_PLAYBOOK), "-e", f"@{variables}"]
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                          env=ansible_environment(session.folder)) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
        status = process.wait(timeout=RUN_TIMEOUT_S)
    wall = time.monotonic() - started
    if status != 0:
        raise click.ClickException(f"ansible-playbook exited {status}:\n" + "\n".join(text for _, text in lines[-40:]))
    headers = [(at, text) for at, text in lines if text.startswith(PLAY_HEADER)]
    names = [text for _, text in headers]
    rollout = max(set(names), key=names.count)
    ends = [at for at, _ in headers[1:]] + [lines[-1][0]]
    batches = [end - at for (at, text), end in zip(headers, ends) if text == rollout]
    statuses = {host: entry["status"] for host, entry in devices_by_host(read_summary(summary)).items()}
    return {"wall_s": wall, "batch_s": batches, "statuses": statuses}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def projections(one: dict[str, float], four: dict[str, float], forks: int, count: int) -> dict[str, Any]:
    """The 50-device estimates described in the module docstring, from the medians of the runs."""
    sizes = batch_sizes(count, DEFAULT_BATCHES)
    fixed = one["wall_s"] - one["batch_s"]
    device = one["batch_s"]
    # The 4-device run's last batch holds 2 devices: what the second one added.
    extra_device = max(four["last_batch_s"] - device, 0.0)
    forks_bound = fixed + sum(math.ceil(size / forks) * device for size in sizes)
    cpu_bound = fixed + sum(device + (size - 1) * extra_device for size in sizes)
    return {"devices": count, "batches": sizes, "forks": forks, "fixed_s": fixed, "one_device_batch_s": device,
            "extra_device_in_batch_s": extra_device, "forks_bound_s": forks_bound, "cpu_bound_s": cpu_bound}


@click.command()
@click.option("--repeats", type=click.IntRange(1, 10), default=3, show_default=True,
              help="Timed runs of each size (1 device, 4 devices), alternating.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures here.")
def main(repeats: int, json_path: Path | None) -> None:
    """Time a fleet update of 1 and of 4 local devices and project 50."""
    from fleet_fixtures import FleetUnavailable
    from runtime_fixtures import SEED, build_runtime_models
    from synthetic import synthetic_arrays

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        scratch_path = Path(scratch)
        click.echo("training the test model and building the wheelhouse ...", err=True)
        (scratch_path / "models").mkdir()
        models = build_runtime_models(scratch_path / "models")
        images, classes = synthetic_arrays(16, seed=SEED + 2)
        smoke = pick_smoke_image(models.int8, images, classes, scratch_path)
        try:
            wheelhouse = build_wheelhouse(scratch_path / "wheels")
            with fleet_folder() as folder, local_fleet(folder, DEVICES, {name: [SERVICE] for name in DEVICES}) as fleet:
                session = FleetSession(fleet, wheelhouse, smoke, models.plain_int8.read_bytes(), MODEL_NAME,
                                       {"bench": DEVICES})
                click.echo("installing the runtime on the devices (not timed) ...", err=True)
                setup_started = time.monotonic()
                timed_deploy(session, session.new_model("setup").path, session.inventory(), session.summary_path())
                setup_s = time.monotonic() - setup_started
                runs: dict[str, list[dict[str, Any]]] = {"1": [], "4": []}
                for repeat in range(repeats):
                    for size in ("1", "4"):
                        inventory = session.inventory(groups={"bench": DEVICES[:int(size)]})
                        model = session.new_model(f"bench-{size}-{repeat}")
                        run = timed_deploy(session, model.path, inventory, session.summary_path())
                        if set(run["statuses"].values()) != {"updated"}:
                            raise click.ClickException(f"not every device updated: {run['statuses']}")
                        runs[size].append(run)
                        click.echo(f"  {size} device(s), run {repeat + 1}: {run['wall_s']:.1f} s, batches "
                                   + ", ".join(f"{value:.1f}" for value in run["batch_s"]) + " s", err=True)
        except FleetUnavailable as reason:
            raise click.ClickException(str(reason)) from reason

    one = {"wall_s": median([run["wall_s"] for run in runs["1"]]),
           "batch_s": median([run["batch_s"][0] for run in runs["1"]])}
    four = {"wall_s": median([run["wall_s"] for run in runs["4"]]),
            "last_batch_s": median([run["batch_s"][-1] for run in runs["4"]])}
    forks = configured_forks()
    projection = projections(one, four, forks, PROJECTED_DEVICES)
    summary = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": list(load_before),
                           "load_average_after": list(os.getloadavg())},
               "setup_with_runtime_install_s": setup_s, "runs": runs, "one": one, "four": four,
               "four_batches": batch_sizes(len(DEVICES), DEFAULT_BATCHES), "projection": projection}
    click.echo(f"machine: {summary['machine']['cpu']}, {os.cpu_count()} cores; load average before "
               f"{load_before[0]:.2f}, after {summary['machine']['load_average_after'][0]:.2f}")
    click.echo(f"first deploy with the runtime install (4 devices): {setup_s:.1f} s")
    click.echo(f"1 device:  median wall {one['wall_s']:.1f} s (its batch {one['batch_s']:.1f} s) over {repeats} runs")
    click.echo(f"4 devices: median wall {four['wall_s']:.1f} s in batches {summary['four_batches']}, "
               f"last batch (2 devices) {four['last_batch_s']:.1f} s")
    click.echo(f"ratio 4 devices / 1 device: {four['wall_s'] / one['wall_s']:.2f}; per device "
               f"{four['wall_s'] / len(DEVICES):.1f} s against {one['wall_s']:.1f} s alone")
    click.echo(f"ratio last batch (2 devices) / 1-device batch: {four['last_batch_s'] / one['batch_s']:.2f}")
    click.echo(f"projection for {PROJECTED_DEVICES} devices, batches {projection['batches']}, forks {forks}: "
               f"forks-bound {projection['forks_bound_s']:.0f} s, CPU-bound as here {projection['cpu_bound_s']:.0f} s "
               f"(fixed {projection['fixed_s']:.1f} s per run)")
    if json_path is not None:
        from edge_runtime.atomic import write_text

        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_text(json_path, json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
