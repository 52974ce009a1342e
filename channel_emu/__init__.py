"""channel_emu."""
