"""Code that runs inside the guest (as root, in the init netns).

The host reaches it through bpfpm.agent: one long-lived `python -m
bpfpm.guest.agent` per VM, speaking JSON lines over an SSH channel.
"""
