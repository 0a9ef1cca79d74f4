"""dslc_runtime: run ONNX models exported by the dslc compiler (onnxruntime + numpy only).

>>> from dslc_runtime import Model
>>> model = Model.load("build/")              # directory with manifest.json, or a .onnx file
>>> print(model.signature)
>>> outputs = model(image=batch)              # dict of numpy arrays
>>> from dslc_runtime import Generator
>>> ids = Generator.load("build/tg").generate([1, 5, 7], max_new_tokens=32)  # KV-cache decoding
"""

from .errors import DslcRuntimeError, InputError, ModelError, OutputError, ProviderError, RunError
from .generation import Generator, generate
from .model import Model
from .signature import Signature, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "DslcRuntimeError",
    "Generator",
    "InputError",
    "Model",
    "ModelError",
    "OutputError",
    "ProviderError",
    "RunError",
    "Signature",
    "TensorSpec",
    "__version__",
    "generate",
]
