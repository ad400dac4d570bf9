"""`ladon-run`: the command that runs either half of the split, or both with a simulated link.

The device half lives in ladon_deploy.device, the server half in ladon_deploy.server; this package only composes
them. Its CLI is on the device's import path (`ladon-run mobile`), so it stays Python 3.6-clean and imports the
server half only for the commands that need it.
"""
