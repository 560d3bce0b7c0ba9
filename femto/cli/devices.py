"""`femto devices`: the CPU kernel path and the OpenCL devices, for --device."""

from __future__ import annotations

import click

from femto.cli import main, user_errors


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


@main.command(short_help="List OpenCL devices, for --device opencl:P:D.")
@click.option("--json", "as_json", is_flag=True, help="Print the device list as JSON.")
@click.option(
    "--tune",
    is_flag=True,
    help="Time the matmul tile shapes on the default device (or --device) now and cache the choice.",
)
@click.option("--device", "tune_device", default=None, help="opencl:P:D to tune (with --tune).")
@click.option("--force", is_flag=True, help="With --tune: tune again even if a choice is cached.")
@user_errors
def devices(as_json: bool, tune: bool, tune_device: str | None, force: bool) -> None:
    """Show the CPU kernel path, and list OpenCL platforms and devices, for --device opencl:P:D.

    The device marked * is what plain --device opencl picks: the first GPU, else the first CPU
    driver; a simulator (SIM, e.g. Oclgrind) only when there is nothing else.
    --json lists the OpenCL devices only.
    """
    import json

    from femto.backend import cpu, opencl  # lazily: pyopencl loads only for this command

    error = cpu.cpu_path_error()
    if error is not None:
        raise click.ClickException(error)
    if not as_json:
        click.echo(f"  cpu: {cpu.cpu_summary()}")

    rows = opencl.list_devices()
    default = opencl.default_device(rows)
    if as_json:
        click.echo(json.dumps([{**r, "default": r is default} for r in rows], indent=2))
        return
    if not rows:
        raise click.ClickException(
            f"OpenCL platforms exist but none has a device: {opencl.INSTALL_HINT}"
        )
    header = f"  {'device':<12} {'type':<5} {'memory':>9} {'units':>5}  name (platform, version)"
    click.echo(header)
    for r in rows:
        mark = "*" if r is default else " "
        spec = f"opencl:{r['platform']}:{r['device']}"
        click.echo(
            f"{mark} {spec:<12} {r['type']:<5} {_gib(r['memory_bytes']):>9} {r['compute_units']:>5}  "
            f"{r['name']} ({r['platform_name']}, {r['version']})"
        )
    if tune:
        _tune(opencl, tune_device, force)


def _tune(opencl, spec: str | None, force: bool) -> None:
    """Run the OpenCL matmul tuner now and print its table (femto/backend/opencl.py's tune_matmul)."""
    if spec is not None and spec != "opencl" and not spec.startswith("opencl:"):
        raise click.BadParameter(f"{spec!r}: --tune needs an OpenCL device, opencl or opencl:P:D")
    device = spec.split(":", 1)[1] if spec and ":" in spec else None
    backend = opencl.OpenCLBackend(device=device, tune=False)
    click.echo(f"\nmatmul tile shapes for {backend.device_name} (cache: {opencl.cache_dir()}):")
    click.echo(f"  {'class':<6} {'shape M x N x K':<18} {'TILE x TK x WPT':<16} {'ms':>8} {'GFLOP/s':>8}")
    for klass, r in opencl.tune_matmul(backend, force=force).items():
        M, N, K = r.get("shape", [0, 0, 0])
        tile = "x".join(map(str, r["params"]))
        if r.get("ms"):
            timing = f"{r['ms']:>8.3f} {2 * M * N * K / r['ms'] / 1e6:>8.0f}"
        else:
            timing = f"{'-':>8} {'-':>8}"
        note = " (cached; --force to re-tune)" if r.get("cached") else ""
        click.echo(f"  {klass:<6} {f'{M} x {N} x {K}':<18} {tile:<16} {timing}{note}")
        for name, why in sorted((r.get("rejected") or {}).items()):
            click.echo(f"         rejected {name}: {why}")
