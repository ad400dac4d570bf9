"""The device half of the split (what a Jetson runs): preprocessing, the device stage, the wire format, the entropy
coder, the link and the client.

Edge subset: Python 3.6-clean, never imports torch.
"""
