"""megwire: the frame format and ZeroMQ plumbing shared by every megbed process.

The lowest layer of the project: it imports nothing from the other packages, so the channel broker and the
measurement layer (clock sync) speak the same frames as the testbed nodes without importing them.
"""
