"""Flags and start-up shared by ``megbed node es`` and ``megbed node ue``: engine, meter, CURVE, signals.

Start-up order on a node: load the model (seconds to minutes), build and start the meter, measure the idle baseline,
then bind and serve -- so the orchestrator's ``hello`` succeeds only once the node is ready, and an idle baseline is
never measured while the model loads.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from megbed.testbed.cli.main import CliError

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005


def add_common_flags(p: argparse.ArgumentParser, role: str) -> None:
    p.add_argument("--name", default=role, help=f"node name in logs and records (default {role})")
    p.add_argument("--engine", choices=("ldm", "synthetic"), default="ldm",
                   help="ldm: the model (default); synthetic: no model, for harness-overhead runs and protocol tests")
    p.add_argument("--model", type=Path, default=None,
                   help="diffusers model folder (default: the embedded default model)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--dtype", choices=("float16", "float32"), default=None,
                   help="model precision (default float16 on CUDA, float32 on CPU)")
    p.add_argument("--synthetic-step-s", type=float, default=0.0,
                   help="synthetic engine: seconds slept per denoising step (emulated compute)")
    p.add_argument("--profile", default=None,
                   help="firmware profile of this board (firmware_profiles); names its probes and rail map")
    p.add_argument("--probe", choices=("auto", "none"), default="auto",
                   help="auto: the profile's probes (or auto-detected); none: no energy measurement")
    p.add_argument("--sample-hz", type=float, default=200.0, help="power sampling rate (Hz, default 200)")
    p.add_argument("--idle-s", type=float, default=2.0, help="idle baseline window at start-up (s; 0 = skip)")
    p.add_argument("--keys", type=Path, default=None,
                   help="CURVE keys folder (from `megbed keys generate`): require authenticated peers")
    p.add_argument("--allow-any-client", action="store_true",
                   help="with --keys: encrypt but admit any CURVE client (no KEYS/authorized list); without this a "
                        "keys folder lacking authorized/ is refused at start")
    p.add_argument("--plans", default=None, metavar="PLAN,...",
                   help="plans this node serves (meg, hybrid, ceg, ue_local; the ES also 'reference'): the model "
                        "folder must hold their components, checked at start-up (default: checked per request)")
    p.add_argument("--max-message-mb", type=float, default=256.0, help="largest accepted message (MiB)")
    p.add_argument("--max-buffers", type=int, default=64, help="most arrays in one accepted frame (default 64)")
    p.add_argument("--max-side-px", type=int, default=None,
                   help="largest image side this node computes (default: 2x the model's native resolution)")
    p.add_argument("--max-steps", type=int, default=200, help="most denoising steps this node computes (default 200)")


def parse_plans(text: str | None, role: str) -> list[str] | None:
    """``--plans meg,hybrid`` -> ``["meg", "hybrid"]`` (None when not given); unknown names are a CliError."""
    if not text:
        return None
    from megbed.testbed.ldm.components import ROLE_PLANS

    plans = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in plans if p not in ROLE_PLANS[role]]
    if bad or not plans:
        raise CliError(f"--plans {text!r}: the {role.upper()} serves {', '.join(ROLE_PLANS[role])}")
    return plans


def build_engine(args: argparse.Namespace, *, decoder: str | None = None, role: str | None = None) -> Any:
    """The node's engine; the LDM loads role-aware (only what ``role``'s plans need, each part when first used)."""
    if args.engine == "synthetic":
        from megbed.testbed.nodes.synthetic_engine import SyntheticEngine

        return SyntheticEngine(compute_s_per_step=args.synthetic_step_s)
    import torch

    from megbed.testbed.assets import default_model_dir
    from megbed.testbed.nodes.ldm_engine import LdmEngine

    model = args.model or default_model_dir()
    if not (Path(model) / "model_index.json").is_file():
        raise CliError(f"{model} is not a diffusers model folder (no model_index.json); pass --model DIR")
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    plans = parse_plans(getattr(args, "plans", None), role) if role else None
    try:
        return LdmEngine(model, device=args.device, dtype=dtype, decoder=decoder, role=role, plans=plans)
    except Exception as exc:  # noqa: BLE001 - any load failure is a user-facing start-up error
        raise CliError(f"cannot load the model in {model}: {exc}") from exc


def load_profile_arg(args: argparse.Namespace) -> Any:
    """The ``--profile`` (validated before the model loads, so a typo fails in a second, not after minutes)."""
    if not args.profile:
        return None
    from megbed.firmware_profiles import load_profile

    try:
        return load_profile(args.profile)
    except Exception as exc:  # noqa: BLE001 - a broken profile stops the node before anything runs
        raise CliError(f"firmware profile {args.profile!r}: {exc}") from exc


def build_meter(args: argparse.Namespace, profile: Any = None) -> tuple[Any, dict[str, Any]]:
    """The node's started meter (or None) and what the manifest should say about it and the firmware profile.

    Call after the model has loaded: the idle baseline must be measured on a quiet node.
    """
    info: dict[str, Any] = {"host": socket.gethostname()}
    if profile is not None:
        info["firmware_profile"] = {"name": profile.name, "verify": _verify_profile(profile)}
    if args.probe == "none":
        info["meter"] = None
        info["meter_absent_reason"] = "started with --probe none"
        return None, info
    try:
        from megbed.measurements.meter import Meter

        meter = Meter.from_profile(profile, rate_hz=args.sample_hz)
        meter.start()
    except Exception as exc:  # noqa: BLE001 - no usable probe: run, but say so in every record
        log.warning("no power probe: %s (energy is recorded as absent)", exc)
        info["meter"] = None
        info["meter_absent_reason"] = f"{type(exc).__name__}: {exc}"
        return None, info
    if args.idle_s > 0:
        meter.measure_idle(args.idle_s)
    return meter, info


def _verify_profile(profile: Any) -> Any:
    try:
        from megbed.firmware_profiles.live import verify_live

        return verify_live(profile)
    except Exception as exc:  # noqa: BLE001 - verification trouble is recorded, never fatal to the node
        return {"error": f"{type(exc).__name__}: {exc}"}


def server_curve(args: argparse.Namespace, name: str) -> Any:
    if args.keys is None:
        return None
    from megbed.testbed.nodes.keys import KeysError, server_curve

    try:
        return server_curve(args.keys, name, allow_any_client=bool(getattr(args, "allow_any_client", False)))
    except KeysError as exc:
        raise CliError(str(exc)) from exc


def client_curve(args: argparse.Namespace, name: str, server: str, server_key: Path | None = None) -> Any:
    if args.keys is None:
        return None
    from megbed.megwire import CurveConfig
    from megbed.testbed.nodes.keys import KeysError, client_curve

    try:
        curve = client_curve(args.keys, name, server)
    except KeysError as exc:
        raise CliError(str(exc)) from exc
    if server_key is not None:
        curve = CurveConfig(curve.secret_key_file, server_public_key_file=server_key)
    return curve


def limits(args: argparse.Namespace) -> Any:
    from megbed.megwire import FrameLimits

    if args.max_buffers < 1:
        raise CliError(f"--max-buffers {args.max_buffers}: must be >= 1")
    return FrameLimits(max_total_bytes=int(args.max_message_mb * (1 << 20)), max_buffers=int(args.max_buffers))


def bounds(args: argparse.Namespace, engine: Any) -> Any:
    """The node's request bounds: the engine's safe defaults, narrowed or widened by --max-side-px / --max-steps."""
    from megbed.testbed.nodes.protocol import RequestBounds

    if args.max_steps < 1 or (args.max_side_px is not None and args.max_side_px < 8):
        raise CliError("--max-steps must be >= 1 and --max-side-px >= 8")
    default = engine.default_bounds(max_steps=args.max_steps)
    if args.max_side_px is None:
        return default
    return RequestBounds(max_side_px=args.max_side_px, max_pixels=args.max_side_px ** 2, max_steps=args.max_steps)


def serve(node: Any, meter: Any) -> int:
    """Serve until SIGTERM / SIGINT; then stop cleanly (sockets closed, meter stopped)."""
    def stop(signum: int, _frame: Any) -> None:
        log.info("%s: signal %d, stopping", node.server.name, signum)
        node.server.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The loop thread answers heartbeats and clock sync while the worker computes; a short GIL switch interval
    # (default 5 ms) keeps those answers and the job hand-offs from waiting on the worker's Python code.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    print(f"{node.server.name} ({node.role}) serving on {node.address}", flush=True)
    try:
        node.serve_forever()
    finally:
        if meter is not None:
            meter.close()
    return 0


def check_bind(address: str, flag: str = "--bind") -> None:
    """Bind ``address`` once and let it go, before the model loads: a port in use or an address this host does not
    have fails here in a second, with one line, instead of after minutes of loading (the node binds again to serve).

    Raises
    ------
    CliError
        The address cannot be bound; the message names the flag, the address and the reason.
    """
    import zmq

    from megbed.testbed.nodes.server import normalise_bind

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(normalise_bind(address))
    except zmq.ZMQError as exc:
        reason = "the port is in use" if exc.errno == zmq.EADDRINUSE else exc.strerror
        raise CliError(f"{flag} {address}: cannot bind: {reason}") from None
    finally:
        sock.close(0)
        ctx.term()  # returns once the listener is closed, so the node's own bind finds the port free
