"""`femto devices`: the CPU kernel path and the OpenCL devices, for --device."""

from __future__ import annotations

import click

from femto.cli import main, user_errors


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


@main.command(short_help="List OpenCL devices, for --device opencl:P:D.")
@click.option("--json", "as_json", is_flag=True, help="Print the device list as JSON.")
@user_errors
def devices(as_json: bool) -> None:
    """Show the CPU kernel path, and list OpenCL platforms and devices, for --device opencl:P:D.

    The device marked * is what plain --device opencl picks: the first GPU, else the first device.
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
    gpus = [r for r in rows if "GPU" in r["type"]]
    default = (gpus or rows)[0] if rows else None
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

