"""The LLM-training options shared by cross_entropy and linear_cross_entropy (z-loss, logit
softcapping, returning the log-sum-exp): checked once here, then carried as one value."""

import math
from typing import NamedTuple, Optional


class LlmOptions(NamedTuple):
    lse_square_scale: float
    softcap: Optional[float]
    return_lse: bool

    @property
    def softcap_code(self) -> float:
        """The ops' encoding of softcap: 0 means none."""
        return self.softcap or 0.0

    @property
    def any(self) -> bool:
        return self.lse_square_scale != 0.0 or self.softcap is not None or self.return_lse


NO_LLM_OPTIONS = LlmOptions(0.0, None, False)


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def llm_options(lse_square_scale=0.0, softcap=None, return_lse=False) -> LlmOptions:
    """Validated options; TypeError/ValueError name the argument at fault."""
    if isinstance(lse_square_scale, (int, float)) and lse_square_scale == 0 and softcap is None \
            and return_lse is False and not isinstance(lse_square_scale, bool):
        return NO_LLM_OPTIONS  # the defaults: nothing to check (and nothing for torch.compile to trace)
    scale = _number("lse_square_scale", lse_square_scale)
    if softcap is not None:
        softcap = _number("softcap", softcap)
        if softcap <= 0.0:
            raise ValueError(f"softcap must be positive (logits become softcap * tanh(x / softcap)), got {softcap}; "
                             "pass softcap=None for no capping")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, not {type(return_lse).__name__}")
    return LlmOptions(scale, softcap, return_lse)
