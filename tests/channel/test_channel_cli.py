from __future__ import annotations

import argparse
import json

from megbed.channel_emu import cli


def _parser():
    p = argparse.ArgumentParser(prog="megbed")
    sub = p.add_subparsers(dest="command")
    cli.register(sub)
    node = sub.add_parser("node").add_subparsers(dest="node_kind")
    cli.add_node_parser(node)
    return p


def test_simulate_json(capsys):
    args = _parser().parse_args(["channel", "simulate", "--mode", "uncoded", "--modulation", "qam16",
                                 "--ebno-db", "8", "--bits", "20000", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "uncoded" and 0 < out["ber"] < 0.05 and out["nmse"] is None


def test_node_channel_flags():
    args = _parser().parse_args(["node", "channel", "--listen", "tcp://127.0.0.1:6000", "--es",
                                 "tcp://127.0.0.1:6001", "--pub", "tcp://127.0.0.1:6002", "--seed", "3"])
    assert (args.listen, args.es, args.pub, args.seed, args.config) == (
        "tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001", "tcp://127.0.0.1:6002", 3, None)
