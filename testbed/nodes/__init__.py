"""The testbed's processes: the edge server (ES), the user equipment (UE) and the orchestrator that drives them.

``protocol`` names the frames, ``server`` is the ROUTER loop every node runs, ``rpc`` the client side. The channel
broker between ES and UE lives in ``channel_emu``; neither node knows whether it is there.
"""
