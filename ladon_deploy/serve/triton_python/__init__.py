"""The model.py files of the Python-backend steps of the Triton repository (see ladon_deploy/serve/repository.py).

Each file here is copied into the repository as <model>/1/model.py and runs inside Triton's Python-backend stub,
where `triton_python_backend_utils` exists. They import ladon_deploy from the installed package, not from a copy in
the repository: the entropy coder has a compiled part built for the interpreter it was installed with. So the Python
that runs the stub (the one on Triton's PATH) needs `pip install ladon-deploy` (plus onnxruntime for the python
variant's body and heads); each step says so in one line when it cannot.
"""
