"""The delivery record: what the link did to one frame (rate, distortion, errors, airtime, processing time)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

# Record field -> dataset column (measurements/schema.py spells the same names; channel_emu must not import it).
COLUMN_MAP = {
    "model": "link_model",
    "mode": "tx_mode",
    "distance_m": "distance_m",
    "snr_db": "ch_snr_db",
    "gain_db": "ch_gain_db",
    "mcs": "ch_mcs",
    "code_rate": "ch_code_rate",
    "payload_bits": "ch_payload_bits",
    "coded_bits": "ch_coded_bits",
    "symbols": "ch_symbols",
    "airtime_s": "ch_airtime_s",
    "retransmissions": "ch_retransmissions",
    "ber": "ch_ber",
    "bler": "ch_bler",
    "nmse": "ch_nmse",
    "bandwidth_hz": "ch_bandwidth_hz",
    "bandwidth_scale": "ch_bandwidth_scale",
}
COLUMNS = tuple(COLUMN_MAP.values())


@dataclass
class DeliveryRecord:
    """One delivery through the emulated link.

    Attributes
    ----------
    mode, model : str
        Transmission mode (``analog`` | ``coded`` | ``abstraction`` | ``shannon``) and small-scale model.
    distance_m : float
        ES-UE distance (m); NaN for a fixed-SNR link.
    snr_db : float
        Average SNR of the delivery (dB, Es/N0 per complex symbol, includes block fading).
    gain_db : float
        Channel gain-to-noise (dB); SNR = P_tx + gain.
    mcs : int
        MCS index of the data (PDSCH table 1); -1 for analog.
    code_rate : float
        LDPC code rate of the data; NaN for analog.
    payload_bits : int
        Bits of the frame's buffers delivered (values + side), the header excluded.
    coded_bits : int
        Coded bits sent incl. retransmissions and side information (analog: the side information's only).
    symbols : int
        Complex channel symbols sent incl. retransmissions, side information and pilots.
    airtime_s : float
        Emulated airtime (s): symbols / symbol rate (OFDM: slots x slot duration incl. cyclic prefix).
    retransmissions : int
        HARQ retransmission rounds (data and side information).
    ber : float
        Bit error rate of the delivered digital data bits (after decoding and any retransmissions).
    bler : float
        Code-block error rate over all decoding attempts of the data (0 for analog-only frames).
    nmse : float
        NMSE of the delivered analog values (sum of squared errors / sum of squares); NaN when none were analog.
    processing_s : float
        Time the emulator spent on the frame (s, monotonic).
    bandwidth_hz : float
        Bandwidth the airtime was charged at (Hz): the configured one times ``bandwidth_scale``.
    bandwidth_scale : float
        Model latent elements / reference latent elements with ``scale_to_latent``, else 1.
    """

    mode: str
    model: str
    distance_m: float = math.nan
    snr_db: float = math.nan
    gain_db: float = math.nan
    mcs: int = -1
    code_rate: float = math.nan
    payload_bits: int = 0
    coded_bits: int = 0
    symbols: int = 0
    airtime_s: float = 0.0
    retransmissions: int = 0
    ber: float = math.nan
    bler: float = math.nan
    nmse: float = math.nan
    processing_s: float = 0.0
    bandwidth_hz: float = math.nan
    bandwidth_scale: float = 1.0
    modulation_order: int = 0
    analog_values: int = 0
    data_bits: int = 0
    side_bits: int = 0
    header_bits: int = 0
    code_blocks: int = 0
    block_errors: int = 0
    residual_block_errors: int = 0
    side_ok: bool = True
    state_index: int = -1
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-friendly dict (NaN stays NaN; megwire headers allow it)."""
        # Every field is a scalar but ``extra``: this is what dataclasses.asdict gives, at a tenth of its cost
        # (it runs once per delivery).
        d = self.__dict__.copy()  # the fields in their order (~4x faster than getattr per field)
        if len(d) != len(_FIELD_NAMES) + 1:  # an attribute set beside the fields: the fields only
            d = {name: getattr(self, name) for name in _FIELD_NAMES}
        d["extra"] = {k: copy.deepcopy(v) if isinstance(v, (dict, list)) else v for k, v in self.extra.items()}
        return d

    def to_columns(self) -> dict[str, Any]:
        """The dataset columns of this delivery (exactly ``COLUMNS``)."""
        return {col: getattr(self, name) for name, col in COLUMN_MAP.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


_FIELD_NAMES = tuple(f.name for f in fields(DeliveryRecord) if f.name != "extra")
