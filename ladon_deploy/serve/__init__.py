"""`ladon-serve`: the server half of the split inside Triton Inference Server, through nvidia-pytriton.

server.py holds the Triton model `ladon` (payload bytes in, the JSON document of `ladon-run server --json` out,
requests batched through the body and heads), gate.py the bounded HTTP front that refuses oversized requests
before reading them, cli.py the command. repository.py writes the server half as a Triton model repository
(`ladon-build --target triton`; its Python-backend steps are in triton_python/), repository_server.py serves one on
the bundled tritonserver (`ladon-serve --model-repository`). Server side only: not in the edge subset.
"""
