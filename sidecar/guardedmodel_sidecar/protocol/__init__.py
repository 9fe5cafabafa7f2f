"""The KServe Open Inference Protocol (v2): a protocol-neutral request/response model and its codecs."""

from guardedmodel_sidecar.protocol.model import (
    InferRequest,
    InferResponse,
    OutputTensor,
    RequestedOutput,
    Tensor,
)

__all__ = ["InferRequest", "InferResponse", "OutputTensor", "RequestedOutput", "Tensor"]
