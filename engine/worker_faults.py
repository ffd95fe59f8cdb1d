"""Faults that make the served model answer wrong, inside vLLM's worker: for tests, demos and the lab only.

vLLM mixes this class into its worker class when started with `--worker-extension-cls` (its documented way to
add calls for `collective_rpc`); the engine does so whenever its admin listener is on (admin.py), and the admin
listener calls `slo_set_model_faults` on every worker through the engine client's `collective_rpc`. Method names
carry an `slo_` prefix: vLLM refuses an extension whose names the worker already has.

Two faults, each undone exactly:
- a parameter scaled by a factor (corrupted weights). The original tensor is kept and copied back, since
  dividing again would not give the same bits. vLLM's CPU build copies linear layers' weights into its own
  packed layout at load, so scaling a linear weight changes nothing there; a norm's weight, the embeddings
  or a GPU's linear weights are read as they are.
- NaN logits: the model's `compute_logits` answers NaN, as a broken kernel or a bad GPU would. vLLM counts the
  requests it hit (`vllm:corrupted_requests`) when VLLM_COMPUTE_NANS_IN_LOGITS is set, which the engine does.
"""

from __future__ import annotations

import math
from typing import Any

WORKER_FAULTS = "slo_sidecar.engine.worker_faults.ModelFaults"  # what vLLM's --worker-extension-cls names


class ModelFaults:
    """Worker extension (vLLM's `--worker-extension-cls`): `self` is vLLM's worker."""

    def slo_set_model_faults(self, parameter: str | None, factor: float, nan_logits: bool) -> dict[str, Any]:
        """The whole fault state at once: what is not asked for is undone first. Returns the state."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        saved: dict[str, Any] = getattr(self, "_slo_saved_parameters", {})
        parameters = dict(model.named_parameters())
        if parameter is not None and parameter not in parameters:
            raise ValueError(f"the model has no parameter {parameter!r}")
        for name, tensor in saved.items():
            parameters[name].data.copy_(tensor)
        saved.clear()
        if parameter is not None:
            saved[parameter] = parameters[parameter].data.clone()
            parameters[parameter].data.mul_(factor)
        self._slo_saved_parameters = saved  # type: ignore[attr-defined]
        if "compute_logits" in vars(model):
            del model.compute_logits  # the class's own again
        if nan_logits:
            original = model.compute_logits

            def nan_logits_instead(*args: Any, **kwargs: Any) -> Any:
                logits = original(*args, **kwargs)
                return logits if logits is None else logits.fill_(math.nan)

            model.compute_logits = nan_logits_instead
        return {"scaled": None if parameter is None else {"parameter": parameter, "factor": factor},
                "nan_logits": nan_logits}
