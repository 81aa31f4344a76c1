"""csm-offload: Sesame CSM speech generation offloaded to cloud GPUs through provider plugins."""

from .audio import CSM_SAMPLE_RATE, Audio
from .errors import (
    AudioError,
    BudgetExceeded,
    ConfigError,
    CsmOffloadError,
    JobLost,
    NoUsableTarget,
    ProviderError,
    RateLimited,
    Rejected,
    ResultUnusable,
    TransientError,
    Unavailable,
    UserError,
    WireError,
)
from .hookspecs import hookimpl
from .model import (
    AudioData,
    AudioUrl,
    BatchRequest,
    BatchResponse,
    CostEstimate,
    Health,
    JobHandle,
    JobState,
    JobStatus,
    Result,
    Segment,
    SpeechRequest,
    WorkerInfo,
)
from .secret import Secret
from .target import PriceTable, ProviderInfo, ProviderLimits, RateLimit, Target

__version__ = "0.1.0"

__all__ = [
    "CSM_SAMPLE_RATE",
    "Audio",
    "AudioData",
    "AudioError",
    "AudioUrl",
    "BatchRequest",
    "BatchResponse",
    "BudgetExceeded",
    "ConfigError",
    "CostEstimate",
    "CsmOffloadError",
    "Health",
    "JobHandle",
    "JobLost",
    "JobState",
    "JobStatus",
    "NoUsableTarget",
    "PriceTable",
    "ProviderError",
    "ProviderInfo",
    "ProviderLimits",
    "RateLimit",
    "RateLimited",
    "Rejected",
    "Result",
    "ResultUnusable",
    "Secret",
    "Segment",
    "SpeechRequest",
    "Target",
    "TransientError",
    "Unavailable",
    "UserError",
    "WireError",
    "WorkerInfo",
    "__version__",
    "hookimpl",
]
