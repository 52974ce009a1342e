"""channel_emu: the emulated ES -> UE wireless link (Sionna 2.x physical layer) and the ZeroMQ channel broker.

Public API (imported lazily so that ``import megbed.channel_emu.process`` stays light)::

    LinkConfig, LinkConfigError                 megbed.channel_emu.config
    ChannelProcess, ReplayProcess, ChannelState megbed.channel_emu.process
    ChannelEmulator                             megbed.channel_emu.emulator   deliver(frame, state=None, *, link=None)
    DeliveryRecord                              megbed.channel_emu.record     to_dict(), to_columns()
    Broker, BrokerAddresses                     megbed.channel_emu.broker     megbed node channel

Modes and what they charge (never mixed): ``analog`` -> airtime of analog symbols, distortion from analog noise;
``coded`` -> airtime of real 5G LDPC coded symbols, distortion from real bit errors; ``abstraction`` -> the coded
accounting with block errors drawn from Sionna's BLER tables. See :mod:`megbed.channel_emu.emulator`.

Speed (``LinkConfig.impl``): ``fast`` (default) runs hand-written equivalents of Sionna's blocks where Sionna's
tensor formulation costs far more than the work -- :mod:`~megbed.channel_emu.noise` (seeded normals),
:mod:`~megbed.channel_emu.analog` (real-valued analog path), :mod:`~megbed.channel_emu.crc_fast`, :mod:`~megbed.channel_emu.ldpc_nr`
(5G LDPC encoding, rate matching, QC layered decoding), :mod:`~megbed.channel_emu.qam_fast`, the numpy BLER table in
:mod:`~megbed.channel_emu.mcs` -- each tested against Sionna's; ``sionna`` runs Sionna's blocks for comparison
(``benchmarks/channel_rtf.py`` shows both). ``ChannelEmulator.warm_up()`` (the broker calls it before serving)
pays the start-up costs: Sionna's import, the BLER table (cached on disk), numba's kernels (cached on disk).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LinkConfig": "megbed.channel_emu.config", "LinkConfigError": "megbed.channel_emu.config",
    "ChannelProcess": "megbed.channel_emu.process", "ReplayProcess": "megbed.channel_emu.process",
    "ChannelState": "megbed.channel_emu.process", "ChannelEmulator": "megbed.channel_emu.emulator",
    "DeliveryRecord": "megbed.channel_emu.record", "Broker": "megbed.channel_emu.broker", "BrokerAddresses": "megbed.channel_emu.broker",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
