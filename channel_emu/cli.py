"""``megbed channel simulate|bench`` and the ``megbed node channel`` broker node."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any


def _error(message: str) -> Exception:
    # The CLI's user-error type lives in testbed (which channel_emu must not import): raise SystemExit-like errors.
    return SystemExit(f"megbed: error: {message}")


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _simulate(args: argparse.Namespace) -> int:
    from megbed.channel_emu.simulate import simulate

    try:
        out = simulate(args.mode, args.modulation, args.ebno_db, args.bits, model=args.model, seed=args.seed,
                       mcs=args.mcs)
    except ValueError as exc:
        raise _error(str(exc)) from exc
    if args.json:
        print(json.dumps(_clean(out)))
    else:
        for k, v in out.items():
            print(f"{k:12s} {v}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from megbed.channel_emu.bench import run

    result = run(quick=args.quick)
    if args.json:
        print(json.dumps(_clean(result), indent=1, default=float))
    else:
        for row in result["rows"]:
            print(row)
    return 0


def register(subparsers) -> None:
    """Add ``megbed channel`` (simulate, bench)."""
    parser = subparsers.add_parser("channel", help="physical-layer checks and benchmarks of the channel emulator")
    sub = parser.add_subparsers(dest="channel_command", metavar="CMD")
    sim = sub.add_parser("simulate", help="BER / BLER / NMSE at an Eb/N0 (quick physical-layer check)")
    sim.add_argument("--mode", choices=("uncoded", "analog", "coded"), default="uncoded")
    sim.add_argument("--modulation", choices=("bpsk", "qpsk", "qam16", "qam64"), default="qpsk")
    sim.add_argument("--ebno-db", type=float, default=5.0, help="Eb/N0 per information bit (dB)")
    sim.add_argument("--bits", type=int, default=100_000, help="information bits to send")
    sim.add_argument("--model", choices=("awgn", "rayleigh_symbol"), default="awgn")
    sim.add_argument("--mcs", type=int, default=None, help="coded: MCS index (default: rate ~1/2 of the modulation)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.set_defaults(func=_simulate)
    bench = sub.add_parser("bench", help="RTF per mode/model/payload and the LDPC decoders side by side")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=_bench)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _node(args: argparse.Namespace) -> int:
    import logging

    from megbed.channel_emu.broker import Broker, BrokerAddresses, BrokerDied
    from megbed.channel_emu.config import LinkConfig, LinkConfigError
    from megbed.megwire import CurveConfig, FrameLimits

    try:
        config = LinkConfig.load(args.config) if args.config else LinkConfig()
    except LinkConfigError as exc:
        raise _error(str(exc)) from exc
    server = client = None
    if args.curve_secret:
        # A secret key means "authenticate": the frontend and the PUB admit only --curve-clients, unless the
        # operator says --allow-any-client (encryption without authentication) in so many words.
        if args.curve_clients:
            server = CurveConfig(secret_key_file=args.curve_secret, authorized_clients_dir=args.curve_clients)
        elif args.allow_any_client:
            server = CurveConfig(secret_key_file=args.curve_secret, allow_any_client=True)
        else:
            raise _error("--curve-secret without --curve-clients would leave the frontend and the record feed open "
                         "to any peer; pass --curve-clients DIR (the authorised UE / subscriber keys) or "
                         "--allow-any-client to accept any CURVE client explicitly")
        if args.curve_es_public:
            client = CurveConfig(secret_key_file=args.curve_secret, server_public_key_file=args.curve_es_public)
    elif args.curve_clients or args.allow_any_client:
        raise _error("--curve-clients / --allow-any-client need --curve-secret (this broker's secret key)")
    broker = Broker(config, seed=args.seed, addresses=BrokerAddresses(args.listen, args.es, args.pub),
                    limits=FrameLimits(max_total_bytes=int(args.max_mb * (1 << 20))), curve_server=server,
                    curve_client=client, warm_up_payload_bits=tuple(args.warm_payload_bits),
                    warm_up=not args.no_warm_up)
    logging.getLogger(__name__).warning("channel broker: UEs -> %s, ES at %s, records on %s (%s over %s); warming "
                                        "up (Sionna, BLER table, numba kernels) before serving", args.listen, args.es,
                                        args.pub, config.mode, config.model)
    try:
        broker.serve_forever()
    except BrokerDied as exc:
        # Exit non-zero: a supervisor (the campaign runner, systemd) sees a dead broker and restarts it.
        logging.getLogger(__name__).critical("%s; exiting", exc)
        return 3
    return 0


def add_node_parser(node_subparsers) -> None:
    """Add ``megbed node channel``."""
    p = node_subparsers.add_parser("channel", help="the channel broker between the UEs and the ES")
    p.add_argument("--listen", default="tcp://127.0.0.1:5560", help="where the UEs connect (ROUTER bind)")
    p.add_argument("--es", default="tcp://127.0.0.1:5555", help="the ES's ROUTER (DEALER connect)")
    p.add_argument("--pub", default="tcp://127.0.0.1:5561", help="where delivery records are published (PUB bind)")
    p.add_argument("--config", default=None, help="link configuration (YAML / TOML / JSON)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-mb", type=float, default=512.0, help="largest accepted frame payload (MiB)")
    p.add_argument("--curve-secret", default=None, help="this broker's CURVE secret key file")
    p.add_argument("--curve-clients", default=None, help="folder of authorised UE public keys (frontend)")
    p.add_argument("--curve-es-public", default=None, help="the ES's public key file (backend)")
    p.add_argument("--no-warm-up", action="store_true",
                   help="serve at once; the first delivery of each mode pays the one-off costs (tests, protocol runs)")
    p.add_argument("--allow-any-client", action="store_true",
                   help="with --curve-secret and no --curve-clients: encrypt but admit any CURVE client "
                        "(otherwise refused at start)")
    p.add_argument("--warm-payload-bits", type=int, nargs="*", default=[], metavar="BITS",
                   help="payload sizes whose LDPC codes are built at start for every MCS the link may use (coded "
                        "mode; e.g. 262144 for an SD-1.5 fp16 latent); the BLER table and numba kernels always are")
    p.set_defaults(func=_node)
