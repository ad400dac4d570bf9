"""The link between the device and the server as radios have it: profiles (bit rate, frame size, time on air),
regional rules (duty cycle, dwell time), the frame transport with erasure coding, and the operating point.

Edge subset: Python 3.6-clean, standard library and numpy; the device imports it.
"""
